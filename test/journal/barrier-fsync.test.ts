import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { nodeArgs } from '../helpers/entry.js';
import { tempDir } from '../helpers/fixtures.js';
import { hasCommand, realComponent } from '../helpers/real.js';

/**
 * Ground truth for group commit's barrier (I5): what the process asks of the kernel, seen by
 * strace. The barrier's fdatasync runs on libuv's thread pool, where no JavaScript can watch
 * it; this test reads the system calls of every thread in order and checks that each "durable"
 * line the journal's user prints (what an intake would answer) comes after an fdatasync (or
 * fsync) of the WAL file that began after the last write to the WAL before it, and returned
 * successfully before the line was written.
 */

const ROOT = join(import.meta.dirname, '../..');
const haveStrace = realComponent('strace', hasCommand('strace'), 'apt-get install strace');

interface Call {
  readonly name: string;
  readonly path: string;
  /** Index of the line where the call began and where it returned. */
  readonly began: number;
  readonly returned: number;
  readonly ok: boolean;
  readonly text: string;
}

/**
 * strace -f output, one call per line or split into "<unfinished ...>" and "<... resumed>"
 * when another thread's call came in between.
 */
function parse(log: string): Call[] {
  const calls: Call[] = [];
  const open = new Map<string, { name: string; path: string; began: number; text: string }>();
  log.split('\n').forEach((line, index) => {
    const unfinished = /^(\d+)\s+(\w+)\((\d+)<([^>]*)>.*<unfinished \.\.\.>$/.exec(line);
    if (unfinished !== null) {
      const [, pid = '', name = '', , path = ''] = unfinished;
      open.set(`${pid}:${name}`, { name, path, began: index, text: line });
      return;
    }
    const resumed = /^(\d+)\s+<\.\.\. (\w+) resumed>.*= (-?\d+)/.exec(line);
    if (resumed !== null) {
      const [, pid = '', name = '', result = ''] = resumed;
      const start = open.get(`${pid}:${name}`);
      if (start === undefined) return;
      open.delete(`${pid}:${name}`);
      calls.push({ ...start, returned: index, ok: Number(result) >= 0 });
      return;
    }
    const whole = /^(\d+)\s+(\w+)\((\d+)<([^>]*)>.*= (-?\d+)/.exec(line);
    if (whole !== null) {
      const [, , name = '', , path = '', result = ''] = whole;
      calls.push({
        name,
        path,
        began: index,
        returned: index,
        ok: Number(result) >= 0,
        text: line,
      });
    }
  });
  return calls;
}

describe.skipIf(!haveStrace)('group commit barrier, traced', () => {
  it('answers only after an fdatasync of the WAL that began after the commit', () => {
    const { dir, cleanup } = tempDir('sluice-barrier-');
    try {
      const journal = join(dir, 'journal.db');
      const trace = join(dir, 'strace.log');
      const rounds = 4;
      const stdout = execFileSync(
        'strace',
        [
          '-f',
          '-qq',
          '-y',
          '-e',
          'trace=write,pwrite64,fdatasync,fsync',
          '-o',
          trace,
          process.execPath,
          ...nodeArgs('test/helpers/barrier-process.ts'),
          journal,
          String(rounds),
        ],
        { cwd: ROOT, encoding: 'utf8', timeout: 60_000 },
      );
      expect(stdout.trim().split('\n')).toEqual(
        Array.from({ length: rounds }, (_, round) => `durable ${round}`),
      );
      const calls = parse(readFileSync(trace, 'utf8'));
      const wal = `${journal}-wal`;
      const answers = calls.filter((c) => c.name === 'write' && c.text.includes('"durable '));
      expect(answers).toHaveLength(rounds);
      for (const answer of answers) {
        const walWrites = calls.filter(
          (c) => c.path === wal && (c.name === 'pwrite64' || c.name === 'write'),
        );
        const lastWrite = walWrites.filter((c) => c.began < answer.began).at(-1);
        expect(lastWrite, `a WAL write before ${answer.text}`).toBeDefined();
        const syncs = calls.filter(
          (c) =>
            c.path === wal &&
            (c.name === 'fdatasync' || c.name === 'fsync') &&
            c.ok &&
            c.began > (lastWrite?.returned ?? Infinity) &&
            c.returned < answer.began,
        );
        expect(
          syncs.length,
          `an fdatasync of the WAL between its last write and ${answer.text}`,
        ).toBeGreaterThan(0);
      }
    } finally {
      cleanup();
    }
  }, 90_000);
});
