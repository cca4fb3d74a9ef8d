//! The browser JavaScript API end to end: real headless Chromium, driven over
//! W3C WebDriver through `chromedriver`, loads pages from a page server of the
//! test's own (another origin, so CORS applies for real) that embed the
//! README's loader snippet pointed at a real `onepd serve`; what the server
//! stored is read back through the audit API. Beside onepd.js, Segment's own
//! analytics.js (`@segment/analytics-next`, which `tests/sdk/install.sh
//! browser` installs from npm) is served the same way.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian's `chromium`
//! and `chromium-driver`, which `scripts/test` installs), and Node.js with npm.
//! Without them the tests fail and say so; they are never skipped.

mod support;

use std::collections::{BTreeMap, VecDeque};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use base64::Engine;
use onepd_proto::audit::v1::{EventFilter, ReadEventsRequest};
use serde_json::{Value, json};
use support::{Server, read_all};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The landing URL's query: a newsletter campaign and a Meta ad click.
const LANDING_QUERY: &str = "?utm_source=newsletter&utm_campaign=spring&fbclid=ABC123";

/// A visit, step by step: landing from an ad, identifying, buying, consenting,
/// navigating a single-page app, losing the network (with a reload while
/// offline), getting it back, clicking and submitting a form. Each call must
/// be stored exactly once, with the context the README documents.
#[tokio::test]
async fn every_call_of_a_visit_arrives_once_with_its_context_even_across_an_offline_reload() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let write_key = server.write_key.clone().expect("the banner prints a write key");
    let token = server.admin_token.clone().expect("the banner prints an admin token");
    let relay = Relay::start(&server.http).await;
    // Short flushes keep the test fast; a minute-long backoff makes sure that
    // what arrives after going back online was sent because of the `online`
    // event, not because a retry timer happened to fire.
    let options = json!({ "host": relay.url, "flushInterval": 50, "retryBase": 60_000, "retryMax": 60_000 });
    let pages = PageServer::start(&write_key, &options).await;
    let browser = Browser::start().await;

    // Landing from an ad: the automatic page view.
    let landing = format!("{}/shop{LANDING_QUERY}", pages.origin);
    browser.navigate(&landing).await;
    browser.wait_until_ready().await;
    browser
        .execute(
            "onepd.identify('user-1', { email: 'ann@example.com', plan: 'pro' });
             onepd.track('Order Completed', { orderId: 'o-1', revenue: 42.5, currency: 'EUR' });
             onepd.consent({ analytics: true, advertising: false });
             history.pushState({}, '', '/shop/checkout?step=2');",
        )
        .await;
    browser.wait_until_sent().await;

    // An outage: the calls fail and stay queued, and survive a reload that
    // itself fails for want of a network.
    outage(&browser, &relay, true).await;
    browser.execute("onepd.track('Offline Event', { n: 1 }); onepd.track('Offline Event', { n: 2 });").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(browser.execute("return navigator.onLine").await, json!(false));
    assert_eq!(browser.queued().await, 2, "both offline events wait in the stored queue");
    browser.refresh_expecting_failure().await;
    let url = browser.execute("return location.href").await;
    assert!(!url.as_str().unwrap().starts_with(&pages.origin), "the offline reload did not load the page: {url}");

    let during_outage = messages(&server, &token, "MessageAccepted").await;
    assert!(
        !during_outage.iter().any(|event| event.data_json.contains("Offline Event")),
        "nothing reached the server during the outage"
    );

    // Online again: a new page load sends what the old page left.
    outage(&browser, &relay, false).await;
    browser.navigate(&format!("{}/shop/next", pages.origin)).await;
    browser.wait_until_ready().await;
    browser.wait_until_sent().await;

    // Offline and back on the same page: the `online` event flushes.
    outage(&browser, &relay, true).await;
    browser.execute("onepd.track('Offline Event', { n: 3 });").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(browser.queued().await, 1, "the third offline event waits");
    outage(&browser, &relay, false).await;
    browser.wait_until_sent().await;

    // A tracked button (by selector), clicked; a tracked form (by element),
    // submitted, which navigates away at once.
    browser
        .execute(
            "onepd.trackClick('#buy', 'CTA Clicked', (button) => ({ label: button.textContent }));
             onepd.trackSubmit(document.getElementById('signup'), 'Signed Up', (form) => ({ plan: form.elements.plan.value }));",
        )
        .await;
    browser.click("#buy").await;
    browser.wait_until_sent().await;
    browser.click("#submit").await;
    browser.wait_for_path("/thanks").await;
    browser.wait_until_ready().await;
    browser.wait_until_sent().await;
    assert_eq!(browser.execute("return location.pathname").await, json!("/thanks"));

    let user_agent = browser.execute("return navigator.userAgent").await;
    let locale = browser.execute("return navigator.language").await;
    let anonymous_id = browser.cookie("onepd_anonymous_id").await.expect("the anonymous id cookie is set");
    let fbp = browser.cookie("_fbp").await.expect("the _fbp cookie is set");
    let fbc = browser.cookie("_fbc").await.expect("the _fbc cookie is set");
    assert_eq!(
        browser.execute("return localStorage.getItem('onepd_anonymous_id')").await,
        json!(format!("\"{anonymous_id}\""))
    );

    // What the server stored.
    let rejected = messages(&server, &token, "MessageRejected").await;
    assert!(rejected.is_empty(), "no message is rejected: {rejected:?}");
    let stored = messages(&server, &token, "MessageAccepted").await;
    let stored: Vec<Value> =
        stored.iter().map(|event| serde_json::from_str::<Value>(&event.data_json).unwrap()).collect();

    // Each call exactly once: a missing or doubled one changes a count.
    let mut counts = BTreeMap::new();
    for event in &stored {
        *counts.entry(label(&event["message"])).or_insert(0) += 1;
    }
    let expected: BTreeMap<String, usize> = [
        ("page /shop", 1),
        ("identify", 1),
        ("track Order Completed", 1),
        ("track Segment Consent Preference Updated", 1),
        ("page /shop/checkout", 1),
        ("track Offline Event", 3),
        ("page /shop/next", 1),
        ("track CTA Clicked", 1),
        ("track Signed Up", 1),
        ("page /thanks", 1),
    ]
    .into_iter()
    .map(|(label, count)| (label.to_owned(), count))
    .collect();
    assert_eq!(counts, expected);
    let message_ids: std::collections::HashSet<_> = stored.iter().map(|event| &event["message"]["messageId"]).collect();
    assert_eq!(message_ids.len(), stored.len(), "every stored message has its own messageId");
    let offline: Vec<_> =
        stored.iter().map(|event| &event["message"]).filter(|message| message["event"] == "Offline Event").collect();
    let mut numbers: Vec<_> = offline.iter().map(|message| message["properties"]["n"].as_i64().unwrap()).collect();
    numbers.sort();
    assert_eq!(numbers, [1, 2, 3]);

    let first = stored.iter().map(|event| &event["message"]).find(|message| label(message) == "page /shop").unwrap();
    let before_consent = ["page /shop", "identify", "track Order Completed"];
    for event in &stored {
        let message = &event["message"];
        let context = &message["context"];
        let what = label(message);
        uuid::Uuid::parse_str(message["messageId"].as_str().unwrap())
            .unwrap_or_else(|_| panic!("{what}: messageId is a UUID, found {}", message["messageId"]));
        assert_eq!(message["anonymousId"], json!(anonymous_id), "{what}: the cookie's anonymous id, across reloads");
        if what == "page /shop" {
            assert!(message.get("userId").is_none(), "{what}: no user id before identify");
        } else {
            assert_eq!(message["userId"], "user-1", "{what}");
        }
        assert_eq!(context["library"], json!({ "name": "onepd.js", "version": env!("CARGO_PKG_VERSION") }), "{what}");
        assert_eq!(context["userAgent"], user_agent, "{what}: the browser's own user agent");
        let browser_family = event["enrichment"]["userAgent"]["browser"]["family"].as_str().unwrap_or_default();
        assert!(browser_family.contains("Chrome"), "{what}: parsed as Chrome, found {browser_family:?}");
        assert_eq!(context["locale"], locale, "{what}");
        assert!(message["sentAt"].is_string() && message["originalTimestamp"].is_string(), "{what}: {message}");
        // Campaigns come from the URL the call was made on.
        if context["page"]["search"] == LANDING_QUERY {
            assert_eq!(context["campaign"], json!({ "source": "newsletter", "name": "spring" }), "{what}");
        } else {
            assert!(context.get("campaign").is_none(), "{what}: no campaign off the landing URL: {context}");
        }
        // Click ids are remembered from the landing URL for later pages.
        assert_eq!(context["clickIds"]["fbclid"]["value"], "ABC123", "{what}");
        assert_eq!(context["fbc"], json!(fbc), "{what}: fbc is the _fbc cookie");
        assert_eq!(context["fbp"], json!(fbp), "{what}: fbp is the _fbp cookie");
        let consent = json!({ "categoryPreferences": { "analytics": true, "advertising": false } });
        if before_consent.contains(&what.as_str()) {
            assert!(context.get("consent").is_none(), "{what}: no consent before consent()");
        } else {
            assert_eq!(context["consent"], consent, "{what}");
        }
    }

    // The landing page, as the browser saw it.
    assert_eq!(
        first["context"]["page"],
        json!({
            "path": "/shop",
            "referrer": "",
            "search": LANDING_QUERY,
            "title": "Shop",
            "url": landing,
        })
    );
    assert_eq!(first["properties"]["url"], json!(landing));
    let checkout = stored.iter().map(|event| &event["message"]).find(|m| label(m) == "page /shop/checkout").unwrap();
    assert_eq!(
        checkout["context"]["page"]["referrer"],
        json!(landing),
        "a pushState page's referrer is the previous URL"
    );
    assert_eq!(checkout["context"]["page"]["search"], "?step=2");
    let identify = stored.iter().map(|event| &event["message"]).find(|m| m["type"] == "identify").unwrap();
    assert_eq!(identify["traits"], json!({ "email": "ann@example.com", "plan": "pro" }));
    let order = stored.iter().map(|event| &event["message"]).find(|m| m["event"] == "Order Completed").unwrap();
    assert_eq!(order["properties"], json!({ "orderId": "o-1", "revenue": 42.5, "currency": "EUR" }));
    let clicked = stored.iter().map(|event| &event["message"]).find(|m| m["event"] == "CTA Clicked").unwrap();
    assert_eq!(clicked["properties"], json!({ "label": "Buy now" }));
    let signed_up = stored.iter().map(|event| &event["message"]).find(|m| m["event"] == "Signed Up").unwrap();
    assert_eq!(signed_up["properties"], json!({ "plan": "pro" }));

    // Offline events are dated when they were made and sent later.
    for message in &offline {
        assert_eq!(
            message["context"]["page"]["path"],
            if message["properties"]["n"] == 3 { "/shop/next" } else { "/shop/checkout" }
        );
        assert!(
            message["sentAt"].as_str().unwrap() > message["originalTimestamp"].as_str().unwrap(),
            "sentAt is the time of the send that succeeded: {message}"
        );
    }

    // Meta's formats: fb.<subdomain index>.<creation time, ms>.<fbclid | ten digits>.
    let fbc_parts: Vec<_> = fbc.split('.').collect();
    assert_eq!(fbc_parts.len(), 4, "{fbc}");
    assert_eq!((fbc_parts[0], fbc_parts[1], fbc_parts[3]), ("fb", "1", "ABC123"), "{fbc}");
    assert!(fbc_parts[2].len() == 13 && fbc_parts[2].bytes().all(|b| b.is_ascii_digit()), "{fbc}");
    let fbp_parts: Vec<_> = fbp.split('.').collect();
    assert_eq!(fbp_parts.len(), 4, "{fbp}");
    assert_eq!((fbp_parts[0], fbp_parts[1]), ("fb", "1"), "{fbp}");
    assert!(fbp_parts[2].len() == 13 && fbp_parts[2].bytes().all(|b| b.is_ascii_digit()), "{fbp}");
    assert!(fbp_parts[3].len() == 10 && fbp_parts[3].bytes().all(|b| b.is_ascii_digit()), "{fbp}");
    let captured = browser.execute(&format!("return new Date({}).toISOString()", fbc_parts[2])).await;
    assert_eq!(first["context"]["clickIds"]["fbclid"]["capturedAt"], captured, "fbc's time is the click's capture");
}

/// Against a scripted stand-in for onepd: a 503 and a 429 are retried with
/// the same messageIds (the 429 not before its Retry-After), a 2xx takes the
/// messages off the queue, and a 400 drops them without a retry.
#[tokio::test]
async fn failed_sends_are_retried_with_the_same_message_ids_and_a_refused_one_is_dropped() {
    let host = ScriptedHost::start(&[(503, None), (429, Some("1")), (200, None), (400, None)]).await;
    let options =
        json!({ "host": host.url, "autoPage": false, "flushInterval": 20, "retryBase": 100, "retryMax": 200 });
    let pages = PageServer::start("onepd_wk_test", &options).await;
    let browser = Browser::start().await;
    browser.navigate(&format!("{}/shop", pages.origin)).await;
    browser.wait_until_ready().await;

    browser.execute("onepd.track('Retried', { n: 1 });").await;
    browser.wait_until_sent().await;
    browser.execute("onepd.track('Refused', { n: 2 });").await;
    browser.wait_until_sent().await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let requests = host.requests.lock().unwrap().clone();
    let events: Vec<Vec<&str>> = requests
        .iter()
        .map(|(_, body)| body["batch"].as_array().unwrap().iter().map(|m| m["event"].as_str().unwrap()).collect())
        .collect();
    assert_eq!(
        events,
        [["Retried"], ["Retried"], ["Retried"], ["Refused"]],
        "one request per answer, none after the 400"
    );
    let ids: Vec<&Value> = requests[..3].iter().map(|(_, body)| &body["batch"][0]["messageId"]).collect();
    assert!(ids[0].is_string() && ids.iter().all(|id| *id == ids[0]), "a retry keeps the messageId: {ids:?}");
    let sent_at: Vec<&Value> = requests[..3].iter().map(|(_, body)| &body["batch"][0]["sentAt"]).collect();
    assert!(sent_at[0] != sent_at[1] && sent_at[1] != sent_at[2], "sentAt is set at each send: {sent_at:?}");
    assert!(requests.iter().all(|(_, body)| body["writeKey"] == "onepd_wk_test"));
    let waited = requests[2].0.duration_since(requests[1].0);
    assert!(waited >= Duration::from_millis(950), "Retry-After: 1 was honoured, waited {waited:?}");
}

/// The script's delivery: content type, caching, revalidation, cross-origin
/// headers; and the tracking API takes its `text/plain` batches.
#[tokio::test]
async fn the_script_is_served_cacheable_to_any_origin_and_its_batches_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let client = reqwest::Client::new();
    let url = format!("{}/js/onepd.js", server.http);

    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    let header = |name: &str| headers.get(name).map(|value| value.to_str().unwrap().to_owned());
    assert_eq!(header("content-type").as_deref(), Some("application/javascript; charset=utf-8"));
    assert_eq!(header("cache-control").as_deref(), Some("public, max-age=3600, stale-while-revalidate=86400"));
    assert_eq!(header("access-control-allow-origin").as_deref(), Some("*"));
    assert_eq!(header("cross-origin-resource-policy").as_deref(), Some("cross-origin"));
    let etag = header("etag").expect("an ETag");
    assert!(etag.starts_with('"') && etag.len() == 66, "a strong, quoted SHA-256: {etag}");
    let body = response.text().await.unwrap();
    assert_eq!(
        body,
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("adapters/src/http/js/onepd.js")).unwrap()
    );

    let head = client.head(&url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["etag"].to_str().unwrap(), etag);

    let revalidated = client.get(&url).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(revalidated.status(), 304);
    assert_eq!(revalidated.headers()["etag"].to_str().unwrap(), etag);
    assert_eq!(revalidated.headers()["cache-control"], "public, max-age=3600, stale-while-revalidate=86400");
    assert!(revalidated.text().await.unwrap().is_empty());
    let changed = client.get(&url).header("if-none-match", "\"an-older-version\"").send().await.unwrap();
    assert_eq!(changed.status(), 200);

    // A batch as onepd.js sends it: text/plain (no preflight), key in the body.
    let batch = json!({
        "batch": [{ "type": "track", "event": "Tried", "anonymousId": "a1", "messageId": "m-1" }],
        "writeKey": server.write_key.clone().unwrap(),
    });
    let sent = client
        .post(format!("{}/v1/batch", server.http))
        .header("origin", "https://shop.example")
        .header("content-type", "text/plain;charset=UTF-8")
        .body(batch.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 200);
    assert_eq!(sent.headers()["access-control-allow-origin"], "*");
    let exposed = sent.headers()["access-control-expose-headers"].to_str().unwrap().to_ascii_lowercase();
    assert!(exposed.contains("retry-after"), "the library reads Retry-After cross-origin: {exposed}");
    assert_eq!(sent.json::<Value>().await.unwrap(), json!({ "success": true }));
}

/// Segment's own browser library, analytics.js (`@segment/analytics-next`
/// from npm, its UMD build), pointed at onepd through a proxy that answers
/// its first send with a 503: the retry carries `X-Retry-Count`, its
/// preflight is answered allowing that header, and the event is stored once.
/// Every call type then arrives on its one-letter path (`/v1/t`, `i`, `p`,
/// `g`, `a`, `s`), and the page reaches no host but onepd and itself.
///
/// analytics.js adds `X-Retry-Count` to every retry, and Chromium sends a
/// request only when its preflight's `Access-Control-Allow-Headers` lists
/// each non-safelisted header: with a fixed list lacking it, every retry is
/// blocked before it leaves the browser and the wait for the retry fails,
/// listing the refused preflights.
#[tokio::test]
async fn analytics_js_retries_a_send_answered_503_and_the_event_is_stored_once() {
    let analytics_next = install_analytics_next();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let write_key = server.write_key.clone().expect("the banner prints a write key");
    let token = server.admin_token.clone().expect("the banner prints an admin token");
    let proxy = FailFirstProxy::start(&server.http).await;
    let pages = PageServer::start_analytics_next(&write_key, &proxy.url, &analytics_next.dist).await;
    let browser = Browser::start().await;
    browser.navigate(&format!("{}/analytics-next", pages.origin)).await;
    let loaded = browser
        .execute_async(
            "const done = arguments[arguments.length - 1]; ajs.then(() => done(true), (e) => done(String(e)));",
        )
        .await;
    assert_eq!(loaded, json!(true), "analytics.js loaded from its cdnSettings, with no settings fetch");

    browser
        .execute_async(
            "const done = arguments[arguments.length - 1];
             ajs.track('Retried Event', { orderId: 'o-1', revenue: 42.5 }).then(() => done(true));",
        )
        .await;
    proxy.wait_for(2, "the track answered 503, then its retry").await;
    browser
        .execute_async(
            "const done = arguments[arguments.length - 1];
             (async () => {
               await ajs.identify('user-1', { email: 'ann@example.com' });
               await ajs.page('Docs', 'Pricing');
               await ajs.group('acme', { plan: 'pro' });
               await ajs.alias('user-2');
               await ajs.screen('Home');
             })().then(() => done(true));",
        )
        .await;
    proxy.wait_for(7, "the track twice, then identify, page, group, alias and screen").await;
    let blocked = browser.execute("return blocked").await;
    assert_eq!(blocked, json!([]), "the page's content security policy blocked no request");

    // What went through the proxy: the first send answered 503 by the proxy,
    // then its retry's preflight and the retry, each answered by onepd.
    let exchanges = proxy.exchanges.lock().unwrap().clone();
    let posts: Vec<&Exchange> = exchanges.iter().filter(|exchange| exchange.method == "POST").collect();
    let paths: Vec<(&str, u16)> = posts.iter().map(|post| (post.path.as_str(), post.status)).collect();
    assert_eq!(
        paths,
        [
            ("/v1/t", 503),
            ("/v1/t", 200),
            ("/v1/i", 200),
            ("/v1/p", 200),
            ("/v1/g", 200),
            ("/v1/a", 200),
            ("/v1/s", 200)
        ],
        "one POST per call on its one-letter path, and the retry: {}",
        summary(&exchanges)
    );
    let retry_counts: Vec<Option<&str>> = posts.iter().map(|post| post.request_header("x-retry-count")).collect();
    assert_eq!(retry_counts, [None, Some("1"), None, None, None, None, None], "only the retry carries X-Retry-Count");
    let (first, retry) = (&posts[0].body, &posts[1].body);
    assert!(first["messageId"].is_string(), "{first}");
    assert_eq!(retry["messageId"], first["messageId"], "a retry resends the same message");
    assert_eq!(retry["event"], "Retried Event");
    let authorization = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{write_key}:")));
    assert!(
        posts.iter().all(|post| post.request_header("authorization") == Some(authorization.as_str())),
        "the write key is sent as the Basic user name: {}",
        summary(&exchanges)
    );

    let retry_at = exchanges.iter().position(|exchange| std::ptr::eq(exchange, posts[1])).unwrap();
    let preflight = exchanges[..retry_at]
        .iter()
        .rev()
        .find(|exchange| exchange.method == "OPTIONS" && exchange.path == "/v1/t")
        .unwrap_or_else(|| panic!("the retry was preflighted: {}", summary(&exchanges)));
    let asked = preflight.request_header("access-control-request-headers").unwrap_or_default().to_ascii_lowercase();
    assert!(
        asked.split(',').any(|name| name.trim() == "x-retry-count"),
        "the preflight asks for X-Retry-Count: {asked}"
    );
    assert!((200..300).contains(&preflight.status), "the preflight succeeds: {}", summary(&exchanges));
    let allowed = preflight.response_header("access-control-allow-headers").unwrap_or_default().to_ascii_lowercase();
    assert!(
        allowed.split(',').any(|name| name.trim() == "x-retry-count"),
        "onepd allows X-Retry-Count, found access-control-allow-headers: {allowed:?}"
    );
    assert_eq!(preflight.response_header("access-control-allow-origin"), Some("*"));

    // What onepd stored: each call once, the retried event once, as sent.
    let rejected = messages(&server, &token, "MessageRejected").await;
    assert!(rejected.is_empty(), "no message is rejected: {rejected:?}");
    let stored: Vec<Value> = messages(&server, &token, "MessageAccepted")
        .await
        .iter()
        .map(|event| serde_json::from_str::<Value>(&event.data_json).unwrap()["message"].clone())
        .collect();
    let calls: Vec<String> = stored
        .iter()
        .map(|message| {
            let name = message["event"].as_str().or(message["name"].as_str()).unwrap_or_default();
            format!("{} {name}", message["type"].as_str().unwrap()).trim_end().to_owned()
        })
        .collect();
    assert_eq!(calls, ["track Retried Event", "identify", "page Pricing", "group", "alias", "screen Home"]);
    let track = &stored[0];
    assert_eq!(track["messageId"], first["messageId"], "the stored event is the one sent twice");
    assert_eq!(track["properties"], json!({ "orderId": "o-1", "revenue": 42.5 }));
    let library = json!({ "name": "analytics.js", "version": format!("next-{}", analytics_next.version) });
    assert!(stored.iter().all(|message| message["context"]["library"] == library), "sent by analytics.js: {stored:?}");
    assert_eq!(stored[1]["traits"], json!({ "email": "ann@example.com" }));
    // Each stored as analytics.js sent it (its alias, for one, carries the
    // identified user as userId, whatever the new id).
    for (message, post) in stored.iter().zip(&posts[1..]) {
        for field in ["messageId", "type", "userId", "anonymousId", "previousId", "groupId"] {
            assert_eq!(message[field], post.body[field], "{} {field}: stored as sent", post.path);
        }
    }
}

/// Starts or ends a network outage: the browser goes offline (so pages see
/// `navigator.onLine` and the `online` event) and the relay refuses
/// connections. The relay is needed because Chromium lifts its offline
/// emulation for a page while it unloads (the page even sees an `online`
/// event), so the page's last requests would get through.
async fn outage(browser: &Browser, relay: &Relay, down: bool) {
    if down {
        browser.set_offline(true).await;
        relay.cut(true);
    } else {
        relay.cut(false);
        browser.set_offline(false).await;
    }
}

/// A TCP relay in front of onepd that can be cut like a network.
struct Relay {
    url: String,
    cut: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(target: &str) -> Relay {
        let target = target.strip_prefix("http://").expect("an http:// address").to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (cut, is_cut) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if *is_cut.borrow() {
                    continue; // closed at once: the browser sees a network error
                }
                let mut is_cut = is_cut.clone();
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else { return };
                    // A cut also ends the connections already open.
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = is_cut.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Relay { url, cut, task }
    }

    fn cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `@segment/analytics-next` as `tests/sdk/install.sh browser` installs it
/// (from `tests/sdk/browser/package-lock.json`).
struct AnalyticsNext {
    /// Its UMD build: `index.js`, which defines the global `AnalyticsNext`,
    /// and the chunks it loads on demand.
    dist: PathBuf,
    version: String,
}

/// Installs analytics-next (a no-op when installed); panics with the
/// installer's output when it cannot, so the test fails instead of skipping.
fn install_analytics_next() -> AnalyticsNext {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = repo.join("tests/sdk/install.sh");
    let output = Command::new("bash")
        .arg(&script)
        .arg("browser")
        .current_dir(repo)
        .output()
        .unwrap_or_else(|err| panic!("could not run {}: {err}", script.display()));
    assert!(
        output.status.success(),
        "`{} browser` failed ({}), so analytics.js cannot be tested:\n{}{}",
        script.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let package = repo.join("tests/sdk/browser/node_modules/@segment/analytics-next");
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(package.join("package.json")).unwrap()).unwrap();
    AnalyticsNext { dist: package.join("dist/umd"), version: manifest["version"].as_str().unwrap().to_owned() }
}

/// An HTTP proxy in front of onepd that answers the first POST itself with a
/// 503 (with CORS headers, as onepd's own answers have) and forwards every
/// other request, preflights included, recording each exchange.
struct FailFirstProxy {
    url: String,
    exchanges: Arc<Mutex<Vec<Exchange>>>,
    task: tokio::task::JoinHandle<()>,
}

/// One request through the proxy, and the answer it got.
#[derive(Clone, Debug)]
struct Exchange {
    method: String,
    path: String,
    request_headers: header::HeaderMap,
    /// The request body as JSON (null when it is not).
    body: Value,
    status: u16,
    response_headers: header::HeaderMap,
}

impl Exchange {
    fn request_header(&self, name: &str) -> Option<&str> {
        self.request_headers.get(name).and_then(|value| value.to_str().ok())
    }

    fn response_header(&self, name: &str) -> Option<&str> {
        self.response_headers.get(name).and_then(|value| value.to_str().ok())
    }
}

#[derive(Clone)]
struct ProxyState {
    target: String,
    client: reqwest::Client,
    /// Set once the first POST has been answered 503.
    failed_once: Arc<std::sync::atomic::AtomicBool>,
    exchanges: Arc<Mutex<Vec<Exchange>>>,
}

impl FailFirstProxy {
    async fn start(target: &str) -> FailFirstProxy {
        let exchanges = Arc::new(Mutex::new(Vec::new()));
        let state = ProxyState {
            target: target.to_owned(),
            client: reqwest::Client::new(),
            failed_once: Arc::default(),
            exchanges: exchanges.clone(),
        };
        let app = axum::Router::new().fallback(proxy_exchange).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FailFirstProxy { url, exchanges, task }
    }

    /// Waits until `posts` POSTs have been answered; past 10 s, panics
    /// naming `what` and listing what went through.
    async fn wait_for(&self, posts: usize, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let exchanges = self.exchanges.lock().unwrap().clone();
            let answered = exchanges.iter().filter(|exchange| exchange.method == "POST").count();
            if answered >= posts {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: expected {posts} POSTs within 10 s, found {answered}; through the proxy:\n{}",
                summary(&exchanges)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for FailFirstProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn proxy_exchange(State(state): State<ProxyState>, request: Request) -> Response {
    use std::sync::atomic::Ordering;
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.expect("a request body");
    let fail = parts.method == axum::http::Method::POST && !state.failed_once.swap(true, Ordering::SeqCst);
    let (status, mut headers, answer) = if fail {
        let mut headers = header::HeaderMap::new();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, header::HeaderValue::from_static("*"));
        headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
        let answer = json!({ "success": false, "code": "unavailable", "message": "the proxy's scripted 503" });
        (StatusCode::SERVICE_UNAVAILABLE, headers, answer.to_string().into())
    } else {
        let path = parts.uri.path_and_query().map_or("/", |path| path.as_str());
        let mut headers = parts.headers.clone();
        for hop in [header::HOST, header::CONNECTION, header::CONTENT_LENGTH] {
            headers.remove(hop);
        }
        let response = state
            .client
            .request(parts.method.clone(), format!("{}{path}", state.target))
            .headers(headers)
            .body(body.clone())
            .send()
            .await
            .expect("onepd answers the proxy");
        let (status, headers) = (response.status(), response.headers().clone());
        (status, headers, response.bytes().await.expect("onepd's answer"))
    };
    for hop in [header::CONNECTION, header::TRANSFER_ENCODING, header::CONTENT_LENGTH] {
        headers.remove(hop);
    }
    state.exchanges.lock().unwrap().push(Exchange {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        request_headers: parts.headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        status: status.as_u16(),
        response_headers: headers.clone(),
    });
    (status, headers, answer).into_response()
}

/// The exchanges one a line, with the headers that CORS and retries turn on.
fn summary(exchanges: &[Exchange]) -> String {
    let lines: Vec<String> = exchanges
        .iter()
        .map(|exchange| {
            let header = |name: &str, value: Option<&str>| value.map(|value| format!(" [{name}: {value}]"));
            let asked = header("asks", exchange.request_header("access-control-request-headers"));
            let retry = header("x-retry-count", exchange.request_header("x-retry-count"));
            let allowed = header("allows", exchange.response_header("access-control-allow-headers"));
            format!(
                "  {} {}{}{} -> {}{}",
                exchange.method,
                exchange.path,
                asked.unwrap_or_default(),
                retry.unwrap_or_default(),
                exchange.status,
                allowed.unwrap_or_default()
            )
        })
        .collect();
    lines.join("\n")
}

/// A stand-in for onepd's tracking API answering each `POST /v1/batch` with
/// the next scripted status (and Retry-After), then 200s; it serves the real
/// onepd.js and records every batch with its arrival time.
struct ScriptedHost {
    url: String,
    requests: Received,
    task: tokio::task::JoinHandle<()>,
}

/// The answers still to give: a status and a Retry-After.
type Script = Arc<Mutex<VecDeque<(u16, Option<&'static str>)>>>;

/// The batches received, with their arrival time.
type Received = Arc<Mutex<Vec<(Instant, Value)>>>;

impl ScriptedHost {
    async fn start(answers: &[(u16, Option<&'static str>)]) -> ScriptedHost {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script: Script = Arc::new(Mutex::new(answers.iter().copied().collect()));
        let state = (script, requests.clone());
        let app = axum::Router::new()
            .route("/v1/batch", axum::routing::post(scripted_batch))
            .with_state(state)
            .merge(onepd_adapters::http::js::js_router());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        ScriptedHost { url, requests, task }
    }
}

impl Drop for ScriptedHost {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn scripted_batch(State((script, requests)): State<(Script, Received)>, body: String) -> Response {
    requests.lock().unwrap().push((Instant::now(), serde_json::from_str(&body).expect("a JSON batch")));
    let (status, retry_after) = script.lock().unwrap().pop_front().unwrap_or((200, None));
    let status = StatusCode::from_u16(status).unwrap();
    let body = if status.is_success() {
        json!({ "success": true })
    } else {
        json!({ "success": false, "code": "scripted", "message": "a scripted failure" })
    };
    let mut response = (status, axum::Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, header::HeaderValue::from_static("*"));
    headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, header::HeaderValue::from_static("retry-after"));
    if let Some(seconds) = retry_after {
        headers.insert(header::RETRY_AFTER, header::HeaderValue::from_static(seconds));
    }
    response
}

/// A message's label for counting: its type and event, or page path.
fn label(message: &Value) -> String {
    match message["type"].as_str().unwrap() {
        "track" => format!("track {}", message["event"].as_str().unwrap()),
        "page" => format!("page {}", message["context"]["page"]["path"].as_str().unwrap()),
        other => other.to_owned(),
    }
}

async fn messages(server: &Server, token: &str, event_type: &str) -> Vec<onepd_proto::audit::v1::Event> {
    let mut audit = server.audit().await;
    let filter = EventFilter { event_types: vec![event_type.into()], stream_id: String::new() };
    read_all(&mut audit, ReadEventsRequest { filter: Some(filter), ..Default::default() }, token).await
}

/// Serves test pages on its own port: pages embedding the README's loader
/// snippet with the test's write key and options, or one loading Segment's
/// analytics.js.
struct PageServer {
    origin: String,
    task: tokio::task::JoinHandle<()>,
}

impl PageServer {
    async fn start(write_key: &str, options: &Value) -> PageServer {
        let snippet = readme_snippet()
            .replace("'WRITE_KEY'", &format!("'{write_key}'"))
            .replace("{host: 'http://127.0.0.1:8080'}", &options.to_string());
        PageServer::serve(axum::Router::new().fallback(page).with_state(snippet)).await
    }

    /// Serves `/analytics-next`, a page loading analytics.js's UMD build
    /// from `dist` (served whole under `/analytics-next/bundles/`) and
    /// pointing it at the tracking API at `api`, as Segment documents for a
    /// custom API host. Its content security policy lets it reach only
    /// `api` and load scripts only from this server; it records what it
    /// blocks in `window.blocked`.
    async fn start_analytics_next(write_key: &str, api: &str, dist: &Path) -> PageServer {
        let api_host = format!("{}/v1", api.strip_prefix("http://").expect("an http:// address"));
        // The settings Segment's CDN would serve, given here so that none are
        // fetched: the write key is the Segment.io integration's `apiKey`.
        let settings = json!({
            "writeKey": write_key,
            "cdnSettings": { "integrations": { "Segment.io": { "apiKey": write_key } } },
        });
        let options = json!({ "integrations": { "Segment.io": { "apiHost": api_host, "protocol": "http" } } });
        let html = format!(
            r#"<!doctype html>
<html><head><meta charset="utf-8"><title>Pricing</title>
<script>
  window.blocked = [];
  document.addEventListener('securitypolicyviolation', (event) => blocked.push(`${{event.violatedDirective}} ${{event.blockedURI}}`));
  // analytics.js loads its chunks from `${{analytics._cdn}}/analytics-next/bundles/`,
  // by default Segment's CDN: here, this server.
  window.analytics = {{ _cdn: location.origin }};
</script>
<script src="/analytics-next/bundles/index.js"></script>
<script>
  window.ajs = AnalyticsNext.AnalyticsBrowser.load({settings}, {options});
</script>
</head><body></body></html>"#
        );
        let policy = format!("default-src 'none'; script-src 'self' 'unsafe-inline'; connect-src {api}");
        let site = Arc::new(AnalyticsNextSite { html, policy, dist: dist.to_path_buf() });
        let app = axum::Router::new()
            .route("/analytics-next", axum::routing::get(analytics_next_page))
            .route("/analytics-next/bundles/{file}", axum::routing::get(analytics_next_file))
            .with_state(site);
        PageServer::serve(app).await
    }

    async fn serve(app: axum::Router) -> PageServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        // `localhost` against the API's `127.0.0.1`: another site, not only another origin.
        let origin = format!("http://localhost:{}", listener.local_addr().unwrap().port());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        PageServer { origin, task }
    }
}

/// The analytics.js page, its content security policy, and analytics.js's
/// UMD build directory.
struct AnalyticsNextSite {
    html: String,
    policy: String,
    dist: PathBuf,
}

async fn analytics_next_page(State(site): State<Arc<AnalyticsNextSite>>) -> Response {
    let headers = [(header::CONTENT_SECURITY_POLICY, site.policy.clone()), (header::CACHE_CONTROL, "no-store".into())];
    (headers, Html(site.html.clone())).into_response()
}

async fn analytics_next_file(
    State(site): State<Arc<AnalyticsNextSite>>,
    axum::extract::Path(file): axum::extract::Path<String>,
) -> Response {
    let Ok(bytes) = std::fs::read(site.dist.join(&file)) else { return StatusCode::NOT_FOUND.into_response() };
    let kind = match file.rsplit('.').next() {
        Some("js") => "application/javascript",
        Some("map") => "application/json",
        _ => "application/octet-stream",
    };
    ([(header::CONTENT_TYPE, kind)], bytes).into_response()
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn page(State(snippet): State<String>, request: Request) -> Response {
    let path = request.uri().path();
    let title = match path {
        "/shop" | "/shop/next" => "Shop",
        "/thanks" => "Thanks",
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    let html = format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
{snippet}
</head><body>
<button id="buy">Buy now</button>
<form id="signup" action="/thanks" method="get"><input name="plan" value="pro"><button id="submit">Sign up</button></form>
</body></html>"#
    );
    ([(header::CACHE_CONTROL, "no-store")], Html(html)).into_response()
}

/// The loader snippet as the README documents it, so the test proves the
/// documented snippet works.
fn readme_snippet() -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let blocks: Vec<&str> = readme.split("```html\n").skip(1).filter_map(|block| block.split("\n```").next()).collect();
    let snippet = blocks
        .into_iter()
        .find(|block| block.contains("onepd.load('WRITE_KEY', {host: 'http://127.0.0.1:8080'})"))
        .expect("README.md shows the loader snippet in an ```html block");
    snippet.to_owned()
}

/// Headless Chromium under chromedriver, spoken to in W3C WebDriver JSON.
/// Dropping it ends the session and kills chromedriver's process group, so a
/// failing test leaves no browser behind.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    client: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        for binary in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(binary).exists(),
                "{binary} is missing: the browser test needs Chromium and its driver \
                 (apt-get install chromium chromium-driver, as .ci/run does)"
            );
        }
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so that Drop can end chromedriver and
            // every browser process it started, by the group's id.
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let profile = tempfile::tempdir().unwrap();
        let mut browser = Browser {
            driver,
            base: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            client: reqwest::Client::new(),
            _profile: profile,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = browser.client.get(format!("{}/status", browser.base)).send().await;
            if let Ok(status) = status
                && status.json::<Value>().await.is_ok_and(|body| body["value"]["ready"] == true)
            {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not answer on port {port} within 20 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            // Without these Chromium keeps connecting out, which this
            // machine's closed network refuses.
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &format!("--user-data-dir={}", browser._profile.path().display()),
        ];
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
        }}});
        let session = browser.command(reqwest::Method::POST, "/session", Some(capabilities)).await;
        browser.session = session["sessionId"].as_str().expect("a session id").to_owned();
        browser
            .session_command(reqwest::Method::POST, "/timeouts", json!({ "script": 15_000, "pageLoad": 15_000 }))
            .await;
        browser
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        self.try_command(method.clone(), path, body)
            .await
            .unwrap_or_else(|error| panic!("WebDriver {method} {path} failed: {error}"))
    }

    async fn try_command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value, Value> {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("chromedriver answers");
        let ok = response.status().is_success();
        let body: Value = response.json().await.expect("chromedriver answers JSON");
        if ok { Ok(body["value"].clone()) } else { Err(body["value"].clone()) }
    }

    async fn session_command(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        self.command(method, &format!("/session/{}{path}", self.session), Some(body)).await
    }

    async fn navigate(&self, url: &str) {
        self.session_command(reqwest::Method::POST, "/url", json!({ "url": url })).await;
    }

    /// Reloads while offline: the navigation fails, which is the point.
    async fn refresh_expecting_failure(&self) {
        let path = format!("/session/{}/refresh", self.session);
        let _ = self.try_command(reqwest::Method::POST, &path, Some(json!({}))).await;
    }

    async fn execute(&self, script: &str) -> Value {
        self.session_command(reqwest::Method::POST, "/execute/sync", json!({ "script": script, "args": [] })).await
    }

    async fn execute_async(&self, script: &str) -> Value {
        self.session_command(reqwest::Method::POST, "/execute/async", json!({ "script": script, "args": [] })).await
    }

    async fn set_offline(&self, offline: bool) {
        let conditions = json!({ "network_conditions": {
            "offline": offline, "latency": 0, "download_throughput": -1, "upload_throughput": -1,
        }});
        self.session_command(reqwest::Method::POST, "/chromium/network_conditions", conditions).await;
    }

    async fn click(&self, css: &str) {
        let found = self
            .session_command(reqwest::Method::POST, "/element", json!({ "using": "css selector", "value": css }))
            .await;
        // W3C names an element's reference by this fixed key.
        let element = found["element-6066-11e4-a52e-4f735466cecf"]
            .as_str()
            .unwrap_or_else(|| panic!("{css}: expected an element reference, found {found}"))
            .to_owned();
        self.session_command(reqwest::Method::POST, &format!("/element/{element}/click"), json!({})).await;
    }

    /// The value of the cookie `name`, if set.
    async fn cookie(&self, name: &str) -> Option<String> {
        let script = format!(
            "return document.cookie.split('; ').find((c) => c.startsWith('{name}='))?.slice({}) ?? null",
            name.len() + 1
        );
        self.execute(&script).await.as_str().map(str::to_owned)
    }

    /// Waits until the page at `path` is the current document (a click may
    /// return before the navigation it started).
    async fn wait_for_path(&self, path: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let script = json!({ "script": "return location.pathname", "args": [] });
        let url = format!("/session/{}/execute/sync", self.session);
        while self.try_command(reqwest::Method::POST, &url, Some(script.clone())).await != Ok(json!(path)) {
            assert!(Instant::now() < deadline, "{path} did not load within 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until onepd.js has loaded and replayed the snippet's calls.
    async fn wait_until_ready(&self) {
        let ready =
            self.execute_async("const done = arguments[arguments.length - 1]; onepd.ready(() => done(true));").await;
        assert_eq!(ready, json!(true));
    }

    /// Messages waiting in the page's stored queues.
    async fn queued(&self) -> u64 {
        let script = "return Object.keys(localStorage).filter((key) => key.startsWith('onepd_queue.'))
            .reduce((sum, key) => sum + JSON.parse(localStorage.getItem(key)).items.length, 0);";
        self.execute(script).await.as_u64().expect("a count")
    }

    /// Waits until every stored queue is empty: the server acknowledged all.
    async fn wait_until_sent(&self) {
        let script = "const done = arguments[arguments.length - 1];
            const deadline = Date.now() + 10000;
            const check = () => {
              const waiting = Object.keys(localStorage).filter((key) => key.startsWith('onepd_queue.'))
                .reduce((sum, key) => sum + JSON.parse(localStorage.getItem(key)).items.length, 0);
              if (waiting === 0 || Date.now() > deadline) done(waiting);
              else setTimeout(check, 20);
            };
            check();";
        assert_eq!(self.execute_async(script).await, json!(0), "the queue empties within 10 s");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ending the session closes Chromium cleanly; killing the group is
        // the backstop when chromedriver no longer answers.
        if !self.session.is_empty() {
            delete_session(&self.base, &self.session);
        }
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.driver.wait();
    }
}

/// `DELETE /session/{id}` over a plain blocking socket: Drop cannot await.
fn delete_session(base: &str, session: &str) {
    use std::io::{Read, Write};
    let Some(address) = base.strip_prefix("http://") else { return };
    let Ok(mut stream) = std::net::TcpStream::connect(address) else { return };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let request = format!("DELETE /session/{session} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    // chromedriver answers once Chromium has quit, and may keep the socket
    // open after: the first bytes of the answer are enough.
    if stream.write_all(request.as_bytes()).is_ok() {
        let _ = stream.read(&mut [0; 1024]);
    }
}
