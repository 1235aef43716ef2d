// A second sluiced's start, as far as the journal's lock: takes it (src/journal/writer-lock.ts),
// says so on stdout ("locked", or "refused <message>"), and holds it until killed.
import { writeSync } from 'node:fs';
import { lockJournal } from '../../src/journal/writer-lock.js';

const path = process.argv[2];
if (path === undefined) throw new Error('usage: lock-process.ts <journal>');
try {
  lockJournal(path);
  writeSync(1, 'locked\n');
  setInterval(() => undefined, 60_000);
} catch (error) {
  writeSync(1, `refused ${(error as Error).message}\n`);
}
