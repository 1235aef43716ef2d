import { once } from 'node:events';
import { createServer, connect, type Socket } from 'node:net';
import { connectionOf, readTcpPeers } from '../../src/intake/https-peer.js';

/**
 * A process that opens a loopback TCP connection to itself and prints, as one JSON line,
 * whether readTcpPeers found the kernel's table and the connection in it (by connectionOf's
 * key). Started by https-peer-proc-subset.test.ts under a /proc mounted as the daemon's unit
 * mounts it (ProcSubset=pid).
 */
const accepted: Socket[] = [];
const server = createServer((socket) => accepted.push(socket));
server.listen(0, '127.0.0.1');
await once(server, 'listening');
const address = server.address();
if (address === null || typeof address === 'string') throw new Error('no TCP address');
const client = connect(address.port, '127.0.0.1');
await once(client, 'connect');
const key = connectionOf(client);
const peers = await readTcpPeers();
process.stdout.write(
  `${JSON.stringify({ table: peers !== null, key, found: key !== null && peers?.has(key) === true })}\n`,
);
client.destroy();
for (const socket of accepted) socket.destroy();
server.close();
