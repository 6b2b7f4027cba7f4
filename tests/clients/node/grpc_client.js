'use strict';
// A plain gRPC client from another ecosystem (Node.js, @grpc/grpc-js) for the tests: it knows
// nothing about the mesh and, like any grpc-js app, takes its proxy from the environment
// (grpc_proxy, else https_proxy, else http_proxy; no_grpc_proxy, else no_proxy).
//
// Usage: node grpc_client.js TARGET METHOD COUNT [DEADLINE_MS] [--stream] [--request=TEXT]
//   e.g. node grpc_client.js greeter:80 /test.Echo/Meta 5
// Makes COUNT calls, one after another, over ONE channel, each with the request TEXT as UTF-8
// bytes (default: empty) and a deadline (default 10000 ms), and prints one JSON line per call
// on stdout:
//   {"ok": true, "reply": "<utf-8 text>"}                  unary
//   {"ok": true, "messages": ["<utf-8 text>", ...]}        --stream (server streaming)
//   {"ok": false, "code": <grpc status code>, "details": "..."}
// Exits 0 when every call succeeded, 1 otherwise, 2 on bad usage.

const grpc = require('@grpc/grpc-js');

// Messages are raw bytes: no protobuf; the answer is read as UTF-8 text.
const serialize = (buf) => buf;
const deserialize = (buf) => buf;

// One JSON object per line, spaced as Python's json.dumps spaces it.
function line(obj) {
  const value = (v) => (Array.isArray(v) ? `[${v.map(value).join(', ')}]` : JSON.stringify(v));
  return `{${Object.entries(obj).map(([k, v]) => `${JSON.stringify(k)}: ${value(v)}`).join(', ')}}`;
}

function failure(err) {
  return { ok: false, code: typeof err.code === 'number' ? err.code : grpc.status.UNKNOWN,
    details: String(err.details !== undefined ? err.details : err.message) };
}

function unaryCall(client, method, request, deadlineMs) {
  return new Promise((resolve) => {
    client.makeUnaryRequest(method, serialize, deserialize, request, new grpc.Metadata(),
      { deadline: Date.now() + deadlineMs }, (err, reply) => {
        resolve(err ? failure(err) : { ok: true, reply: reply.toString('utf8') });
      });
  });
}

function streamCall(client, method, request, deadlineMs) {
  return new Promise((resolve) => {
    const messages = [];
    let ended = false;
    let status = null;
    // Success needs both the OK status and the end of the stream (the last messages may still
    // be buffered when the status arrives); an error ends the call at once.
    const finishIfDone = () => {
      if (status && status.code !== grpc.status.OK) resolve(failure(status));
      else if (ended && status) resolve({ ok: true, messages });
    };
    const call = client.makeServerStreamRequest(method, serialize, deserialize, request,
      new grpc.Metadata(), { deadline: Date.now() + deadlineMs });
    call.on('data', (msg) => messages.push(msg.toString('utf8')));
    call.on('error', (err) => resolve(failure(err)));
    call.on('status', (s) => { status = s; finishIfDone(); });
    call.on('end', () => { ended = true; finishIfDone(); });
  });
}

async function main() {
  const args = process.argv.slice(2);
  const stream = args.includes('--stream');
  const requestArg = args.find((a) => a.startsWith('--request='));
  const request = Buffer.from(requestArg ? requestArg.slice('--request='.length) : '', 'utf8');
  const [target, method, countArg, deadlineArg] = args.filter((a) => !a.startsWith('--'));
  const count = Number.parseInt(countArg, 10);
  const deadlineMs = deadlineArg === undefined ? 10000 : Number.parseInt(deadlineArg, 10);
  if (!target || !method || !(count >= 0) || !(deadlineMs > 0)) {
    process.stderr.write(
      'usage: node grpc_client.js TARGET METHOD COUNT [DEADLINE_MS] [--stream] [--request=TEXT]\n');
    process.exitCode = 2;
    return;
  }
  const client = new grpc.Client(target, grpc.credentials.createInsecure());
  let allOk = true;
  for (let i = 0; i < count; i++) {
    const result = await (stream ? streamCall : unaryCall)(client, method, request, deadlineMs);
    allOk = allOk && result.ok;
    process.stdout.write(line(result) + '\n');
  }
  client.close();
  process.exitCode = allOk ? 0 : 1;
}

main();
