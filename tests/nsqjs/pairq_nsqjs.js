// nsqjs, unchanged, against pairq brokers' NSQ TCP protocol (run by tests/integration/test_nsqjs.py).
//
// node pairq_nsqjs.js CONFIG_JSON, where CONFIG_JSON is
//   {"writer": "HOST:PORT", "readers": ["HOST:PORT", ...], "topic": T, "channel": C,
//    "count": N, "msgTimeoutMs": MS, "timeoutMs": MS}
// or, instead of "readers", "lookupd": ["HOST:PORT", ...]: the Reader finds the brokers
// through nsqlookupd's HTTP API (a pairq lookup's --http-address), as NSQ users run it.
// The Writer publishes N messages: "req-*" and "touch-*" one at a time, "m-*" in batches,
// and one deferred ("late"). The Reader, connected to every address, FINs each message,
// except that a "req-*" one is requeued on its first attempt and a "touch-*" one is kept
// in flight with TOUCH for 2.5 msg timeouts before its FIN. It prints one JSON line:
//   {"published": [...bodies acked...], "received": {body: [[id, attempts], ...]},
//    "errors": [...]}
// and exits 0 once every acked body was finished (and its connections closed), 1 on timeout.
// With "mode": "publish" it only publishes (N "m-*" messages in batches) and exits once
// they are acked; with "mode": "consume" and "expect": [bodies] it only consumes, until
// every expected body was finished.
'use strict'

const nsq = require('nsqjs')

const cfg = JSON.parse(process.argv[2])
const [wHost, wPort] = cfg.writer.split(':')
const mode = cfg.mode || 'all'
const published = mode === 'consume' ? [...cfg.expect] : []
const received = {}
const finished = new Set()
const errors = []
let publishing = mode !== 'consume'

function done(code) {
  console.log(JSON.stringify({ published, received, errors }))
  if (code !== 0 || mode === 'publish') process.exit(code)
  // Let the last FINs leave (nsqjs writes them on the next tick), then close: CLS on
  // every connection; node exits once they are closed.
  reader.close()
}

setTimeout(() => done(1), cfg.timeoutMs).unref()

let ended = false
function check() {
  if (!ended && !publishing && published.every((b) => finished.has(b))) {
    ended = true
    setImmediate(() => done(0))
  }
}

const reader = mode === 'publish' ? null : new nsq.Reader(cfg.topic, cfg.channel, {
  ...(cfg.lookupd
    ? { lookupdHTTPAddresses: cfg.lookupd, lookupdPollInterval: 1, lookupdPollJitter: 0.1 }
    : { nsqdTCPAddresses: cfg.readers }),
  maxInFlight: 50,
  messageTimeout: cfg.msgTimeoutMs,
  heartbeatInterval: 1,
})
if (reader) reader.on('error', (err) => errors.push(`reader: ${err}`))
if (reader) reader.on('message', (msg) => {
  const body = msg.body.toString()
  ;(received[body] = received[body] || []).push([msg.id, msg.attempts])
  if (finished.has(body)) {
    msg.finish() // a duplicate (at least once): already handled
    return
  }
  if (body.startsWith('req-') && msg.attempts === 1) {
    msg.requeue(0, false)
    return
  }
  const fin = () => {
    msg.finish()
    finished.add(body)
    check()
  }
  if (body.startsWith('touch-')) {
    const end = Date.now() + 2.5 * cfg.msgTimeoutMs
    const timer = setInterval(() => {
      if (Date.now() >= end) {
        clearInterval(timer)
        fin()
      } else {
        msg.touch()
      }
    }, cfg.msgTimeoutMs / 4)
    return
  }
  fin()
})
if (reader) reader.connect()

if (mode !== 'consume') startWriter()

function startWriter() {
  const writer = new nsq.Writer(wHost, Number(wPort))
  writer.on('error', (err) => errors.push(`writer: ${err}`))
  writer.on('ready', async () => {
    const pub = (msgs) =>
      new Promise((resolve) =>
        writer.publish(cfg.topic, msgs, (err) => {
          if (err) errors.push(`publish: ${err}`)
          else published.push(...(Array.isArray(msgs) ? msgs : [msgs]))
          resolve()
        })
      )
    if (mode === 'all') {
      await pub('req-0')
      await pub('touch-0')
    }
    const batch = []
    for (let i = 0; i < cfg.count; i++) {
      batch.push(`m-${i}`)
      if (batch.length === 10) await pub(batch.splice(0))
    }
    if (batch.length) await pub(batch.splice(0))
    if (mode === 'publish') {
      writer.close()
      done(0)
      return
    }
    await new Promise((resolve) =>
      writer.deferPublish(cfg.topic, ['late'], 300, (err) => {
        if (err) errors.push(`deferPublish: ${err}`)
        else published.push('late')
        resolve()
      })
    )
    publishing = false
    writer.close()
    check()
  })
  writer.connect()
}
