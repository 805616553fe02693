// The benchmark peer's server: oidc-provider's routes (POST /token is the one the load
// uses) on DIR/peer.sqlite.
//
//   node server.mjs DIR
//
// PEER_LISTEN (host:port, default 127.0.0.1:0) picks the address; PEER_WORKERS (default 1)
// runs that many processes on the one port with node:cluster, each with its own SQLite
// connection. Prints `peer listening on http://HOST:PORT` once it is ready.

import cluster from 'node:cluster';
import * as http from 'node:http';

import { makeProvider } from './provider.mjs';

const dir = process.argv[2];
if (!dir) {
  console.error('usage: node server.mjs DIR');
  process.exit(64);
}
const [host, portText] = (process.env.PEER_LISTEN ?? '127.0.0.1:0').split(':');
const port = Number.parseInt(portText ?? '0', 10);
const workers = Math.max(1, Number.parseInt(process.env.PEER_WORKERS ?? '1', 10) || 1);

function serve(announce) {
  const { provider, db } = makeProvider(dir);
  provider.on('server_error', (_ctx, err) => console.error('server_error', err));
  const server = http.createServer(provider.callback());
  server.keepAliveTimeout = 60_000;
  server.listen(port, host, () => {
    if (announce) {
      const { address, port: bound } = server.address();
      console.log(`peer listening on http://${address}:${bound} (pid ${process.pid}, 1 process)`);
    }
  });
  const stop = () => {
    server.close(() => { db.close(); process.exit(0); });
    server.closeAllConnections();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

if (workers === 1) {
  serve(true);
} else if (cluster.isPrimary) {
  // Workers listening on port 0 all share the one port the primary picks.
  let ready = 0;
  cluster.on('listening', (_worker, address) => {
    ready += 1;
    if (ready === workers) {
      console.log(`peer listening on http://${host}:${address.port} (pid ${process.pid}, ${workers} workers)`);
    }
  });
  cluster.on('exit', (worker, code, signal) => {
    if (!stopping) {
      console.error(`peer worker ${worker.process.pid} exited (${signal ?? code})`);
      process.exit(1);
    }
  });
  let stopping = false;
  const stop = () => {
    stopping = true;
    for (const worker of Object.values(cluster.workers)) worker.kill('SIGTERM');
    setTimeout(() => process.exit(0), 2000).unref();
    cluster.on('exit', () => { if (Object.keys(cluster.workers).length === 0) process.exit(0); });
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  for (let i = 0; i < workers; i += 1) cluster.fork();
} else {
  serve(false);
}
