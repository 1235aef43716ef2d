import { join } from 'node:path';
import { describe, it } from 'vitest';
import { parseCommandRequest } from '../../src/core/command.js';
import { systemClock } from '../../src/core/clock.js';
import type { CommandRecord, CommandRef } from '../../src/core/journal.js';
import { silentLogger, type Logger } from '../../src/core/logger.js';
import { CommandPipeline } from '../../src/core/pipeline.js';
import type { DeviceProfile } from '../../src/core/profile.js';
import { buildDrivers, type Drivers, type Inventory } from '../../src/drivers/inventory.js';
import type { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { startPlant, type Plant } from '../../simulators/plant.js';
import { PROFILES, openJournal, tempDir } from '../helpers/fixtures.js';
import { TcpLink } from '../helpers/tcp-link.js';
import { pino } from 'pino';

/**
 * Writes that never left the daemon, and what the journal says of them: the real pipeline, a
 * real journal file and the real Modbus driver against sluice-sim, reached through a TCP link
 * that the test can make refuse connections (nothing listening). The valve `v1`'s writes wait
 * for the PLC's one connection behind the readbacks of `v2`'s and `v3`'s commands, which the
 * PLC answers late (and whose writes it holds, so that they keep reading). Ground truth: the simulator's
 * write log.
 */

const LATENCY_MS = 600;
const TIMING = {
  defaultTtlMs: 60_000,
  // The held commands keep reading (and the connection busy) for as long as a test runs.
  confirmTimeoutMs: 30_000,
  pollIntervalMs: 10,
  scanMs: 5,
  mismatchGraceMs: 80,
  // Longer than the request timeout (the slow reads must not time out).
  redispatchGuardMs: 2_500,
};
const WARM_ECHO = 60_000;
const logger: Logger =
  process.env.SLUICE_TEST_DEBUG === '1'
    ? pino({ level: 'debug' }, pino.destination(2))
    : silentLogger;

/**
 * One test's own world: a plant on ephemeral ports, the link to its PLC, a temp dir with the
 * journal file, and the daemon's lives on it. Each test builds its own, so that the tests
 * (which mostly wait on the PLC's deliberate latencies) can run at the same time.
 */
interface Site {
  readonly plant: Plant;
  readonly link: TcpLink;
  readonly dir: string;
  readonly journal: SqliteJournal;
  readonly drivers: Drivers;
  readonly pipeline: CommandPipeline;
  /** A life of the daemon on the journal file: recovery runs first. */
  startLife(): Promise<void>;
  /** The daemon stops (no time for commands in flight), as at SIGTERM with no shutdown bound. */
  stopLife(): Promise<void>;
  submit(key: string, device: string, action?: 'open' | 'stop', ttlMs?: number): CommandRef;
  settled(ref: CommandRef, ms: number): Promise<CommandRecord>;
  /** The other valves' commands keep the PLC's connection busy: each readback is answered late. */
  busyConnection(): Promise<void>;
  /** The sequence numbers of the writes the pipeline hands to `device`'s driver, as it does. */
  handedWrites(device: string): number[];
  close(): Promise<void>;
}

/** The other valves, whose commands keep the PLC's connection busy. */
const SLOW = ['v2', 'v3'];

async function openSite(): Promise<Site> {
  const plant = await startPlant(
    {
      control: { host: '127.0.0.1', port: 0 },
      plcs: {
        mb: {
          protocol: 'modbus',
          host: '127.0.0.1',
          port: 0,
          scanMs: 5,
          devices: {
            v1: { profile: 'valve', base: 0, travelMs: 150 },
            v2: { profile: 'valve', base: 100, travelMs: 150 },
            v3: { profile: 'valve', base: 200, travelMs: 150 },
          },
        },
      },
    },
    { ephemeralPorts: true, control: false },
  );
  const e = plant.plc('mb').endpoint;
  if (e.protocol !== 'modbus') throw new Error('mb is not a Modbus PLC');
  const link = await TcpLink.open({ host: e.host, port: e.port });
  const { dir, cleanup } = tempDir();
  const inventory: Inventory = {
    plcs: {
      mb: {
        protocol: 'modbus',
        host: '127.0.0.1',
        port: link.port,
        unitId: e.unitId,
        requestTimeoutMs: 2_000,
      },
    },
    devices: {
      v1: { plc: 'mb', profile: 'valve', base: 0 },
      v2: { plc: 'mb', profile: 'valve', base: 100 },
      v3: { plc: 'mb', profile: 'valve', base: 200 },
    },
  };
  let life = 0;
  let alive = false;
  let journal: SqliteJournal | undefined;
  let drivers: Drivers | undefined;
  let pipeline: CommandPipeline | undefined;
  const current = <T>(value: T | undefined, what: string): T => {
    if (value === undefined) throw new Error(`no ${what}: the daemon has not started`);
    return value;
  };

  const site: Site = {
    plant,
    link,
    dir,
    get journal() {
      return current(journal, 'journal');
    },
    get drivers() {
      return current(drivers, 'drivers');
    },
    get pipeline() {
      return current(pipeline, 'pipeline');
    },
    async startLife() {
      life++;
      const profiles = new Map<string, DeviceProfile>();
      for (const [name, p] of PROFILES) profiles.set(name, { ...p, timing: TIMING });
      journal = openJournal(join(dir, 'journal.db'));
      drivers = await buildDrivers({
        inventory,
        profiles,
        pkiDir: join(dir, `pki-${life}`),
        acceptUnknownCertificates: true,
        clock: systemClock,
        logger,
      });
      drivers.start();
      pipeline = new CommandPipeline({
        journal,
        devices: drivers.bindings,
        clock: systemClock,
        logger,
        freshness: { maxIssuerSkewMs: 2_000 },
        unreachableGraceMs: 1_000,
      });
      pipeline.recover();
      pipeline.startSweep(100);
      alive = true;
    },
    async stopLife() {
      if (!alive) return;
      alive = false;
      await site.pipeline.stop(0);
      await site.drivers.close();
      site.journal.close();
    },
    submit(key, device, action = 'open', ttlMs = 60_000) {
      site.pipeline.submit({
        key,
        identity: { scope: 'plant', devices: 'all' },
        intake: 'https',
        request: parseCommandRequest({ device, action, ttlMs }),
      });
      return { scope: 'plant', key };
    },
    async settled(ref, ms) {
      const r = await site.pipeline.waitForSettled(ref, ms);
      if (r === undefined || r.state === 'accepted' || r.state === 'dispatched') {
        const history = site.journal.history(ref).map((e) => `${e.to}: ${e.detail}`);
        throw new Error(`${ref.key} not settled within ${ms} ms:\n  ${history.join('\n  ')}`);
      }
      return r;
    },
    async busyConnection() {
      for (const id of SLOW) {
        const device = plant.device(id);
        device.setFault({ kind: 'hold' });
        device.setFault({ kind: 'latency', ms: LATENCY_MS, on: 'read' });
        site.submit(`busy-${id}`, id);
        await until(
          () => (device.counters.writesReceived > 0 ? true : undefined),
          15_000,
          `the write of ${id}`,
        );
      }
    },
    handedWrites(device) {
      const binding = site.drivers.bindings.find((b) => b.id === device)!;
      const handed: number[] = [];
      const write = binding.driver.write.bind(binding.driver);
      binding.driver.write = (command, signal) => {
        handed.push(command.seq);
        return write(command, signal);
      };
      return handed;
    },
    async close() {
      for (const device of plant.devices()) device.clearFaults();
      await site.stopLife();
      await link.close();
      await plant.stop();
      cleanup();
    },
  };
  await site.startLife();
  return site;
}

/** A site for this test, closed when the test has finished (passed or not). */
async function siteFor(context: {
  onTestFinished: (fn: () => Promise<void>) => void;
}): Promise<Site> {
  const site = await openSite();
  context.onTestFinished(() => site.close());
  return site;
}

async function until<T>(probe: () => T | undefined, ms: number, what: string): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const value = probe();
    if (value !== undefined) return value;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe.concurrent('a write that never left the daemon', () => {
  it('no connection to the PLC just before the write: the command waits for the connection, reads afresh and writes once after the reconnect, even though the PLC restarted meanwhile', async ({
    expect,
    onTestFinished,
  }) => {
    const site = await siteFor({ onTestFinished });
    const v1 = site.plant.device('v1');
    await site.busyConnection();
    const ref = site.submit('unconnected', 'v1');
    const dispatched = await until(
      () => {
        const r = site.journal.get(ref);
        return r?.state === 'dispatched' ? r : undefined;
      },
      15_000,
      'the dispatch',
    );
    const seq = dispatched.seq!;
    // Its fresh read succeeded; its write waits behind a slow read when the PLC goes away: the
    // connection is reset under that read, and nothing listens any more, so the write's connect
    // is refused (or its backoff refuses the attempt).
    expect(v1.counters.writesReceived).toBe(0);
    await site.link.refuse();
    const unsent = await until(
      () => {
        const r = site.journal.get(ref)!;
        const line = site.journal
          .history(ref)
          .find((e) => e.detail.startsWith(`the write (sequence number ${seq}) was not sent:`));
        return line !== undefined || (r.state !== 'accepted' && r.state !== 'dispatched')
          ? { record: r, line }
          : undefined;
      },
      10_000,
      'the refused write',
    );
    // Before the fix: failed DEVICE_UNREACHABLE at once ("the write was never sent: no
    // connection to the controller"), with 58 s of its deadline left.
    expect(unsent.record).toMatchObject({ state: 'dispatched', attempts: 1, seq });
    expect(unsent.line?.detail).toMatch(
      // Refused at its connect, or within the backoff after the connect of the read before it.
      new RegExp(
        `^the write \\(sequence number ${seq}\\) was not sent: no connection to the controller \\(mb: write 10\\+3: not sent: no connection to the PLC \\(mb: (not connected; next attempt in \\d+ ms \\(mb: )?connect to 127\\.0\\.0\\.1:\\d+ failed: [^()]*ECONNREFUSED[^()]*(\\(-111\\))?\\)?\\); nothing was written\\); the controller processed none of it, so the command waits for the connection and goes round again within its deadline: a fresh read decides, then the write$`,
      ),
    );
    // Meanwhile the PLC restarts (power-up echo 0), and can be reached again.
    site.plant.plc('mb').powerCycle();
    for (const id of SLOW) site.plant.device(id).clearFaults();
    const acceptedBefore = site.link.accepted;
    const reconnectAt = Date.now();
    await site.link.accept();
    const r = await site.settled(ref, 20_000);
    expect(r).toMatchObject({ state: 'confirmed', attempts: 2, seq });
    // Ground truth: one write of its number, which arrived over a connection made after the
    // reconnect; and nothing else reached the valve.
    expect(site.link.accepted).toBeGreaterThan(acceptedBefore);
    const writes = v1.writesOfSeq(seq);
    expect(writes).toHaveLength(1);
    expect(writes[0]!.receivedAt).toBeGreaterThanOrEqual(reconnectAt);
    expect(v1.counters.writesReceived).toBe(1);
    // Counted for /metrics as a second dispatch after no connection, not as one withdrawn.
    expect(site.pipeline.device('v1')!.writes.redispatches).toMatchObject({
      no_connection: 1,
      withdrawn: 0,
    });
    // The history says why it waited, and that the write was decided again on a fresh read.
    const history = site.journal.history(ref).map((e) => e.detail);
    expect(history).toContainEqual(
      expect.stringMatching(
        new RegExp(
          `^redispatch: the first write \\(sequence number ${seq}\\) found no connection to the controller and was not sent, so it was never applied; the controller answers again: decided again on a fresh read \\(CLOSED\\) and written now$`,
        ),
      ),
    );
    // A next command goes out over the new connection and is confirmed: the queue is drained.
    const next = await site.settled(site.submit('after', 'v1', 'stop'), 15_000);
    expect(next.state).toBe('confirmed');
    expect(v1.writesWithSeq(seq)).toBe(1);
  }, 60_000);

  it('no connection to the PLC until its deadline: failed DEVICE_UNREACHABLE, the write never reached the controller, nothing applied', async ({
    expect,
    onTestFinished,
  }) => {
    const site = await siteFor({ onTestFinished });
    const v1 = site.plant.device('v1');
    await site.busyConnection();
    const ttlMs = 8_000;
    const ref = site.submit('unconnected-expired', 'v1', 'open', ttlMs);
    const dispatched = await until(
      () => {
        const r = site.journal.get(ref);
        return r?.state === 'dispatched' ? r : undefined;
      },
      ttlMs,
      'the dispatch',
    );
    const seq = dispatched.seq!;
    expect(v1.counters.writesReceived).toBe(0);
    await site.link.refuse();
    const r = await site.settled(ref, ttlMs + 5_000);
    // Not before its deadline (before the fix: at once).
    expect(Date.now()).toBeGreaterThanOrEqual(dispatched.deadline);
    expect(r).toMatchObject({ state: 'failed', code: 'DEVICE_UNREACHABLE', seq });
    expect(r.detail).toMatch(
      new RegExp(
        `^the write never reached the controller: its write \\(sequence number ${seq}\\) found no connection to the controller, and (none could be had to go round again before its deadline .*|its deadline .* passed \\d+ ms ago while the command went round again); nothing was applied`,
      ),
    );
    expect(site.journal.history(ref).map((e) => e.detail)).toContainEqual(
      expect.stringMatching(
        new RegExp(`^the write \\(sequence number ${seq}\\) was not sent: no connection`),
      ),
    );
    // Ground truth: the valve never received it.
    expect(v1.writesWithSeq(seq)).toBe(0);
    expect(v1.counters.writesReceived).toBe(0);
  }, 60_000);

  it('a stop accepted while the command waits for the connection: the command is superseded, never written; the stop goes out once the PLC answers', async ({
    expect,
    onTestFinished,
  }) => {
    const site = await siteFor({ onTestFinished });
    const v1 = site.plant.device('v1');
    await site.busyConnection();
    const ref = site.submit('unconnected-stopped', 'v1');
    const dispatched = await until(
      () => {
        const r = site.journal.get(ref);
        return r?.state === 'dispatched' ? r : undefined;
      },
      15_000,
      'the dispatch',
    );
    const seq = dispatched.seq!;
    await site.link.refuse();
    await until(
      () =>
        site.journal
          .history(ref)
          .some((e) => e.detail.startsWith(`the write (sequence number ${seq}) was not sent:`)) ||
        site.journal.get(ref)!.state !== 'dispatched'
          ? true
          : undefined,
      10_000,
      'the refused write',
    );
    expect(site.journal.get(ref)).toMatchObject({ state: 'dispatched', attempts: 1 });
    const stop = site.submit('stop-while-waiting', 'v1', 'stop');
    for (const id of SLOW) site.plant.device(id).clearFaults();
    await site.link.accept();
    const stopped = await site.settled(stop, 20_000);
    expect(stopped.state).toBe('confirmed');
    const r = await site.settled(ref, 20_000);
    expect(r).toMatchObject({ state: 'rejected', code: 'SUPERSEDED', attempts: 1, seq });
    expect(r.detail).toMatch(
      /^superseded by the stop stop-while-waiting, accepted after it; its write \(sequence number \d+\) found no connection to the controller and was not sent, so nothing was written$/,
    );
    // Ground truth: the command's write never reached the valve.
    expect(v1.writesWithSeq(seq)).toBe(0);
    expect(v1.writeLog.map((w) => w.seq)).toEqual(stopped.seq === null ? [] : [stopped.seq]);
  }, 60_000);

  // Once as it was: the next start goes round (its one write that may have left was proven not
  // applied, the second never left), one write after the restart. And once with a stop of the
  // valve accepted while the daemon was down: its first write went out (proven not applied), so
  // it is not "superseded" (never written) either, and it is not written again.
  for (const stopBetween of [false, true]) {
    it(`a second write withdrawn at a stop of the daemon: the history says so, and the next start ${stopBetween ? 'ends it DEVICE_UNREACHABLE without a third write (a stop accepted meanwhile)' : 'goes round: one write, confirmed'}`, async ({
      expect,
      onTestFinished,
    }) => {
      const site = await siteFor({ onTestFinished });
      const v1 = site.plant.device('v1');
      // As on a PLC that has run a while: the valve echoes another master's command, so a lost
      // write can be proven not applied over a new connection (redispatch.ts).
      v1.receiveWrite({ code: 3, setpoint: 0, seq: WARM_ECHO });
      await until(() => (v1.seqEcho === WARM_ECHO ? true : undefined), 5_000, 'the warm-up');
      v1.resetCounters();
      await site.busyConnection();
      // The first write is lost: the PLC resets the connection before taking it.
      v1.setFault({ kind: 'reset', when: 'before', on: 'write', count: 1 });
      const ref = site.submit('twice', 'v1');
      // Proven not applied, it is dispatched again; its second write waits behind a slow read.
      const again = await until(
        () =>
          site.journal.history(ref).some((e) => e.detail.startsWith('redispatch:'))
            ? site.journal.get(ref)
            : undefined,
        30_000,
        'the second dispatch',
      );
      expect(again).toMatchObject({ state: 'dispatched', attempts: 2 });
      const seq = again.seq!;
      expect(v1.writesWithSeq(seq)).toBe(0);
      await site.stopLife();
      // Ground truth: neither write reached the valve; the history says the latest was withdrawn.
      expect(v1.writesWithSeq(seq)).toBe(0);
      expect(v1.counters.writesReceived).toBe(0);
      const between = openJournal(join(site.dir, 'journal.db'));
      try {
        expect(between.get(ref)).toMatchObject({ state: 'dispatched', attempts: 2, seq });
        expect(between.history(ref).at(-1)?.detail).toMatch(
          new RegExp(
            `^the write \\(sequence number ${seq}\\) was not sent: withdrawn as the daemon stopped .*it goes round again unless a stop was accepted after the command`,
          ),
        );
        if (stopBetween) {
          // Accepted after it, as by an intake of the next life before the take-up.
          const now = Date.now();
          between.claim({
            scope: 'plant',
            key: 'stop-between',
            fingerprint: 'stop-between',
            device: 'v1',
            action: 'stop',
            position: null,
            issuedAt: now,
            issuedAtSource: 'issuer',
            ttlMs: 60_000,
            deadline: now + 60_000,
            intake: 'https',
            acceptedAt: now,
          });
        }
      } finally {
        between.close();
      }
      // While the daemon is down the PLC restarts: its power-up echo over a new connection, which
      // no readback can tell from a controller that lost a write it had taken.
      for (const device of site.plant.devices()) device.clearFaults();
      site.plant.plc('mb').powerCycle();
      expect(v1.seqEcho).toBe(0);
      await site.startLife();
      // Settled by the line, not after a readback window that could prove nothing.
      const r = await site.settled(ref, 4_000);
      if (!stopBetween) {
        // Its history proves the one write that may have left proven not applied and the
        // second withdrawn unsent: a fresh read decides, and the write after it is the second
        // that may leave the gateway (I1). Before: failed "already dispatched twice".
        expect(r).toMatchObject({ state: 'confirmed', code: 'OK', attempts: 3, seq });
        expect(v1.writesWithSeq(seq)).toBe(1);
        expect(v1.counters.writesReceived).toBe(1);
        return;
      }
      expect(r).toMatchObject({ state: 'failed', code: 'DEVICE_UNREACHABLE', attempts: 2, seq });
      expect(r.detail).toMatch(
        /already dispatched twice .*; the stop stop-between was accepted after it, so it is not sent again; nothing was applied$/,
      );
      // No third write (I1), nor any other write to the valve but the stop's own.
      expect(v1.writesWithSeq(seq)).toBe(0);
      const stop = await site.settled({ scope: 'plant', key: 'stop-between' }, 10_000);
      expect(v1.counters.writesReceived).toBe(stop.seq === null ? 0 : v1.writesWithSeq(stop.seq));
    }, 90_000);
  }

  it('a second write withdrawn by a stop that preempts its command: the history says so, and it ends without being sent', async ({
    expect,
    onTestFinished,
  }) => {
    const site = await siteFor({ onTestFinished });
    const v1 = site.plant.device('v1');
    // A warm valve (another master's echo), so that the lost first write can be proven not
    // applied and the command dispatched again, as above.
    v1.receiveWrite({ code: 3, setpoint: 0, seq: WARM_ECHO });
    await until(() => (v1.seqEcho === WARM_ECHO ? true : undefined), 5_000, 'the warm-up');
    v1.resetCounters();
    await site.busyConnection();
    const handed = site.handedWrites('v1');
    // The first write is lost: the PLC resets the connection before taking it.
    v1.setFault({ kind: 'reset', when: 'before', on: 'write', count: 1 });
    const ref = site.submit('preempted-twice', 'v1');
    const again = await until(
      () =>
        site.journal.history(ref).some((e) => e.detail.startsWith('redispatch:'))
          ? site.journal.get(ref)
          : undefined,
      30_000,
      'the second dispatch',
    );
    expect(again).toMatchObject({ state: 'dispatched', attempts: 2 });
    const seq = again.seq!;
    // Handed over twice: the second write now waits behind the slow reads.
    await until(
      () => (handed.filter((s) => s === seq).length === 2 ? true : undefined),
      5_000,
      'the second write handed to the driver',
    );
    expect(v1.writesWithSeq(seq)).toBe(0);
    const stop = site.submit('the-stop', 'v1', 'stop');
    const stopped = await site.settled(stop, 20_000);
    expect(stopped.state).toBe('confirmed');
    const r = await site.settled(ref, 20_000);
    const history = site.journal.history(ref).map((e) => e.detail);
    // The history says what became of the second write: withdrawn by the stop, never sent.
    expect(history).toContainEqual(
      expect.stringMatching(
        new RegExp(
          `^the write \\(sequence number ${seq}\\) was not sent: withdrawn as the stop the-stop preempted the command`,
        ),
      ),
    );
    expect(r).toMatchObject({ state: 'failed', code: 'DEVICE_UNREACHABLE', attempts: 2, seq });
    expect(r.detail).toMatch(/the stop the-stop .*nothing was applied$/);
    // Ground truth: neither of its writes reached the valve; the stop's did.
    expect(v1.writesWithSeq(seq)).toBe(0);
    expect(v1.writeLog.map((w) => w.seq)).toEqual([stopped.seq]);
  }, 90_000);
  it('the PLC connection closes while the write waits behind other requests: failed DEVICE_UNREACHABLE "never sent", at once', async ({
    expect,
    onTestFinished,
  }) => {
    const site = await siteFor({ onTestFinished });
    const v1 = site.plant.device('v1');
    await site.busyConnection();
    const handed = site.handedWrites('v1');
    const ref = site.submit('closed-queued', 'v1');
    const dispatched = await until(
      () => {
        const r = site.journal.get(ref);
        return r?.state === 'dispatched' && handed.includes(r.seq!) ? r : undefined;
      },
      15_000,
      'the write handed to the driver',
    );
    // Queued behind a slow read of v2 or v3 when the connection is closed (as the daemon
    // closes its drivers): the close lets the read in flight finish, and drops the rest.
    expect(v1.counters.writesReceived).toBe(0);
    const closing = site.drivers.modbus[0]!.close();
    // Settled as soon as the driver said so: not after the confirm window (30 s) of a write
    // whose outcome would be unknown.
    const r = await site.settled(ref, 4_000);
    await closing;
    expect(r).toMatchObject({
      state: 'failed',
      code: 'DEVICE_UNREACHABLE',
      attempts: 1,
      seq: dispatched.seq,
    });
    expect(r.detail).toBe(
      'the write was never sent: no connection to the controller; nothing was applied (mb: write 10+3: not sent: the connection to the PLC was closed (endpoint closed) before it was sent; nothing was written)',
    );
    // Ground truth: the valve never received it.
    expect(v1.writesWithSeq(dispatched.seq!)).toBe(0);
    expect(v1.counters.writesReceived).toBe(0);
  }, 60_000);

  it('the PLC connection closes while the write is on the wire and its answer is lost: its outcome stays unknown, and readback settles it', async ({
    expect,
    onTestFinished,
  }) => {
    const site = await siteFor({ onTestFinished });
    const v1 = site.plant.device('v1');
    // The PLC takes the write and never answers it.
    v1.setFault({ kind: 'drop', on: 'write', count: 1 });
    const ref = site.submit('closed-on-the-wire', 'v1');
    await until(
      () => (v1.counters.writesReceived === 1 ? true : undefined),
      10_000,
      'the write at the PLC',
    );
    const seq = site.journal.get(ref)!.seq!;
    // The close waits for the request in flight, which times out (3 s): an answer lost.
    await site.drivers.modbus[0]!.close();
    // The worker is done with it once the pipeline has stopped: what it journaled by then.
    await site.stopLife();
    const between = openJournal(join(site.dir, 'journal.db'));
    try {
      expect(between.get(ref)).toMatchObject({ state: 'dispatched', attempts: 1, seq });
      // Never said "not sent": the write may have reached the PLC (and did).
      expect(between.history(ref).map((e) => e.detail)).not.toContainEqual(
        expect.stringMatching(/not sent|never sent/),
      );
    } finally {
      between.close();
    }
    v1.clearFaults();
    await site.startLife();
    const r = await site.settled(ref, 10_000);
    expect(r).toMatchObject({ state: 'confirmed', attempts: 1, seq });
    // Ground truth: the one write, applied; never written again.
    expect(v1.writesWithSeq(seq)).toBe(1);
  }, 60_000);
});
