#!/usr/bin/env node
// Consume --topic / --channel from both brokers of a pair until --expect distinct
// messages were handled, then close. Give one --broker and the partner is found with
// GetStats (pair.partner_address), or give both. The first --requeue messages are
// REQ'd once (they must come back, with attempts 2); the first --touch handled ones
// are TOUCHed before their FIN (a TOUCH_FAILED frame would show in frame_errors). Duplicates (same id) are FIN'd
// and not handled again. Prints one JSON object: {ok, handled, requeued, duplicates, ...}.
//
//   node consumer.js --broker 127.0.0.1:4150 --topic orders --channel billing --expect 100
'use strict';

const { broker, partnerOf, Consumer, errorInfo } = require('./pairq');
const { parseArgs } = require('./args');

async function main() {
  const args = parseArgs(process.argv.slice(2), ['broker']);
  const addresses = [...args.broker];
  if (addresses.length === 1) {
    const client = broker(addresses[0]);
    const partner = await partnerOf(client);
    client.close();
    if (partner) addresses.push(partner);
  }
  const expect = Number(args.expect || 1);
  const requeueFirst = Number(args.requeue || 0);
  const touchFirst = Number(args.touch || 0);
  const timeoutMs = Number(args.timeout_ms || 30000);
  const handled = {}; // id hex -> {body, attempts, broker}
  const requeued = {}; // id hex -> attempts when REQ'd
  let finish;
  const finished = new Promise((resolve) => (finish = resolve));

  const consumer = new Consumer({
    addresses,
    topic: args.topic,
    channel: args.channel,
    rdy: Number(args.rdy || 50),
    handler(m, address) {
      const key = m.id.toString('hex');
      if (Object.keys(requeued).length < requeueFirst && !(key in requeued)) {
        requeued[key] = m.attempts;
        return 'req';
      }
      handled[key] = { body: m.body.toString(), attempts: m.attempts, broker: address };
      const n = Object.keys(handled).length;
      if (n >= expect) setImmediate(finish);
      return n <= touchFirst ? 'touch' : 'fin';
    },
  });
  consumer.start();
  const timer = setTimeout(finish, timeoutMs);
  await finished;
  clearTimeout(timer);
  consumer.close();
  const ok = Object.keys(handled).length >= expect;
  process.stdout.write(
    JSON.stringify({
      ok,
      brokers: addresses,
      handled,
      requeued,
      duplicates: consumer.duplicates,
      frame_errors: consumer.frameErrors,
      stream_errors: consumer.streamErrors,
    }) + '\n',
  );
  // Let the FINs and closes of the last deliveries reach the brokers.
  setTimeout(() => process.exit(ok ? 0 : 1), 300);
}

main().catch((err) => {
  process.stderr.write(`consumer failed: ${JSON.stringify(errorInfo(err))}\n`);
  process.exit(1);
});
