import { join } from 'node:path';
import { describe, it, type TestContext } from 'vitest';
import { systemClock, type Clock } from '../../src/core/clock.js';
import type { CommandRecord, Observation } from '../../src/core/journal.js';
import { LateEcho } from '../../src/core/late-echo.js';
import { silentLogger } from '../../src/core/logger.js';
import { withheldNote } from '../../src/core/redispatch.js';
import type { TimedReadback } from '../../src/core/skew.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { failFdatasync } from '../helpers/failing-fdatasync.js';
import { tempDir } from '../helpers/fixtures.js';
import { lockHolder } from '../helpers/journal-lock.js';
import { recordingLogger } from '../helpers/recording-logger.js';
import { SimHarness, type SimHarnessOptions } from '../helpers/sim-harness.js';
import { holdThreadPool } from '../helpers/thread-pool.js';

/**
 * A command that ended `failed` with its write in doubt keeps its outcome, but a later readback
 * that shows its sequence number echoed is noted in its history: the controller took the write
 * after all (src/core/late-echo.ts). The real pipeline and journal against sluice-sim; the
 * simulator's write log says when the controller took the write, the journal's history what
 * the daemon said of it.
 */

async function harness(
  onTestFinished: TestContext['onTestFinished'],
  options: Omit<SimHarnessOptions, 'monitorMs'> & { readonly monitorMs?: number | null } = {},
): Promise<SimHarness> {
  // The idle monitor reads the device between commands, as the daemon does (null: none).
  const { monitorMs = 50, ...rest } = options;
  const h = await SimHarness.start({
    warm: true,
    timing: { confirmTimeoutMs: 800 },
    ...rest,
    ...(monitorMs === null ? {} : { monitorMs }),
  });
  onTestFinished(() => h.close());
  return h;
}

/**
 * An open (or `action`) of v1 that ends `READBACK_TIMEOUT` with its write in doubt: the controller
 * acknowledges the write and takes it only later (a PLC busy in its scan, the simulator's
 * `hold`), so no readback within the confirm window shows the command's echo. The hold stays.
 */
async function heldAndFailed(
  h: SimHarness,
  key: string,
  action: 'open' | 'close' = 'open',
): Promise<CommandRecord> {
  h.device('v1').setFault({ kind: 'hold', ms: 60_000 });
  h.submit(key, { device: 'v1', action, ttlMs: 5_000 });
  const r = await h.settled(key);
  if (r.state !== 'failed' || r.code !== 'READBACK_TIMEOUT') {
    throw new Error(`${key} ended ${r.state} ${r.code ?? ''}, not failed READBACK_TIMEOUT`);
  }
  return r;
}

/**
 * An open of v1 whose valve takes the write and does not move (`stuck-travel`: the readbacks
 * show its echo, OPENING), resolved by an operator once a readback has shown the echo. The
 * fault stays. Returns the command's sequence number.
 */
async function stuckAndResolved(h: SimHarness, key: string): Promise<number> {
  h.device('v1').setFault({ kind: 'stuck-travel' });
  h.submit(key, { device: 'v1', action: 'open', ttlMs: 5_000 });
  await h.until(() => h.get(key)?.seq != null, 5_000, 'the dispatch');
  const seq = h.get(key)!.seq!;
  await h.until(
    () => h.pipeline.devices().find((d) => d.id === 'v1')?.mirror?.seq === seq,
    5_000,
    'a readback showing the echo',
  );
  h.pipeline.resolve({ scope: 'plant', key }, 'ops', 'valve stuck, checked on site');
  const resolved = h.get(key);
  if (resolved?.state !== 'failed' || resolved.code !== 'RESOLVED_BY_OPERATOR') {
    throw new Error(`${key} is ${resolved?.state ?? 'gone'}, not failed RESOLVED_BY_OPERATOR`);
  }
  return seq;
}

/**
 * Waits for a readback of v1 showing `seq` that the pipeline received more than 200 ms after
 * `after` (epoch ms): a note would have been journaled as it arrived, so a note still missing
 * then was not made.
 */
async function echoReadAfter(
  h: SimHarness,
  seq: number,
  after: number,
  what: string,
): Promise<void> {
  await h.until(
    () => {
      const mirror = h.pipeline.devices().find((d) => d.id === 'v1')?.mirror;
      return mirror?.seq === seq && mirror.receivedAt > after + 200;
    },
    5_000,
    what,
  );
}

/**
 * Another master's stop that carries sequence number `seq`, taken by v1's controller, and a
 * readback showing its echo received after it (see echoReadAfter).
 */
async function anotherMastersEcho(
  h: SimHarness,
  seq: number,
  what = "the other master's echo read",
): Promise<void> {
  h.device('v1').receiveWrite({ code: 3, setpoint: 0, seq });
  await echoReadAfter(h, seq, Date.now(), what);
}

/**
 * An open of v1, key k1 (TTL 10 s), whose first write is lost on the link: the connection reset
 * before the write reaches the PLC, its outcome unknown to the pipeline.
 */
async function firstWriteLost(h: SimHarness): Promise<void> {
  const valve = h.device('v1');
  valve.setFault({ kind: 'reset', when: 'before', on: 'write', count: 1 });
  h.submit('k1', { device: 'v1', action: 'open', ttlMs: 10_000 });
  await h.until(
    () => !valve.faults().some((f) => f.kind === 'reset'),
    5_000,
    'the first write lost',
  );
}

/** The late-echo notes in the history of `key`. */
function lateNotes(h: SimHarness, key = 'k1'): string[] {
  return h.notes(key).filter((n) => n.includes('a later readback'));
}

/**
 * An open of v1, key k1, whose write is withheld: its dispatch's barrier fails (an fdatasync
 * failing with EIO, the one fault no real part here produces on demand; the journal fails every
 * barrier until it has recovered, a second later), so it is never sent. From then on the device
 * answers no read, so that its take-up after the journal's recovery sees nothing. For a harness
 * with no idle monitor: the one read held first is the command's fresh read.
 */
async function withheldOpen(
  h: SimHarness,
  onTestFinished: TestContext['onTestFinished'],
  ttlMs: number,
): Promise<void> {
  const valve = h.device('v1');
  valve.setFault({ kind: 'stall', on: 'read', count: 1 });
  h.submit('k1', { device: 'v1', action: 'open', ttlMs });
  await h.until(
    () => !valve.faults().some((f) => f.kind === 'stall' && (f.remaining ?? 1) > 0),
    5_000,
    'the fresh read held',
  );
  const disk = failFdatasync(1);
  onTestFinished(() => {
    disk.restore();
  });
  valve.clearFault('stall');
  await h.until(() => disk.failures === 1, 5_000, 'the failed flush');
  valve.setFault({ kind: 'drop', on: 'read' });
}

const LATE =
  /^a later readback shows its sequence number (\d+) echoed: the controller took its write, which no readback had shown before the command ended READBACK_TIMEOUT; the device shows (OPENING|OPEN)( at [\d.]+ %)? \(image of .+, controller clock\)$/;

describe.concurrent(
  'a command ended with its write in doubt, taken by the controller later',
  () => {
    it('is noted in its history at the first readback that shows its echo; its outcome stays', async ({
      expect,
      onTestFinished,
    }) => {
      const h = await harness(onTestFinished);
      const valve = h.device('v1');
      const r = await heldAndFailed(h, 'k1');
      expect(valve.writesWithSeq(r.seq!)).toBe(1);
      expect(lateNotes(h)).toEqual([]);

      // The controller takes the held write at its next scan.
      valve.clearFault('hold');
      await h.until(
        () => h.notes('k1').some((n) => n.includes('a later readback')),
        5_000,
        'the late echo noted',
      );
      const taken = valve.writeLog.find((w) => w.seq === r.seq);
      expect(taken?.outcome).toBe('accepted');
      const notes = h.notes('k1').filter((n) => n.includes('a later readback'));
      expect(notes).toHaveLength(1);
      const [, seq] = LATE.exec(notes[0]!.replace(/^failed: /, '')) ?? [];
      expect(Number(seq)).toBe(r.seq);
      // Its outcome as journaled and published: unchanged.
      expect(h.get('k1')).toMatchObject({ state: 'failed', code: 'READBACK_TIMEOUT' });
      expect(h.get('k1')?.response).toBe(r.response);

      // Noted once: the next readbacks show the same echo.
      await echoReadAfter(h, r.seq!, Date.now(), 'the echo read again after the note');
      expect(h.notes('k1').filter((n) => n.includes('a later readback'))).toHaveLength(1);
    });

    it("a write the controller never took is not noted, nor the next command's echo taken for it", async ({
      expect,
      onTestFinished,
    }) => {
      const h = await harness(onTestFinished);
      const valve = h.device('v1');
      const first = await heldAndFailed(h, 'k1');
      // The held write is discarded by a power cycle: the controller never takes it.
      h.plant.plc('mb').applyPowerCycle({ offMs: 0 });
      valve.clearFault('hold');
      expect(valve.writeLog.find((w) => w.seq === first.seq)?.outcome).toBe('power-cycle');
      h.submit('k2', { device: 'v1', action: 'open', ttlMs: 5_000 });
      const second = await h.settled('k2');
      expect(second).toMatchObject({ state: 'confirmed' });
      expect(valve.writesWithSeq(second.seq!)).toBe(1);
      // Readbacks after the second command showing its echo: none noted on the first.
      await echoReadAfter(h, second.seq!, Date.now(), "the second command's echo read again");
      expect(lateNotes(h)).toEqual([]);
    });

    it('an echo read while the command was open is not noted: a stuck valve an operator resolved', async ({
      expect,
      onTestFinished,
    }) => {
      const h = await harness(onTestFinished, { timing: { confirmTimeoutMs: 30_000 } });
      const valve = h.device('v1');
      const seq = await stuckAndResolved(h, 'k1');
      const resolvedAt = Date.now();
      // Readbacks received well after the resolve (a note would be journaled as one arrives),
      // showing the same echo: nothing noted.
      await echoReadAfter(h, seq, resolvedAt, 'the echo read again after the resolve');
      expect(lateNotes(h)).toEqual([]);
      valve.clearFault('stuck-travel');
    });

    it('an echo read while the command was open is not noted after a restart either: the resolve is not taken up', async ({
      expect,
      onTestFinished,
    }) => {
      const h = await harness(onTestFinished, { timing: { confirmTimeoutMs: 30_000 } });
      const valve = h.device('v1');
      const seq = await stuckAndResolved(h, 'k1');
      // The journaled outcome keeps the readback from before the write: the restart cannot
      // tell from it that the echo had been read while the command was open.
      expect(h.get('k1')?.observed?.seq).not.toBe(seq);
      // The resolve on disk before the crash (it loses the open batch): the next life finds it.
      await h.journal.durable();
      await h.crash();
      await h.restart();
      const restartedAt = Date.now();
      // The premise: the next life found the resolve (a resolve lost with the crash leaves the
      // command open, and no note is made of an open command's echo either).
      expect(h.get('k1')).toMatchObject({ state: 'failed', code: 'RESOLVED_BY_OPERATOR' });
      // Readbacks of the new life, well after its start, showing the same echo: nothing noted.
      await echoReadAfter(h, seq, restartedAt, 'the echo read again after the restart');
      expect(lateNotes(h)).toEqual([]);
      valve.clearFault('stuck-travel');
    });

    it("a write never sent is not noted when another master's write echoes its number", async ({
      expect,
      onTestFinished,
    }) => {
      const h = await harness(onTestFinished);
      const valve = h.device('v1');
      // The controller answers every write busy (Modbus exception 0x06): the command's write
      // is never processed, and waits to be sent again when the operator resolves it.
      valve.setFault({ kind: 'exception', code: 6, on: 'write' });
      h.submit('k1', { device: 'v1', action: 'open', ttlMs: 20_000 });
      await h.until(
        () => h.notes('k1').some((n) => n.includes('answered busy')),
        5_000,
        'a busy answer to the write',
      );
      const seq = h.get('k1')!.seq!;
      h.pipeline.resolve({ scope: 'plant', key: 'k1' }, 'ops', 'PLC busy, done by hand');
      expect(h.get('k1')).toMatchObject({ state: 'failed', code: 'RESOLVED_BY_OPERATOR' });
      await h.until(
        () => h.notes('k1').some((n) => n.includes('was not sent')),
        5_000,
        'the history saying the write was never sent',
      );
      valve.clearFault('exception');
      expect(valve.writeLog.filter((w) => w.seq === seq).map((w) => w.outcome)).not.toContain(
        'accepted',
      );
      // Another master's stop that happens to carry the same sequence number, taken.
      valve.receiveWrite({ code: 3, setpoint: 0, seq });
      const takenAt = Date.now();
      await h.until(
        () => {
          const mirror = h.pipeline.devices().find((d) => d.id === 'v1')?.mirror;
          return mirror?.seq === seq && mirror.receivedAt > takenAt + 200;
        },
        5_000,
        "the other master's echo read",
      );
      expect(lateNotes(h)).toEqual([]);
    });

    it("a write proven not applied is not noted when another master's write echoes its number", async ({
      expect,
      onTestFinished,
    }) => {
      const h = await harness(onTestFinished);
      const valve = h.device('v1');
      // Every write is lost on the link (the connection reset before it reaches the PLC: its
      // outcome unknown); the readbacks past the redispatch guard prove the first not applied,
      // and then the second, which is not sent again.
      valve.setFault({ kind: 'reset', when: 'before', on: 'write', count: 5 });
      h.submit('k1', { device: 'v1', action: 'open', ttlMs: 10_000 });
      const r = await h.settled('k1');
      expect(r).toMatchObject({ state: 'failed', code: 'DEVICE_UNREACHABLE', attempts: 2 });
      expect(r.detail).toMatch(
        /^the write never reached the controller: .*; it was already dispatched twice, so it is not sent again; nothing was applied$/,
      );
      expect(valve.writeLog.filter((w) => w.seq === r.seq && w.outcome === 'accepted')).toEqual([]);
      // Another master's stop that carries the same sequence number, taken.
      await anotherMastersEcho(h, r.seq!);
      expect(lateNotes(h)).toEqual([]);
    });

    it("a second write withdrawn by a stop that was never written is not noted when another master's write echoes its number", async ({
      expect,
      onTestFinished,
    }) => {
      const h = await harness(onTestFinished);
      const valve = h.device('v1');
      // The first write is lost on the link (the connection reset before it reaches the PLC)
      // and proven not applied past the guard; the second is answered busy (0x06), and waits
      // to be sent again.
      await firstWriteLost(h);
      valve.setFault({ kind: 'exception', code: 6, on: 'write' });
      await h.until(
        () => h.get('k1')?.attempts === 2 && h.notes('k1').some((n) => n.includes('answered busy')),
        5_000,
        'the second write answered busy',
      );
      const seq = h.get('k1')!.seq!;
      // A stop preempts it and withdraws the second write; the stop itself is never written
      // (the device answers none of its reads before its deadline).
      valve.setFault({ kind: 'drop', on: 'read' });
      h.submit('s1', { device: 'v1', action: 'stop', ttlMs: 1_500 });
      const stop = await h.settled('s1');
      expect(stop).toMatchObject({ state: 'failed', code: 'DEVICE_UNREACHABLE', seq: null });
      valve.clearFault('drop');
      // Dispatched twice, its second write never sent: not sent again, nothing was applied.
      const r = await h.settled('k1');
      expect(r).toMatchObject({ state: 'failed', code: 'DEVICE_UNREACHABLE', attempts: 2 });
      expect(r.detail).toMatch(/nothing was applied$/);
      valve.clearFault('exception');
      expect(valve.writeLog.filter((w) => w.seq === seq && w.outcome === 'accepted')).toEqual([]);
      // Another master's stop that carries the same sequence number, taken.
      await anotherMastersEcho(h, seq);
      expect(lateNotes(h)).toEqual([]);
    });

    it('is noted after a restart too: the watch is taken up from the journal', async ({
      expect,
      onTestFinished,
    }) => {
      const h = await harness(onTestFinished);
      const valve = h.device('v1');
      const r = await heldAndFailed(h, 'k1');
      await h.crash();
      valve.clearFault('hold');
      await h.until(
        () => valve.writeLog.find((w) => w.seq === r.seq)?.outcome === 'accepted',
        5_000,
        'the held write taken while the daemon was down',
      );
      await h.restart();
      await h.until(
        () => h.notes('k1').some((n) => n.includes('a later readback')),
        5_000,
        'the late echo noted after the restart',
      );
      expect(h.get('k1')).toMatchObject({ state: 'failed', code: 'READBACK_TIMEOUT' });
    });

    it('is noted once, not again after a restart while the device still shows the echo', async ({
      expect,
      onTestFinished,
    }) => {
      const h = await harness(onTestFinished);
      const valve = h.device('v1');
      const r = await heldAndFailed(h, 'k1');
      valve.clearFault('hold');
      await h.until(
        () => h.notes('k1').some((n) => n.includes('a later readback')),
        5_000,
        'the late echo noted',
      );
      for (let life = 0; life < 2; life++) {
        // The note on disk before the crash (it loses the open batch): a note lost with the
        // crash would be made again by the next life, and "not again" would go untested.
        await h.journal.durable();
        await h.crash();
        await h.restart();
        await echoReadAfter(h, r.seq!, Date.now(), 'the echo read after the restart');
      }
      expect(h.notes('k1').filter((n) => n.includes('a later readback'))).toHaveLength(1);
    });

    it("is taken up after a restart however many of the device's newest commands were never dispatched", async ({
      expect,
      onTestFinished,
    }) => {
      const h = await harness(onTestFinished);
      const valve = h.device('v1');
      const r = await heldAndFailed(h, 'k1');
      // Commands of v1 issued an hour ago, refused as stale: newer than k1, never dispatched
      // (the start looked at the device's 20 newest commands for a dispatched one).
      const issuedAt = new Date(Date.now() - 3_600_000).toISOString();
      for (let i = 0; i < 25; i++) {
        h.submit(`stale-${i}`, { device: 'v1', action: 'close', ttlMs: 5_000, issuedAt });
        const stale = await h.settled(`stale-${i}`);
        expect(stale).toMatchObject({ state: 'rejected', code: 'STALE_COMMAND', seq: null });
      }
      await h.crash();
      valve.clearFault('hold');
      await h.until(
        () => valve.writeLog.find((w) => w.seq === r.seq)?.outcome === 'accepted',
        5_000,
        'the held write taken while the daemon was down',
      );
      await h.restart();
      await h.until(
        () => h.notes('k1').some((n) => n.includes('a later readback')),
        5_000,
        'the late echo noted after the restart',
      );
      expect(h.notes('k1').filter((n) => n.includes('a later readback'))).toHaveLength(1);
    });

    it("is taken up after a restart by the device's last dispatch, not by the latest dispatchedAt: a step of the gateway's clock", async ({
      expect,
      onTestFinished,
    }) => {
      const shift = { wall: 0 };
      const clock: Clock = { ...systemClock, now: () => systemClock.now() + shift.wall };
      const h = await harness(onTestFinished, { clock });
      const valve = h.device('v1');
      // The gateway's clock an hour ahead for a first command, confirmed; then set right.
      shift.wall = 3_600_000;
      h.submit('k1', { device: 'v1', action: 'open', ttlMs: 5_000 });
      const first = await h.settled('k1');
      expect(first).toMatchObject({ state: 'confirmed' });
      shift.wall = 0;
      const r = await heldAndFailed(h, 'k2', 'close');
      // Its dispatch, the device's last, is journaled an hour before the first's.
      expect(r.dispatchedAt!).toBeLessThan(first.dispatchedAt! - 3_000_000);
      await h.crash();
      valve.clearFault('hold');
      await h.until(
        () => valve.writeLog.find((w) => w.seq === r.seq)?.outcome === 'accepted',
        5_000,
        'the held write taken while the daemon was down',
      );
      await h.restart();
      await h.until(
        () => h.notes('k2').some((n) => n.includes('a later readback')),
        5_000,
        'the late echo noted after the restart',
      );
      expect(lateNotes(h)).toEqual([]);
    });
  },
);

/**
 * Tests that hold libuv's thread pool (a journal barrier that does not return until released,
 * test/helpers/thread-pool.ts): one at a time, since the pool is the process's, and a
 * concurrent test's barriers would wait too.
 */
describe('a command in doubt while a barrier runs', () => {
  it("a write never sent, settled in an earlier life, is not watched after a restart: another master's write with its number is not noted", async ({
    expect,
    onTestFinished,
  }) => {
    const h = await harness(onTestFinished);
    const valve = h.device('v1');
    const plc = h.plant.plc('mb');
    // The dispatch's barrier held: the PLC loses its power meanwhile, and the write, once the
    // dispatch is on disk, finds no connection to go out on; the command waits for one, and
    // the PLC stays off past its deadline.
    const pool = holdThreadPool();
    onTestFinished(() => pool.release());
    h.submit('k1', { device: 'v1', action: 'open', ttlMs: 2_000 });
    await h.until(() => h.get('k1')?.state === 'dispatched', 3_000, 'the dispatch');
    const seq = h.get('k1')!.seq!;
    plc.powerCycle({ offMs: 3_000 });
    const v1 = h.drivers.bindings.find((b) => b.id === 'v1')!;
    await h.until(() => !v1.driver.health().connected, 3_000, 'the connection gone');
    await pool.release();
    const r = await h.settled('k1');
    expect(r).toMatchObject({ state: 'failed', code: 'DEVICE_UNREACHABLE', seq });
    expect(r.detail).toMatch(
      /^the write never reached the controller: its write \(sequence number \d+\) found no connection to the controller, .*nothing was applied/,
    );
    expect(valve.writesWithSeq(seq)).toBe(0);
    await h.crash();
    await h.restart();
    await h.until(() => plc.powered, 5_000, 'the PLC powered again');
    // Another master's stop that carries the same sequence number, taken.
    await anotherMastersEcho(h, seq, "the other master's echo read after the restart");
    expect(lateNotes(h)).toEqual([]);
  });

  it("a write withheld when its dispatch could not be made durable is not noted when another master's write echoes its number, in this life or the next", async ({
    expect,
    onTestFinished,
  }) => {
    // No idle monitor yet: the one read held is the command's fresh read.
    const h = await harness(onTestFinished, { monitorMs: null });
    const valve = h.device('v1');
    // The take-up gets no fresh read to decide the command again on: it ends at its deadline
    // (3 s from the submit, as in the case below, room for the held read and the failed flush
    // before it), never written.
    await withheldOpen(h, onTestFinished, 3_000);
    const r = await h.settled('k1');
    expect(r.state).toBe('failed');
    expect(r.seq).not.toBeNull();
    expect(h.notes('k1')).toContain(`dispatched: ${withheldNote(r.seq!, true, 'decided again')}`);
    expect(valve.writesWithSeq(r.seq!)).toBe(0);
    valve.clearFault('drop');
    h.pipeline.startMonitor(50);
    // Another master's stop that carries the same sequence number, taken.
    await anotherMastersEcho(h, r.seq!);
    expect(lateNotes(h)).toEqual([]);
    // The next life takes the watch up from the journal: the history says the write was
    // withheld, and the echo the device still shows is not noted either.
    await h.crash();
    await h.restart();
    h.pipeline.startMonitor(50);
    await echoReadAfter(h, r.seq!, Date.now(), 'the echo read after the restart');
    expect(lateNotes(h)).toEqual([]);
  });

  it("a write withheld by an earlier life, taken up by the next one, is not noted when another master's write echoes its number", async ({
    expect,
    onTestFinished,
  }) => {
    // No idle monitor: the one read held is the command's fresh read.
    const h = await harness(onTestFinished, { monitorMs: null });
    const valve = h.device('v1');
    // The take-up gets no fresh read, and the process dies while it reads.
    await withheldOpen(h, onTestFinished, 3_000);
    const seq = h.get('k1')!.seq!;
    const withheld = `dispatched: ${withheldNote(seq, true, 'decided again')}`;
    await h.until(
      () => h.notes('k1').includes(withheld),
      5_000,
      'the take-up of the withheld write',
    );
    // On disk before the crash, as a life that runs on has it: the crash loses the open batch,
    // and a next life that never learnt the write was withheld takes it for one maybe sent.
    await h.journal.durable();
    await h.crash();
    // The next life takes it up (the device still answers nothing) and ends it at its
    // deadline, never written: it never had a write, of this life or the last.
    await h.restart();
    const r = await h.settled('k1', 15_000);
    expect(r.state).toBe('failed');
    expect(valve.writesWithSeq(seq)).toBe(0);
    // Its history says what the next life knew: withheld, never sent, not written by it.
    expect(h.notes('k1')).toContain(
      `dispatched: ${withheldNote(seq, 'by an earlier life', 'decided again')}`,
    );
    expect(h.notes('k1').join('\n')).not.toContain('written by an earlier life');
    valve.clearFault('drop');
    h.pipeline.startMonitor(50);
    // Another master's stop that carries the same sequence number, taken.
    await anotherMastersEcho(h, seq);
    expect(lateNotes(h)).toEqual([]);
  });

  it("a write proven not applied, resolved while its second dispatch was being made durable, is not noted when another master's write echoes its number", async ({
    expect,
    onTestFinished,
  }) => {
    const h = await harness(onTestFinished);
    const valve = h.device('v1');
    // The first write is lost on the link (the connection reset before it reaches the PLC);
    // the readbacks past the guard prove it not applied, and a second dispatch is journaled.
    await firstWriteLost(h);
    // Its barrier held: an operator resolves the command before the second write is sent.
    const pool = holdThreadPool();
    onTestFinished(() => pool.release());
    await h.until(() => h.get('k1')?.attempts === 2, 5_000, 'the second dispatch journaled');
    const seq = h.get('k1')!.seq!;
    h.pipeline.resolve({ scope: 'plant', key: 'k1' }, 'ops', 'done by hand');
    await pool.release();
    expect(h.get('k1')).toMatchObject({ state: 'failed', code: 'RESOLVED_BY_OPERATOR' });
    // Neither write reached the controller: the first lost on the link, the second never sent.
    await h.until(() => h.pipeline.devices().find((d) => d.id === 'v1')?.mirror !== null);
    expect(valve.writeLog.filter((w) => w.seq === seq).map((w) => w.outcome)).not.toContain(
      'accepted',
    );
    expect(valve.counters.writesReceived).toBe(0);
    // Another master's stop that carries the same sequence number, taken.
    await anotherMastersEcho(h, seq);
    expect(lateNotes(h)).toEqual([]);
  });

  it('an echo read while its settlement was being made durable is noted once it is: it was read after the command ended', async ({
    expect,
    onTestFinished,
  }) => {
    const h = await harness(onTestFinished);
    const valve = h.device('v1');
    const announced: string[] = [];
    h.pipeline.onSettled((record) => {
      announced.push(record.key);
    });
    valve.setFault({ kind: 'hold', ms: 60_000 });
    h.submit('k1', { device: 'v1', action: 'open', ttlMs: 5_000 });
    // The write has reached the controller (its dispatch's barrier is behind it): the pool
    // held now holds the barrier of its settlement, at the end of its confirm window.
    await h.until(() => valve.counters.writesReceived === 1, 5_000, 'the write received');
    const pool = holdThreadPool();
    onTestFinished(() => pool.release());
    await h.until(() => h.get('k1')?.state === 'failed', 5_000, 'the settlement journaled');
    const r = h.get('k1')!;
    expect(r).toMatchObject({ code: 'READBACK_TIMEOUT' });
    // The controller takes the held write, and a readback shows it, before the settlement is
    // on disk.
    valve.clearFault('hold');
    await h.until(
      () => h.pipeline.devices().find((d) => d.id === 'v1')?.mirror?.seq === r.seq,
      5_000,
      'a readback showing the echo',
    );
    expect(announced).not.toContain('k1');
    await pool.release();
    await h.until(() => announced.includes('k1'), 5_000, 'the settlement announced');
    await h.until(
      () => h.notes('k1').some((n) => n.includes('a later readback')),
      5_000,
      'the late echo noted',
    );
    await echoReadAfter(h, r.seq!, Date.now(), 'the echo read again after the note');
    expect(h.notes('k1').filter((n) => n.includes('a later readback'))).toHaveLength(1);
    expect(h.get('k1')).toMatchObject({ state: 'failed', code: 'READBACK_TIMEOUT' });
  });
});

/** A real journal file for the watch alone, with commands of v1 as the pipeline journals them. */
function journalFixture(
  onTestFinished: TestContext['onTestFinished'],
  busyTimeoutMs?: number,
): {
  journal: SqliteJournal;
  path: string;
  written: (key: string, seq: number) => CommandRecord;
  inDoubt: (key: string) => CommandRecord;
  late: (key: string) => string[];
} {
  const made = tempDir();
  const path = join(made.dir, 'journal.db');
  const journal = SqliteJournal.open({
    path,
    ...(busyTimeoutMs === undefined ? {} : { busyTimeoutMs }),
  });
  onTestFinished(() => {
    journal.close();
    made.cleanup();
  });
  /** A command of v1 written with `seq`. */
  const written = (key: string, seq: number): CommandRecord => {
    const at = Date.now();
    const { record } = journal.claim({
      scope: 'plant',
      key,
      fingerprint: key,
      device: 'v1',
      action: 'open',
      position: null,
      issuedAt: at,
      issuedAtSource: 'gateway',
      ttlMs: 5_000,
      deadline: at + 5_000,
      intake: 'https',
      acceptedAt: at,
    });
    return journal.markDispatched(record, at, observation(1), 'pipeline', () => seq);
  };
  /** It ends with its write in doubt. */
  const inDoubt = (key: string): CommandRecord =>
    journal.settle(journal.get({ scope: 'plant', key })!, 'dispatched', {
      to: 'failed',
      code: 'DEVICE_UNREACHABLE',
      faultCode: null,
      observed: null,
      detail: "no readback after the write within 2000 ms; the command's effect is unknown",
      at: Date.now(),
      intake: 'pipeline',
    });
  const late = (key: string): string[] =>
    journal
      .history({ scope: 'plant', key })
      .map((e) => e.detail)
      .filter((d) => d.startsWith('a later readback'));
  return { journal, path, written, inDoubt, late };
}

describe('the watch of a command in doubt, on the journal', () => {
  it('ends at the next dispatch of the device: a sequence number given again is not the earlier write', ({
    expect,
    onTestFinished,
  }) => {
    const { journal, written, inDoubt, late } = journalFixture(onTestFinished);
    // Every write of this test handed to the driver, as far as the watch asks.
    const echo = new LateEcho({
      journal,
      clock: systemClock,
      logger: silentLogger,
      echoed: () => 1,
      wrote: () => true,
    });
    // k1's write never reached the controller (seq 7); k2 is given 7 again.
    echo.dispatched(written('k1', 7));
    settle(echo, inDoubt('k1'));
    echo.dispatched(written('k2', 7));
    echo.readback('v1', readback(7));
    expect(late('k1')).toEqual([]);

    // Without a later dispatch, the same echo is k3's own late write.
    echo.dispatched(written('k3', 9));
    settle(echo, inDoubt('k3'));
    echo.readback('v1', readback(9));
    expect(late('k3')).toHaveLength(1);
  });

  it('an echo read before the settlement is on disk is not noted on a later settlement of the command (the first lost with its batch)', ({
    expect,
    onTestFinished,
  }) => {
    const { journal, written, inDoubt, late } = journalFixture(onTestFinished);
    const echo = new LateEcho({
      journal,
      clock: systemClock,
      logger: silentLogger,
      echoed: () => 1,
      wrote: () => true,
    });
    echo.dispatched(written('k1', 7));
    const lost = inDoubt('k1');
    echo.journaled(lost);
    // Its echo read while the barrier ran: held until the settlement is on disk.
    echo.readback('v1', readback(7));
    expect(late('k1')).toEqual([]);
    // That barrier fails and the batch is lost: never announced. The command goes on and is
    // confirmed by that very echo; its announcement notes nothing.
    const confirmed: CommandRecord = { ...lost, state: 'confirmed', code: 'OK' };
    echo.journaled(confirmed);
    echo.settled(confirmed);
    echo.readback('v1', readback(7));
    expect(late('k1')).toEqual([]);
  });

  it('a journal that refuses the note is tried again a while later, not at every readback, and said once', async ({
    expect,
    onTestFinished,
  }) => {
    const { journal, path, written, inDoubt, late } = journalFixture(onTestFinished, 50);
    const { logger, lines } = recordingLogger();
    // The monotonic clock, moved on by the test.
    let skipped = 0;
    const clock: Clock = { ...systemClock, elapsed: () => systemClock.elapsed() + skipped };
    const echo = new LateEcho({ journal, clock, logger, echoed: () => 1, wrote: () => true });
    echo.dispatched(written('k1', 7));
    settle(echo, inDoubt('k1'));

    // Another process holds the journal's write lock: the note waits out the busy bound once.
    // Held until the readbacks below are done, not for a fixed time (600 ms), which a loaded
    // machine could spend before the first of them.
    const locker = await lockHolder(path);
    onTestFinished(() => {
      locker.close();
    });
    await locker.hold();
    const tries = (): number =>
      lines.filter((l) => String(l.msg).startsWith('late echo of a command in doubt not journaled'))
        .length;
    // The notes tried on the journal, counted there: timed (five busy waits of 50 ms would
    // take 250 ms), one took longer than that on a loaded machine.
    let noted = 0;
    const note = journal.note.bind(journal);
    journal.note = (...args) => {
      noted++;
      note(...args);
    };
    for (let i = 0; i < 5; i++) echo.readback('v1', readback(7));
    // One try (one busy wait of 50 ms), not five.
    expect(noted, 'notes tried on the journal').toBe(1);
    expect(tries(), 'tries refused for the lock').toBe(1);
    expect(late('k1')).toEqual([]);

    // The lock gone and the retry's time come, the next readback showing the echo notes it.
    await locker.release();
    skipped = 10_000;
    const end = Date.now() + 5_000;
    while (late('k1').length === 0 && Date.now() < end) {
      await new Promise((r) => setTimeout(r, 50));
      echo.readback('v1', readback(7));
    }
    expect(late('k1'), JSON.stringify(lines)).toHaveLength(1);
    expect(tries()).toBe(1);
  });
});

/** A settlement as the pipeline tells the watch of it: journaled, then on disk (announced). */
function settle(echo: LateEcho, record: CommandRecord): void {
  echo.journaled(record);
  echo.settled(record);
}

function observation(seq: number): Observation {
  const at = new Date().toISOString();
  return { state: 'CLOSED', position: 0, seq, faultCode: null, sourceTime: at, readAt: at };
}

function readback(seq: number): TimedReadback {
  const now = performance.now();
  return {
    state: 'OPEN',
    position: 100,
    seq,
    faultCode: null,
    sourceTime: Date.now(),
    sourceIsScan: true,
    requestedAt: Date.now(),
    receivedAt: Date.now(),
    requestedMono: now,
    receivedMono: now,
    epoch: 0,
  };
}
