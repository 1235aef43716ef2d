// A journal with group commit, as the daemon opens it: each round claims a few commands in one
// turn, waits for durable(), then says so on stdout ("durable <round>"). Run under strace by
// test/journal/barrier-fsync.test.ts, which checks that every such line follows an fdatasync of
// the WAL that began after the round's commit.
import { writeSync } from 'node:fs';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { newCommand } from './new-command.js';

const path = process.argv[2];
const rounds = Number(process.argv[3] ?? '3');
if (path === undefined) throw new Error('usage: barrier-process.ts <journal> [rounds]');
const journal = SqliteJournal.open({ path, groupCommit: true });
for (let round = 0; round < rounds; round++) {
  const now = Date.now();
  for (let i = 0; i < 5; i++) {
    journal.claim(newCommand(`r${round}-${i}`, `f${round}-${i}`, now));
  }
  await journal.durable();
  writeSync(1, `durable ${round}\n`);
}
journal.close();
