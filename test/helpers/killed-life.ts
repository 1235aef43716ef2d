import { afterEach, expect } from 'vitest';
import { killJournal, SimHarness, type SimHarnessOptions } from './sim-harness.js';
import type { WriteLogEntry } from '../../simulators/write-log.js';
import type { CommandRecord } from '../../src/core/journal.js';

/**
 * The restart tests' set-up: a SimHarness life ended at once, as SIGKILL ends the daemon (its
 * journal closed with its open batch lost, killJournal; its workers and connections left to
 * die), and the next built on the same journal file. SimHarness.crash() waits for the request
 * in flight to time out, as no SIGKILL does.
 */
export interface KilledLives {
  /** SimHarness.start, the harness closed after the test (once the killed life has died). */
  start(options: SimHarnessOptions): Promise<SimHarness>;
  /**
   * Ends the life at once. The old life's workers and connections go on waiting for the request
   * in flight, with no journal to write: nothing more of theirs reaches the controller (a second
   * write is journaled first). Returns their end, also awaited after the test.
   */
  kill(harness: SimHarness): Promise<unknown>;
  /** kill(), then the next life on the same journal, with `change` (reconfigure) when given. */
  killAndRestart(harness: SimHarness, change?: Partial<SimHarnessOptions>): Promise<void>;
}

/** Registers the afterEach that awaits the killed life and closes the test's harness. */
export function killedLives(): KilledLives {
  let harness: SimHarness | undefined;
  let dying: Promise<unknown> | null = null;
  afterEach(async () => {
    await dying;
    dying = null;
    await harness?.close();
    harness = undefined;
  });
  const kill = (h: SimHarness): Promise<unknown> => {
    killJournal(h.journal);
    dying = Promise.all([h.pipeline.stop(0), h.drivers.close()]).catch(() => undefined);
    return dying;
  };
  return {
    async start(options) {
      harness = await SimHarness.start(options);
      return harness;
    },
    kill,
    async killAndRestart(h, change) {
      void kill(h);
      if (change !== undefined) h.reconfigure(change);
      await h.restart();
    },
  };
}

/** The one write of `seq` in `log` (expected exactly one). */
export function writeOf(log: readonly WriteLogEntry[], seq: number | null): WriteLogEntry {
  const writes = log.filter((w) => w.seq === seq);
  expect(writes).toHaveLength(1);
  return writes[0]!;
}

/**
 * Holds `key`'s write on the link to `device` for `ms` (sluice-sim's latency fault, cleared
 * once the write is on its way, so later writes pass at once): returns once it is on the link.
 */
export async function heldOnLink(
  h: SimHarness,
  device: string,
  ms: number,
  key: string,
  command: Parameters<SimHarness['submit']>[1],
): Promise<void> {
  const sim = h.device(device);
  sim.setFault({ kind: 'latency', ms, on: 'write', when: 'before' });
  h.submit(key, command);
  await h.until(() => sim.writers.length === 1, 5_000, `the ${key} on the link`);
  sim.clearFault('latency');
}

/**
 * Waits for `device`'s write at the PLC, then for a readback answered after it: asked after the
 * write's answer came (one connection, one request at a time), so the daemon knows the write
 * acknowledged.
 */
export async function acknowledgedSeen(h: SimHarness, device: string): Promise<void> {
  const sim = h.device(device);
  await h.until(() => sim.writeLog.length === 1, 5_000, 'the open at the PLC');
  const atPlc = Date.now();
  await h.until(
    () => (h.pipeline.device(device)?.readbackAgeMs ?? Infinity) < Date.now() - atPlc,
    5_000,
    'a readback after the acknowledged write',
  );
}

/**
 * The stop across a restart: a1's move to 80 % (deadline 10 s) held on the link for `linkMs`,
 * the life ended by `restart` while it is on its way, and a stop submitted at once after it.
 * Returns both settled, once the move has been taken (it lands whatever the daemon did).
 */
export async function stopAfterHeldMove(
  h: SimHarness,
  linkMs: number,
  restart: (harness: SimHarness) => Promise<void>,
): Promise<{ stop: CommandRecord; move: CommandRecord }> {
  const a1 = h.device('a1');
  await heldOnLink(h, 'a1', linkMs, 'move', {
    device: 'a1',
    action: 'move',
    position: 80,
    ttlMs: 10_000,
  });
  await restart(h);
  h.submit('stop', { device: 'a1', action: 'stop', ttlMs: 10_000 });
  const stop = await h.settled('stop', 15_000);
  const move = await h.settled('move', 15_000);
  await h.until(
    () => a1.writeLog.some((w) => w.seq === move.seq && w.settledAt !== null),
    5_000,
    'the move taken',
  );
  return { stop, move };
}

/**
 * The open across a restart: v1's open (deadline 10 s) held on the link for `linkMs`, the life
 * ended by `restart` while it is on its way. Returns the open settled, once its write has
 * landed.
 */
export async function heldOpenSettled(
  h: SimHarness,
  linkMs: number,
  restart: (harness: SimHarness) => Promise<void>,
): Promise<CommandRecord> {
  const v1 = h.device('v1');
  await heldOnLink(h, 'v1', linkMs, 'open', { device: 'v1', action: 'open', ttlMs: 10_000 });
  await restart(h);
  const open = await h.settled('open', 15_000);
  await h.until(
    () => v1.writeLog.some((w) => w.seq === open.seq && w.heldOnLinkMs !== undefined),
    5_000,
    'the first write landed',
  );
  return open;
}
