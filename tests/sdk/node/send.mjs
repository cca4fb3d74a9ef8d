// Drives the official @segment/analytics-node SDK against onepd, configured
// as a customer would except for its `host` (and a short flush interval, so
// the test is quick). Used by tests/segment_sdks.rs.
//
// Env: ONEPD_HOST (e.g. http://127.0.0.1:8123), ONEPD_WRITE_KEY, ONEPD_RUN.
// Prints `messageId <id>` for every message the SDK delivered and exits
// non-zero if the SDK reports any error.
import { Analytics } from '@segment/analytics-node'

const host = process.env.ONEPD_HOST
const writeKey = process.env.ONEPD_WRITE_KEY
const run = process.env.ONEPD_RUN
if (!host || !writeKey || !run) {
  console.error('ONEPD_HOST, ONEPD_WRITE_KEY and ONEPD_RUN must be set')
  process.exit(2)
}

const analytics = new Analytics({ writeKey, host, flushInterval: 200 })

const errors = []
analytics.on('error', (err) => {
  errors.push(err)
  console.error(`analytics-node error: ${err.code}: ${err.reason} (messageId ${err.ctx?.event?.messageId})`)
})
// Requests the server refused, kept so their response bodies can be shown.
const refused = []
analytics.on('http_response', (res) => {
  console.log(`http_response ${res.status} ${res.statusText} ${res.url}`)
  if (res.status < 200 || res.status >= 300) refused.push(res)
})
let headers
analytics.on('http_request', (req) => {
  headers = req.headers
})

const delivered = []
let sent = 0
const cb = (err, ctx) => {
  if (err) {
    errors.push(err)
    console.error(`analytics-node callback error: ${err}`)
  } else {
    delivered.push(ctx.event.messageId)
  }
}
const userId = `sdk-${run}-user`

analytics.identify(
  {
    userId,
    traits: { email: '  Ann.Example@Example.COM ', phone: '+1 (415) 555-2671', firstName: 'Ann' },
  },
  cb,
)
sent++
for (let i = 0; i < 20; i++) {
  analytics.track({ userId, event: 'Order Completed', properties: { revenue: 10.5 + i, currency: 'USD', orderId: i } }, cb)
  sent++
}
analytics.page({ userId, category: 'Docs', name: 'Pricing', properties: { url: 'https://example.com/pricing' } }, cb)
sent++
analytics.group({ userId, groupId: `${userId}-group`, traits: { name: 'Example Inc' } }, cb)
sent++
analytics.alias({ previousId: `${userId}-anon`, userId }, cb)
sent++
analytics.screen({ userId, name: 'Home', properties: { variant: 'a' } }, cb)
sent++

await analytics.closeAndFlush({ timeout: 60000 })

for (const id of delivered) console.log(`messageId ${id}`)
if (refused.length > 0) {
  // The SDK does not read response bodies; send the first refused request
  // again by hand so the failure shows what the server said.
  const res = await fetch(refused[0].url, { method: 'POST', headers, body: refused[0].body })
  console.error(`server answered ${res.status}: ${await res.text()}`)
}
if (errors.length > 0 || delivered.length !== sent) {
  console.error(`analytics-node: ${errors.length} error(s), ${delivered.length} of ${sent} messages delivered`)
  process.exit(1)
}
console.log(`delivered ${delivered.length} messages`)
