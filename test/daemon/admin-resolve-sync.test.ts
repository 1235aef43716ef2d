import { hostname } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { Daemon } from '../../src/daemon/daemon.js';
import { PIPELINE, RECOVERY } from '../../src/core/lane.js';
import { noConnectionLine, unsentLine } from '../../src/core/redispatch.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import type { Plant } from '../../simulators/plant.js';
import { sluicectl, type CliRun } from '../cli/helpers.js';
import { seedOrphan, startModbusPlant, writeDaemonSite } from '../helpers/daemon-site.js';
import { tempDir } from '../helpers/fixtures.js';
import { holdThreadPool } from '../helpers/thread-pool.js';
import { failFdatasync } from '../helpers/failing-fdatasync.js';

/**
 * `sluicectl resolve` while the journal cannot make the resolve durable, and of a command whose
 * write was withdrawn unsent. The resolve takes
 * effect in the daemon at once (the journal's connection holds the outcome, the command's worker
 * stops); only its sync waits. A sync that stalls or fails used to be answered as a failed
 * resolve (a timeout of sluicectl after 30 s, or 503 JOURNAL_UNAVAILABLE), and the operator's
 * retry then heard ALREADY_SETTLED, as if someone else had ended the command. Now the answer
 * says the resolve took effect and is not on disk yet, and the same resolve asked again says it
 * is this one, and when it is on disk. Real daemon (in this process, so that its disk can be
 * held), real sluicectl processes, real journal; ground truth: the journal file.
 */

const OPERATOR = `alice@${hostname()}`;
let plant: Plant;
let daemon: Daemon;
let configPath: string;
let journalPath: string;
let cleanup: () => void;

const cli = (...args: string[]): Promise<CliRun> =>
  sluicectl(['--config', configPath, ...args], {
    env: { SUDO_USER: 'alice', USER: 'root' },
    timeoutMs: 40_000,
  });

/** The command as the journal file holds it, through a connection of its own. */
function onFile(key: string): { state: string; code: string | null; detail: string | null } {
  const journal = SqliteJournal.open({ path: journalPath, readonly: true });
  try {
    const r = journal.findByKey(key)[0]!;
    return { state: r.state, code: r.code, detail: r.detail };
  } finally {
    journal.close();
  }
}

beforeAll(async () => {
  let dir: string;
  ({ dir, cleanup } = tempDir('sluice-resolve-sync-'));
  plant = await startModbusPlant({ 'inlet-valve': { profile: 'valve', base: 0, travelMs: 300 } });
  configPath = await writeDaemonSite(dir, plant, 'resolvesync');
  journalPath = join(dir, 'state', 'journal.db');
  // Open commands of a valve no longer configured: nothing but a resolve ends them.
  for (const key of ['stalled-1', 'failed-1']) {
    seedOrphan(journalPath, Date.now(), {
      scope: 'ops',
      key,
      device: 'removed-valve',
      intake: 'https',
    });
  }
  // One whose write a stop of the daemon withdrew: dispatched, and its history says so.
  seedOrphan(journalPath, Date.now(), {
    scope: 'ops',
    key: 'unsent-1',
    device: 'removed-valve',
    intake: 'https',
  });
  const journal = SqliteJournal.open({ path: journalPath });
  try {
    const at = Date.now() - 590_000;
    const dispatched = journal.markDispatched(
      { scope: 'ops', key: 'unsent-1' },
      at,
      {
        state: 'OPEN',
        position: 100,
        seq: 0,
        faultCode: null,
        sourceTime: null,
        readAt: new Date(at).toISOString(),
      },
      PIPELINE,
      () => 7,
    );
    journal.note(
      dispatched,
      at + 5,
      unsentLine(7, 'as the daemon stopped', 'mb: write 10+3: not sent: withdrawn'),
      RECOVERY,
    );
    // One whose write found no connection, its command gone round again, when the daemon
    // stopped: dispatched, and its history says the write never left the daemon.
    seedOrphan(journalPath, Date.now(), {
      scope: 'ops',
      key: 'unsent-2',
      device: 'removed-valve',
      intake: 'https',
    });
    const waiting = journal.markDispatched(
      { scope: 'ops', key: 'unsent-2' },
      at,
      {
        state: 'CLOSED',
        position: 0,
        seq: 0,
        faultCode: null,
        sourceTime: null,
        readAt: new Date(at).toISOString(),
      },
      PIPELINE,
      () => 8,
    );
    journal.note(
      waiting,
      at + 5,
      noConnectionLine(
        8,
        'mb: write 10+3: not sent: no connection to the PLC (mb: not connected; next attempt in 180 ms (mb: connection closed)); nothing was written',
      ),
      RECOVERY,
    );
  } finally {
    journal.close();
  }
  daemon = await Daemon.start(loadConfig(configPath, { env: {} }), {
    logger: pino({ level: 'silent' }),
  });
}, 30_000);

afterAll(async () => {
  await daemon.stop();
  await plant.stop();
  cleanup();
});

describe('resolve while the journal cannot make it durable', () => {
  it('a stalled sync: answered as taken effect and not yet on disk; the retry is this resolve', async () => {
    const reason = 'valve removed in 2025; closed by hand';
    // The journal's fdatasync runs on libuv's pool: held, it cannot return, as on a disk whose
    // flush stalls.
    const pool = holdThreadPool();
    let first: CliRun;
    try {
      first = await cli('resolve', 'stalled-1', '--as', 'failed', '--reason', reason);
      // It took effect: the journal's connection holds it (committed, not yet synced).
      expect(onFile('stalled-1')).toMatchObject({ state: 'failed', code: 'RESOLVED_BY_OPERATOR' });
    } finally {
      await pool.release();
    }
    expect(first.code).toBe(1);
    expect(first.stdout).toMatch(/^RESOLVED, NOT YET ON DISK by /);
    expect(first.stdout).toContain('the resolve took effect');
    expect(first.stdout).toContain("the journal's sync has not returned within 5 s");
    expect(first.stdout).toContain('Ask for the same resolve again');

    // The operator asks again: this very resolve, on disk now — not someone else's.
    const again = await cli('resolve', 'stalled-1', '--as', 'failed', '--reason', reason);
    expect(again.code).toBe(0);
    expect(again.stdout).toMatch(
      new RegExp(
        `^RESOLVED by ${OPERATOR}: failed RESOLVED_BY_OPERATOR; nothing was written to the controller \\(already resolved by this same request at \\S+; it is on disk\\)`,
      ),
    );
    const json = await cli('resolve', 'stalled-1', '--as', 'failed', '--reason', reason, '--json');
    expect(json.code).toBe(0);
    expect(json.json()).toMatchObject({ durable: true, replayed: true });

    // Another reason is another resolve: refused, and the refusal says whose and why.
    const other = await cli('resolve', 'stalled-1', '--as', 'failed', '--reason', 'twice');
    expect(other.code).toBe(1);
    expect(other.stderr).toContain('ALREADY_SETTLED');
    expect(other.stderr).toContain(`resolved by "${OPERATOR}": ${JSON.stringify(reason)}`);
    // One resolve in the history.
    const journal = SqliteJournal.open({ path: journalPath, readonly: true });
    try {
      const history = journal.history({ scope: 'ops', key: 'stalled-1' });
      expect(history.filter((e) => e.to === 'failed')).toHaveLength(1);
    } finally {
      journal.close();
    }
  }, 90_000);

  it('a failed sync (EIO): answered as taken effect and not yet on disk, never as refused', async () => {
    const reason = 'valve removed; checked by hand';
    // A double for the one fault no real part here can produce on demand: an fdatasync that
    // fails with EIO (a disk's write error). Only the next call fails; the journal's next
    // barrier syncs again (group-commit.ts) and succeeds.
    const disk = failFdatasync(1);
    let first: CliRun;
    try {
      first = await cli('resolve', 'failed-1', '--as', 'failed', '--reason', reason);
    } finally {
      disk.restore();
    }
    expect(disk.failures).toBe(1);
    expect(first.code).toBe(1);
    expect(first.stdout).toMatch(/^RESOLVED, NOT YET ON DISK by /);
    expect(first.stdout).toContain('not on disk yet: journal unavailable (sync): EIO');
    expect(first.stderr).not.toContain('refused');
    expect(onFile('failed-1')).toMatchObject({ state: 'failed', code: 'RESOLVED_BY_OPERATOR' });

    const again = await cli('resolve', 'failed-1', '--as', 'failed', '--reason', reason);
    expect(again.code).toBe(0);
    expect(again.stdout).toContain('already resolved by this same request at');
    expect(again.stdout).toContain('it is on disk');
  }, 90_000);

  it('of a command whose write was withdrawn unsent: the outcome says nothing was applied', async () => {
    // Its device is no longer configured, so nothing took it up since the stop that withdrew
    // its write; the history says the write never left the daemon.
    const resolved = await cli('resolve', 'unsent-1', '--as', 'failed', '--reason', 'valve gone');
    expect(resolved.code).toBe(0);
    expect(onFile('unsent-1')).toMatchObject({ state: 'failed', code: 'RESOLVED_BY_OPERATOR' });
    expect(onFile('unsent-1').detail).toBe(
      `resolved by "${OPERATOR}": "valve gone"; the operator's action wrote nothing to the controller, and the command's write (sequence number 7) was withdrawn before it was sent (its history says so): nothing was applied`,
    );
  }, 60_000);

  it('of a command whose write found no connection and waited for one: the outcome says it was never sent', async () => {
    const resolved = await cli('resolve', 'unsent-2', '--as', 'failed', '--reason', 'valve gone');
    expect(resolved.code).toBe(0);
    expect(onFile('unsent-2')).toMatchObject({ state: 'failed', code: 'RESOLVED_BY_OPERATOR' });
    // Before: "… was withdrawn before it was sent", which it was not.
    expect(onFile('unsent-2').detail).toBe(
      `resolved by "${OPERATOR}": "valve gone"; the operator's action wrote nothing to the controller, and the command's write (sequence number 8) found no connection to the controller and was never sent (its history says so): nothing was applied`,
    );
  }, 60_000);
});
