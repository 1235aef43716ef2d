import { readlinkSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { upgradeJournal } from './connection.js';

/**
 * The journal's upgrade on a worker thread of the daemon (upgrade.ts). Its first message says
 * where its I/O counters are (Linux: /proc/thread-self is "<pid>/task/<tid>"), which the main
 * thread reads while the migrations run here: the proof that the upgrade is getting on.
 */
const { path, busyTimeoutMs } = workerData as { path: string; busyTimeoutMs: number };
if (parentPort === null) throw new Error('upgrade-thread.ts runs as a worker thread only');
const port = parentPort;
let io: string | null = null;
try {
  io = `/proc/${readlinkSync('/proc/thread-self')}/io`;
} catch {
  // No /proc/thread-self: the upgrade's progress cannot be seen.
}
port.postMessage({ kind: 'thread', io });
try {
  port.postMessage({ kind: 'done', upgrade: upgradeJournal(path, busyTimeoutMs) });
} catch (error) {
  const e = error instanceof Error ? error : new Error(String(error));
  port.postMessage({ kind: 'error', name: e.name, message: e.message });
}
