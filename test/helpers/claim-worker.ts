// A worker thread that opens the journal on its own connection and claims one key when the
// shared start flag flips: many of them race for the same key at the same instant.
import { parentPort, workerData } from 'node:worker_threads';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { newCommand } from './new-command.js';

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
const claim = journal.claim(newCommand(data.key, data.fingerprint));
journal.close();
parentPort?.postMessage({ kind: claim.kind });
