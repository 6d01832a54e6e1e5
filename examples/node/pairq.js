// pairq from Node.js, built from proto/pairq/v1/*.proto alone (no pairq code).
//
// What a client needs besides the generated stubs, each from a comment in
// broker.proto:
//   * errors: errorInfo() decodes the `grpc-status-details-bin` trailer
//     (google.rpc.Status carrying google.rpc.ErrorInfo; reason = ErrorCode name);
//   * pairs: partnerOf() finds the other broker of a pair (GetStats pair.partner_address),
//     and Consumer subscribes to every broker given, one Subscribe stream each;
//   * de-duplication: Consumer hands each message id to its handler once.
'use strict';

const path = require('path');
const crypto = require('crypto');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

// proto/ of the pairq repository (two levels up), or $PAIRQ_PROTO_DIR.
const PROTO_DIR = process.env.PAIRQ_PROTO_DIR || path.resolve(__dirname, '..', '..', 'proto');

const definition = protoLoader.loadSync(['pairq/v1/broker.proto'], {
  includeDirs: [PROTO_DIR],
  keepCase: true, // field names as in the .proto (msg_timeout_ms, not msgTimeoutMs)
  longs: String, // uint64 counters as decimal strings
  enums: String, // ErrorCode as its name
  defaults: true,
  oneofs: true, // resp.event / req.command name the oneof member set
});
const v1 = grpc.loadPackageDefinition(definition).pairq.v1;

// google.rpc.Status and google.rpc.ErrorInfo, the fields pairq uses (from
// google/rpc/status.proto and google/rpc/error_details.proto).
const rpcRoot = new protobuf.Root();
protobuf.parse(
  'syntax = "proto3"; package google.protobuf; message Any { string type_url = 1; bytes value = 2; }',
  rpcRoot,
  { keepCase: true },
);
protobuf.parse(
  `syntax = "proto3"; package google.rpc;
   message Status { int32 code = 1; string message = 2; repeated google.protobuf.Any details = 3; }
   message ErrorInfo { string reason = 1; string domain = 2; map<string, string> metadata = 3; }`,
  rpcRoot,
  { keepCase: true },
);
const RpcStatus = rpcRoot.lookupType('google.rpc.Status');
const ErrorInfo = rpcRoot.lookupType('google.rpc.ErrorInfo');

/** A BrokerService client for HOST:PORT (plaintext). */
function broker(address) {
  return new v1.BrokerService(address, grpc.credentials.createInsecure());
}

/** A unary call as a promise. */
function call(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, (err, resp) => (err ? reject(err) : resolve(resp)));
  });
}

/**
 * What a failed call says, as plain data: the gRPC status name, the message, and
 * the ErrorInfo (reason, domain, metadata) from the grpc-status-details-bin
 * trailer; reason is '' when the status carries no ErrorInfo (a transport
 * error, UNAUTHENTICATED, ...: decide by the gRPC code alone).
 */
function errorInfo(err) {
  const out = {
    status: grpc.status[err.code] || String(err.code),
    message: err.details || err.message,
    reason: '',
    domain: '',
    metadata: {},
  };
  const raw = err.metadata ? err.metadata.get('grpc-status-details-bin') : [];
  for (const buf of raw) {
    const st = RpcStatus.decode(buf);
    for (const any of st.details) {
      if (any.type_url.endsWith('/google.rpc.ErrorInfo')) {
        const info = ErrorInfo.decode(any.value);
        out.reason = info.reason;
        out.domain = info.domain;
        out.metadata = { ...info.metadata };
      }
    }
  }
  return out;
}

/** ErrorCode names a retry (same ids, this broker or its partner) can cure. */
function retryable(info) {
  return info.reason === 'ERROR_CODE_UNAVAILABLE' || (!info.reason && info.status === 'UNAVAILABLE');
}

/** The partner's gRPC address (GetStats pair.partner_address); '' for a single broker. */
async function partnerOf(client) {
  const stats = await call(client, 'GetStats', { no_clients: true, topic: '', channel: '' });
  return (stats.pair && stats.pair.partner_address) || '';
}

/** The broker's limits (GetStatsResponse.limits, the same as SubscribeAccepted.limits). */
async function limitsOf(client) {
  return (await call(client, 'GetStats', { no_clients: true })).limits;
}

/** A new 16-byte message id: set by the producer, a retry is stored only once. */
function newId() {
  return crypto.randomBytes(16);
}

/**
 * Consumes one channel from every broker given (both brokers of a pair: each
 * delivers only the messages it owns, and the backlog it takes over when its
 * partner dies). handler(message, broker) returns 'fin', 'req', or 'touch' (a
 * slow handler: reset the message's timeout with TOUCH, then FIN); a message id
 * already FIN'd is not handed over again (a duplicate: FIN'd at once).
 */
class Consumer {
  constructor({ addresses, topic, channel, rdy = 100, handler, clientId = 'node-example' }) {
    this.addresses = addresses;
    this.topic = topic;
    this.channel = channel;
    this.rdy = rdy;
    this.handler = handler;
    this.clientId = clientId;
    this.done = new Set(); // ids FIN'd: de-duplication key (hex of Message.id)
    this.duplicates = 0;
    this.frameErrors = []; // SubscribeError frames (the stream went on)
    this.streamErrors = []; // statuses that ended a stream (then it reconnects)
    this.streams = new Map();
    this.closing = false;
  }

  start() {
    for (const address of this.addresses) this._connect(address);
  }

  _connect(address) {
    const client = broker(address);
    const stream = client.Subscribe();
    this.streams.set(address, stream);
    stream.write({
      identify: {
        topic: this.topic,
        channel: this.channel,
        client_id: this.clientId,
        hostname: require('os').hostname(),
        user_agent: 'pairq-node-example/1.0',
      },
    });
    stream.on('data', (resp) => this._event(address, stream, resp));
    stream.on('error', (err) => {
      const info = errorInfo(err);
      if (!this.closing && info.status !== 'CANCELLED') this.streamErrors.push({ address, ...info });
    });
    stream.on('close', () => {
      client.close();
      if (!this.closing) setTimeout(() => this._connect(address), 200); // reconnect
    });
  }

  _event(address, stream, resp) {
    switch (resp.event) {
      case 'accepted':
        stream.write({ ready: { count: Math.min(this.rdy, resp.accepted.max_rdy_count) } });
        break;
      case 'heartbeat':
        stream.write({ nop: true });
        break;
      case 'error':
        this.frameErrors.push({ address, code: resp.error.code, message: resp.error.message });
        break;
      case 'deliveries': {
        const fin = [];
        const req = [];
        const touch = [];
        for (const m of resp.deliveries.messages) {
          const key = m.id.toString('hex');
          if (this.done.has(key)) {
            this.duplicates += 1; // delivered again (a timeout, a takeover): done already
            fin.push(m.id);
          } else {
            const verdict = this.handler(m, address);
            if (verdict === 'req') {
              req.push(m.id);
              continue;
            }
            if (verdict === 'touch') touch.push(m.id);
            this.done.add(key);
            fin.push(m.id);
          }
        }
        if (touch.length) stream.write({ touch: { ids: touch } });
        if (fin.length) stream.write({ finish: { ids: fin } });
        if (req.length) stream.write({ requeue: { ids: req, delay_ms: 0 } });
        break;
      }
      default:
        break;
    }
  }

  /** Stop: ask each broker to end its stream, and end ours. */
  close() {
    this.closing = true;
    for (const stream of this.streams.values()) {
      stream.write({ close: true });
      stream.end();
    }
  }
}

module.exports = { v1, grpc, broker, call, errorInfo, retryable, partnerOf, limitsOf, newId, Consumer };
