import type { ExpectStatic, TestContext } from 'vitest';
import type { CommandRecord } from '../../src/core/journal.js';
import { withheldNote } from '../../src/core/redispatch.js';
import { failFdatasync, type FailingFdatasync } from './failing-fdatasync.js';
import { SimHarness } from './sim-harness.js';

/** The guard of withheldHarness: far longer than a command takes, so a wait for it stands out. */
export const GUARD_MS = 2_000;

/** The open withheld in these tests. */
export const OPEN = { key: 'a', action: 'open' } as const;

/**
 * sluice-sim and the pipeline for a withheld command's tests, closed when the test finishes: a
 * warm valve, the guard GUARD_MS, and no idle monitor (the one read held first is the withheld
 * command's fresh read); `sweepMs` far apart keeps a command left open from being taken up.
 */
export async function withheldHarness(
  onTestFinished: TestContext['onTestFinished'],
  o: { readonly travelMs?: number; readonly sweepMs?: number } = {},
): Promise<SimHarness> {
  const h = await SimHarness.start({
    warm: true,
    timing: { redispatchGuardMs: GUARD_MS, confirmTimeoutMs: 2 * GUARD_MS },
    ...(o.travelMs === undefined ? {} : { travelMs: o.travelMs }),
    ...(o.sweepMs === undefined ? {} : { sweepMs: o.sweepMs }),
  });
  onTestFinished(() => h.close());
  return h;
}

/**
 * A command of v1 (`key`: an open, or a stop) whose write is withheld: its dispatch's barrier
 * fails (an fdatasync failing with EIO, the one fault no real part here produces on demand; the
 * journal fails every barrier until it has recovered, a second later), so it is never sent. The
 * sweep then takes it up, its take-up saying so in its history ("never sent by this process"),
 * to decide it again on a fresh read and write it (src/core/execution.ts, writeWithheld; a
 * command to be left unwritten wants its reads dropped).
 * From the failed flush on the valve answers its reads, or drops them (`readsAfter`). Returns
 * its record. The harness must run no idle monitor: the one read held first is the command's
 * fresh read.
 */
export async function withheldAndTakenUp(
  h: SimHarness,
  onTestFinished: TestContext['onTestFinished'],
  command: { readonly key: string; readonly action: 'open' | 'stop' },
  readsAfter: 'answered' | 'dropped',
): Promise<CommandRecord> {
  const withheld = await withheldOnly(h, onTestFinished, command, readsAfter);
  const note = withheldNote(withheld.seq!, true, 'decided again', command.action);
  await h.until(
    () => h.notes(command.key).includes(`dispatched: ${note}`),
    5_000,
    'the take-up of the withheld write',
  );
  return withheld;
}

/** withheldAndTakenUp up to the dispatch: the command's write withheld, not yet taken up. */
export async function withheldOnly(
  h: SimHarness,
  onTestFinished: TestContext['onTestFinished'],
  command: { readonly key: string; readonly action: 'open' | 'stop' },
  readsAfter: 'answered' | 'dropped',
): Promise<CommandRecord> {
  // The fresh read is held until the next barrier's flush is set to fail: the dispatch's.
  h.device('v1').setFault({ kind: 'stall', on: 'read', count: 1 });
  h.submit(command.key, { device: 'v1', action: command.action, ttlMs: 20_000 });
  return (await dispatchFlushFailed(h, onTestFinished, command.key, readsAfter)).record;
}

/**
 * The dispatch of v1's command `key` made to fail at its barrier, from a fresh read of v1 the
 * caller has held with a stall fault (set before the read is asked: a command submitted, or an
 * accepted one taken up by a restart): once the read is held, the claim is made durable, the
 * next flush is set to fail (the dispatch's), the read is let go; then the failed flush and the
 * dispatch's sequence number are waited for. From the failed flush on the valve answers its
 * reads, or drops them (`readsAfter`). Returns the command's record and the failing flush, which
 * the test may restore before it ends (it is restored when the test finishes).
 */
export async function dispatchFlushFailed(
  h: SimHarness,
  onTestFinished: TestContext['onTestFinished'],
  key: string,
  readsAfter: 'answered' | 'dropped',
): Promise<{ readonly record: CommandRecord; readonly disk: FailingFdatasync }> {
  const valve = h.device('v1');
  await h.until(
    () => !valve.faults().some((f) => f.kind === 'stall' && (f.remaining ?? 1) > 0),
    5_000,
    'the fresh read held',
  );
  // The claim is on disk: the flush that fails is the dispatch's.
  await h.journal.durable();
  const disk = failFdatasync(1);
  onTestFinished(() => {
    disk.restore();
  });
  valve.clearFault('stall');
  await h.until(() => disk.failures === 1, 5_000, 'the failed flush');
  if (readsAfter === 'dropped') valve.setFault({ kind: 'drop', on: 'read' });
  await h.until(() => h.get(key)?.seq != null, 5_000, 'the dispatch');
  return { record: h.get(key)!, disk };
}

/** Waits until the device's worker has left `key` open to the sweep (not taken up yet). */
export async function leftToTheSweep(h: SimHarness, key: string): Promise<void> {
  await h.until(
    () => h.pipeline.devices().find((d) => d.id === 'v1')?.unresolved === key,
    5_000,
    `the withheld ${key} left to the sweep`,
  );
}

/**
 * `a`, withheld and taken up with its reads dropped (withheldAndTakenUp), dispatched a second
 * time by its take-up once its fresh read is answered (the reads let go here): that write is
 * held on the PLC's link and its answer lost (the request times out and the driver replaces its
 * connection). Returns once the connection is replaced and the worker holds the write's outcome
 * unknown, the write still on the link.
 */
export async function redispatchedAnswerLost(h: SimHarness, guardMs: number): Promise<void> {
  const valve = h.device('v1');
  const epoch = h.pipeline.devices().find((d) => d.id === 'v1')!.health.connectionEpoch;
  valve.setFault({ kind: 'stall', on: 'write', count: 1 });
  valve.clearFault('drop');
  await h.until(() => h.get('a')?.attempts === 2, 3 * guardMs, 'the second dispatch');
  await h.until(
    () => !valve.faults().some((f) => f.kind === 'stall' && (f.remaining ?? 1) > 0),
    5_000,
    'the second write held on the link',
  );
  await h.until(
    () => h.pipeline.devices().find((d) => d.id === 'v1')!.health.connectionEpoch > epoch,
    5_000,
    'the connection replaced after the lost answer',
  );
  // The worker learns of the lost answer from the write's own rejection, which can come after
  // the driver has replaced its connection: until then the write is still on its way to it.
  const lanes = (
    h.pipeline as unknown as {
      lanes: Map<string, { lastWrite: { key: string; unknownSinceMono: number | null } | null }>;
    }
  ).lanes;
  await h.until(
    () => {
      const last = lanes.get('v1')?.lastWrite;
      return last?.key === 'a' && last.unknownSinceMono !== null;
    },
    5_000,
    "the second write's outcome unknown to the worker",
  );
}

/**
 * v1's open `key`, written and acknowledged, held by the controller (a hold fault keeps the write
 * from its scans, not the reply): the daemon has the controller's answer, so a resolve of it
 * says the write was acknowledged, what the next command and the next life go by. The hold stays
 * until the test clears it.
 */
export async function heldAcknowledgedOpen(h: SimHarness, key: string): Promise<void> {
  const valve = h.device('v1');
  valve.setFault({ kind: 'hold' });
  h.submit(key, { device: 'v1', action: 'open', ttlMs: 60_000 });
  await h.until(() => valve.pendingWrites === 1, 5_000, 'the open held by the controller');
  const lanes = (
    h.pipeline as unknown as { lanes: Map<string, { lastWrite: { acked: boolean } | null }> }
  ).lanes;
  await h.until(() => lanes.get('v1')?.lastWrite?.acked === true, 5_000, 'the open acknowledged');
}

/**
 * The close `c` on v1, submitted while the controller still holds the open `p`
 * (heldAcknowledgedOpen): it waits for the open (its history says "not decided yet") and is
 * written once the hold ends, decided on the image that shows the open taken. Ground truth: the
 * valve CLOSED, the close confirmed and no no-op, the write log [open, close]. The I2 failure
 * each caller guards against: the close confirmed a no-op at CLOSED while the controller held
 * the open, which it then took (the valve OPEN).
 */
export async function closeWaitsForHeldOpen(
  h: SimHarness,
  expect: ExpectStatic,
  // How the close is sent: at once, or again until the gateway takes it.
  submit: (close: Parameters<SimHarness['submit']>[1]) => unknown = (close) => h.submit('c', close),
): Promise<void> {
  const valve = h.device('v1');
  expect(valve.snapshot().state).toBe('CLOSED');
  await submit({ device: 'v1', action: 'close', ttlMs: 60_000 });
  await h.until(
    () => {
      const c = h.get('c');
      if (c !== undefined && c.state !== 'accepted' && c.state !== 'dispatched') return true;
      return h.notes('c').some((n) => n.includes('not decided yet'));
    },
    5_000,
    'the close waiting, or ended',
  );
  const early = h.get('c');
  valve.clearFault('hold');
  await h.until(() => valve.pendingWrites === 0, 5_000, 'the held open taken');
  const c = await h.settled('c', 4 * GUARD_MS);
  await h.until(
    () => ['OPEN', 'CLOSED'].includes(valve.snapshot().state) && valve.pendingWrites === 0,
    10_000,
    'the valve at rest',
  );
  expect({ valve: valve.snapshot().state, close: c.state }).toEqual({
    valve: 'CLOSED',
    close: 'confirmed',
  });
  expect(c.detail ?? '').not.toMatch(/no-op/);
  // While the controller held the open, the close waited for it.
  expect(early?.state).toBe('accepted');
  expect(h.notes('c').some((n) => n.includes('not decided yet'))).toBe(true);
  expect(valve.writeLog.map((w) => w.seq)).toEqual([h.get('p')!.seq, c.seq]);
}
