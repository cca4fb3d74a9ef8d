"""Drives the official segment-analytics-python SDK against onepd.

Configured as a customer would except for its host (plus a short upload
interval and a small retry budget, so the test is quick and a failing server
fails it fast). Used by tests/segment_sdks.rs.

Env: ONEPD_HOST (e.g. http://127.0.0.1:8123), ONEPD_WRITE_KEY, ONEPD_RUN.
Sends the same calls twice: uncompressed for user `sdk-<run>-user`, then with
gzip=True for user `sdk-<run>-gzip-user`. Prints `messageId <id>` for every
message sent and exits non-zero if the SDK reports any error.
"""

import logging
import os
import sys

from segment.analytics import Client

host = os.environ.get("ONEPD_HOST")
write_key = os.environ.get("ONEPD_WRITE_KEY")
run = os.environ.get("ONEPD_RUN")
if not host or not write_key or not run:
    print("ONEPD_HOST, ONEPD_WRITE_KEY and ONEPD_RUN must be set", file=sys.stderr)
    sys.exit(2)

logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

errors = []


def on_error(err, batch):
    errors.append(err)
    ids = [m.get("messageId") for m in batch]
    # APIError carries the server's answer: its `code`/`message` fields, or the raw body.
    body = getattr(getattr(err, "response", None), "text", None)
    print(f"analytics-python error: {err} for {len(ids)} message(s); response body: {body!r}", file=sys.stderr)


def send(user_id, gzip):
    client = Client(write_key, host=host, gzip=gzip, on_error=on_error, upload_interval=0.2, max_retries=3)
    ids = []

    def queued(result):
        ok, msg = result
        if not ok:
            errors.append(RuntimeError(f"not queued: {msg}"))
        ids.append(msg["messageId"])

    traits = {"email": "  Ann.Example@Example.COM ", "phone": "+1 (415) 555-2671", "firstName": "Ann"}
    queued(client.identify(user_id, traits))
    for i in range(20):
        queued(client.track(user_id, "Order Completed", {"revenue": 10.5 + i, "currency": "USD", "orderId": i}))
    queued(client.page(user_id, "Docs", "Pricing", {"url": "https://example.com/pricing"}))
    queued(client.group(user_id, f"{user_id}-group", {"name": "Example Inc"}))
    queued(client.alias(f"{user_id}-anon", user_id))
    queued(client.screen(user_id, "Mobile", "Home", {"variant": "a"}))
    client.flush()
    client.shutdown()
    for message_id in ids:
        print(f"messageId {message_id}")
    print(f"sent {len(ids)} messages for {user_id} (gzip={gzip})")


send(f"sdk-{run}-user", gzip=False)
send(f"sdk-{run}-gzip-user", gzip=True)

if errors:
    print(f"analytics-python reported {len(errors)} error(s)", file=sys.stderr)
    sys.exit(1)
