'use strict';
// A closed-loop gRPC load generator for the benchmark (bench/connect.py): CONCURRENCY unary
// calls in flight on one channel for SECONDS, each a new call as soon as one completes.
// The channel takes its proxy from the environment as any grpc-js app does; with
// --authority=NAME it dials TARGET directly with that :authority (h2c prior knowledge to
// the sidecar's port, no proxy). Prints one JSON line: {"calls": N, "errors": E, "seconds": S}.
//
// Usage: node grpc_load.js TARGET SECONDS CONCURRENCY [--authority=NAME]

const grpc = require('@grpc/grpc-js');

const identity = (buf) => buf;
const [target, secondsArg, concurrencyArg] = process.argv.slice(2).filter((a) => !a.startsWith('--'));
const authorityArg = process.argv.find((a) => a.startsWith('--authority='));
const options = authorityArg ? { 'grpc.default_authority': authorityArg.split('=')[1] } : {};
const client = new grpc.Client(target, grpc.credentials.createInsecure(), options);
const payload = Buffer.from('x'.repeat(64));
const seconds = Number(secondsArg);
let calls = 0;
let errors = 0;
let started = 0;
let stopAt = 0;

function one(done) {
  client.makeUnaryRequest('/test.Echo/Unary', identity, identity, payload, new grpc.Metadata(),
    { deadline: Date.now() + 10000 }, (err) => {
      if (err) errors += 1; else calls += 1;
      if (Date.now() < stopAt) one(done); else done();
    });
}

// Warm up: the channel connected (and the tunnel opened) before the clock starts.
client.makeUnaryRequest('/test.Echo/Unary', identity, identity, payload, new grpc.Metadata(),
  { deadline: Date.now() + 10000 }, (err) => {
    if (err) { process.stderr.write(`warm-up call failed: ${err.message}\n`); process.exit(1); }
    started = Date.now();
    stopAt = started + seconds * 1000;
    let running = Number(concurrencyArg);
    for (let i = Number(concurrencyArg); i > 0; i--) {
      one(() => {
        running -= 1;
        if (running === 0) {
          const elapsed = (Date.now() - started) / 1000;
          process.stdout.write(JSON.stringify({ calls, errors, seconds: elapsed }) + '\n');
          client.close();
        }
      });
    }
  });
