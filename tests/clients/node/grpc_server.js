'use strict';
// A fast gRPC backend for the benchmark (bench/connect.py): grpc-js, so that the sidecars,
// not the app, bound the throughput. Service test.Echo, raw bytes (no protobuf): Unary
// answers the request's bytes. Prints "listening PORT" once it serves.
//
// Usage: node grpc_server.js PORT

const grpc = require('@grpc/grpc-js');

const identity = (buf) => buf;
const server = new grpc.Server();
server.addService({
  Unary: {
    path: '/test.Echo/Unary', requestStream: false, responseStream: false,
    requestSerialize: identity, requestDeserialize: identity,
    responseSerialize: identity, responseDeserialize: identity,
  },
}, { Unary: (call, callback) => callback(null, call.request) });

server.bindAsync(`127.0.0.1:${process.argv[2]}`, grpc.ServerCredentials.createInsecure(),
  (err, port) => {
    if (err) { process.stderr.write(`${err}\n`); process.exit(1); }
    process.stdout.write(`listening ${port}\n`);
  });
