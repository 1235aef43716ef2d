import { upgradeJournal } from './schema-upgrade.js';

/**
 * The journal's upgrade in a child process of the daemon (upgrade.ts), forked with the daemon's
 * node flags (the TypeScript loader where the sources run under it); its answer is one IPC
 * message. A process, not a worker thread: a thread inside SQLite's C code cannot be
 * interrupted, and a stop asked for during the upgrade waited for all of it; a process is
 * killed at once, and SQLite rolls back the migration it was in (an uncommitted transaction in
 * the WAL is ignored by the next connection): the file stays at the version of its last
 * committed migration, and the next start upgrades it again.
 */
const [path, busyTimeoutMs] = process.argv.slice(2);
const send = process.send?.bind(process);
if (send === undefined || path === undefined) {
  throw new Error('upgrade-process.ts runs as a child process of the daemon (upgrade.ts) only');
}
let answer: unknown;
try {
  answer = { kind: 'done', upgrade: upgradeJournal(path, Number(busyTimeoutMs)) };
} catch (error) {
  const e = error instanceof Error ? error : new Error(String(error));
  answer = { kind: 'error', name: e.name, message: e.message };
}
send(answer, () => {
  process.disconnect();
});
