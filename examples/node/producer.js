#!/usr/bin/env node
// Publish --count messages to --topic on --broker: a few with Publish, the rest with
// PublishBatch in batches no larger than the broker's max_batch (from GetStats
// limits). Every message gets its own 16-byte id, so a retry after UNAVAILABLE is
// stored once. --demo-errors first sends two refused requests and reports their
// ErrorInfo. Prints one JSON object: {ids, copies, errors}.
//
//   node producer.js --broker 127.0.0.1:4150 --topic orders --count 100
'use strict';

const { broker, call, errorInfo, retryable, limitsOf, newId } = require('./pairq');
const { parseArgs } = require('./args');

const SINGLE = 5; // published one by one, the rest in batches

async function withRetry(fn, attempts = 5) {
  for (let i = 1; ; i++) {
    try {
      return await fn();
    } catch (err) {
      const info = errorInfo(err);
      if (i >= attempts || !retryable(info)) throw err;
      await new Promise((r) => setTimeout(r, 100 * i)); // same ids: stored once
    }
  }
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const client = broker(args.broker);
  const topic = args.topic;
  const count = Number(args.count || 10);
  const prefix = args.prefix || 'm';
  const limits = await limitsOf(client);
  const batchSize = Math.max(1, Math.min(Number(args.batch || 10), limits.max_batch));
  const out = { ids: [], copies: [], errors: [], limits };

  if (args.demo_errors) {
    // An empty body: INVALID_ARGUMENT, reason ERROR_CODE_BAD_MESSAGE.
    // A batch one above max_batch: RESOURCE_EXHAUSTED, ERROR_CODE_BAD_BATCH,
    // metadata {limit: 'max_batch', max: '<max_batch>'}.
    const tooMany = Array.from({ length: limits.max_batch + 1 }, () => ({ body: Buffer.from('x') }));
    for (const [method, req] of [
      ['Publish', { topic, message: { body: Buffer.alloc(0) } }],
      ['PublishBatch', { topic, messages: tooMany }],
    ]) {
      try {
        await call(client, method, req);
        out.errors.push({ method, unexpected: 'accepted' });
      } catch (err) {
        out.errors.push({ method, ...errorInfo(err) });
      }
    }
  }

  const items = Array.from({ length: count }, (_, i) => ({
    id: newId(),
    body: Buffer.from(`${prefix}-${i}`),
    headers: { producer: 'node-example' },
  }));
  for (const item of items.slice(0, SINGLE)) {
    const resp = await withRetry(() => call(client, 'Publish', { topic, message: item }));
    out.ids.push(resp.id.toString('hex'));
    out.copies.push(resp.copies);
  }
  for (let i = SINGLE; i < items.length; i += batchSize) {
    const batch = items.slice(i, i + batchSize);
    const resp = await withRetry(() => call(client, 'PublishBatch', { topic, messages: batch }));
    for (const id of resp.ids) out.ids.push(id.toString('hex'));
    out.copies.push(resp.copies);
  }
  client.close();
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((err) => {
  process.stderr.write(`producer failed: ${JSON.stringify(errorInfo(err))}\n`);
  process.exit(1);
});
