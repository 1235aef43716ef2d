// A worker thread that opens the journal on its own connection and claims one key when the
// shared start flag flips: many of them race for the same key at the same instant.
import { parentPort, workerData } from 'node:worker_threads';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';

interface Data {
  path: string;
  key: string;
  fingerprint: string;
  start: Int32Array;
}

const data = workerData as Data;
const journal = SqliteJournal.open({ path: data.path, busyTimeoutMs: 10_000 });
parentPort?.postMessage({ ready: true });
Atomics.wait(data.start, 0, 0);
const now = Date.now();
const claim = journal.claim({
  scope: 'plant',
  key: data.key,
  fingerprint: data.fingerprint,
  device: 'inlet-valve',
  action: 'open',
  position: null,
  issuedAt: now,
  issuedAtSource: 'gateway',
  ttlMs: 30_000,
  deadline: now + 30_000,
  intake: 'https',
  acceptedAt: now,
});
journal.close();
parentPort?.postMessage({ kind: claim.kind });
