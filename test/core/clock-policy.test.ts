import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { GatewayClockPoller } from '../../src/clock/gateway-clock.js';
import { ptpReader } from '../../src/clock/pmc.js';
import { sleepFor, type Clock } from '../../src/core/clock.js';
import {
  crossingInMs,
  driftPpm,
  shownDriftPpm,
  skewExceeds,
  type SkewSample,
} from '../../src/core/controller-clock.js';
import type { ClockPolicy, GatewaySync } from '../../src/core/lane.js';
import { silentLogger } from '../../src/core/logger.js';
import type { SkewEstimate } from '../../src/core/skew.js';
import { tempDir } from '../helpers/fixtures.js';
import { SimHarness } from '../helpers/sim-harness.js';

/**
 * SPEC §6 clock policy on the real parts (pipeline, real drivers, sluice-sim): controller
 * clocks beyond their bound — by offset or by drift — flag the device and refuse its writes
 * with CLOCK_SKEW; within the bound they pass; the gateway's own sync state gates timestamped
 * commands. The gateway clock here is a stand-in (its states are set by the test): the real
 * PTP sources are tested against ptp4l in test/clock/ptp.test.ts.
 */

let h: SimHarness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

const bounded = (maxMs: number, onUnsynced: 'reject' | 'warn' = 'reject'): ClockPolicy => ({
  onUnsynced,
  maxControllerSkewMs: () => maxMs,
  gateway: null,
});

describe('controller skew (SPEC §6)', () => {
  it('a controller clock 5 s off, beyond a 1 s bound: flagged, its writes refused CLOCK_SKEW', async () => {
    h = await SimHarness.start({ clockPolicy: bounded(1_000) });
    h.plant.plc('mb').setFault({ kind: 'clock', offsetMs: 5_000 });
    h.submit('k1', { device: 'v1', action: 'open' });
    const r = await h.settled('k1');
    expect(r).toMatchObject({ state: 'rejected', code: 'CLOCK_SKEW' });
    expect(r.detail).toMatch(/controller clock of v1 is (49|50)\d\d ms off .* allowed 1000 ms/);
    expect(h.device('v1').counters.writesReceived).toBe(0);
    const view = h.pipeline.device('v1');
    expect(view?.clockOff).toMatchObject({ maxMs: 1_000 });
    // Under `warn` the same command runs (and is judged by its echo, as always).
    await h.close();
    h = await SimHarness.start({ clockPolicy: bounded(1_000, 'warn') });
    h.plant.plc('mb').setFault({ kind: 'clock', offsetMs: 5_000 });
    h.submit('k2', { device: 'v1', action: 'open' });
    expect(await h.settled('k2')).toMatchObject({ state: 'confirmed' });
    expect(h.device('v1').counters.writesReceived).toBe(1);
  });

  it('a controller clock set 2 h back beyond the bound: caught before the next write, not after the estimate expires', async () => {
    h = await SimHarness.start({ clockPolicy: bounded(2_000) });
    h.submit('k1', { device: 'v1', action: 'open' });
    expect(await h.settled('k1')).toMatchObject({ state: 'confirmed' });
    // Within 60 s of that measurement, the PLC's clock is set back two hours.
    h.plant.plc('mb').setFault({ kind: 'clock', offsetMs: -7_200_000 });
    // Once the controller has scanned with its new time (an image it publishes shows it)...
    await h.until(
      () => h!.device('v1').snapshot().published.scanTime < Date.now() - 3_600_000,
      2_000,
      'an image stamped with the stepped clock',
    );
    h.submit('k2', { device: 'v1', action: 'close' });
    const r = await h.settled('k2');
    expect(r).toMatchObject({ state: 'rejected', code: 'CLOCK_SKEW' });
    expect(h.device('v1').counters.writesReceived).toBe(1);
  });

  it('a controller clock set 3 s back, beyond a 2 s bound: caught before the next write, though its images look only 3 s old', async () => {
    h = await SimHarness.start({ clockPolicy: bounded(2_000) });
    h.submit('k1', { device: 'v1', action: 'open' });
    expect(await h.settled('k1')).toMatchObject({ state: 'confirmed' });
    // Within 60 s of that measurement, the PLC's clock is set back three seconds.
    h.plant.plc('mb').setFault({ kind: 'clock', offsetMs: -3_000 });
    await h.until(
      () => h!.device('v1').snapshot().published.scanTime < Date.now() - 2_500,
      2_000,
      'an image stamped with the stepped clock',
    );
    h.submit('k2', { device: 'v1', action: 'close' });
    const r = await h.settled('k2');
    expect(r, r.detail ?? '').toMatchObject({ state: 'rejected', code: 'CLOCK_SKEW' });
    expect(r.detail).toMatch(/controller clock of v1 is -(29|30)\d\d ms off .* allowed 2000 ms/);
    expect(h.device('v1').counters.writesReceived).toBe(1);
  });

  it('a controller clock set back twice within 5 s: the second step is caught before the next write too', async () => {
    h = await SimHarness.start({ clockPolicy: bounded(2_000) });
    const plc = h.plant.plc('mb');
    const stamped = async (behindMs: number): Promise<void> => {
      const at = Date.now();
      await h!.until(
        () => {
          const scan = h!.device('v1').snapshot().published.scanTime;
          return Math.abs(scan - (Date.now() - behindMs)) < 500 && Date.now() > at;
        },
        2_000,
        'an image stamped with the stepped clock',
      );
    };
    plc.setFault({ kind: 'clock', offsetMs: 7_200_000 });
    h.submit('ahead', { device: 'v1', action: 'open' });
    expect(await h.settled('ahead')).toMatchObject({ state: 'rejected', code: 'CLOCK_SKEW' });
    // Set right (back two hours): its next command runs, the clock measured again on an image
    // that looked two hours old.
    plc.clearFault('clock');
    await stamped(0);
    h.submit('right', { device: 'v1', action: 'open' });
    const right = await h.settled('right');
    expect(right).toMatchObject({ state: 'confirmed' });
    // At once set two hours back again, within 5 s of that measurement.
    plc.setFault({ kind: 'clock', offsetMs: -7_200_000 });
    await stamped(7_200_000);
    h.submit('behind', { device: 'v1', action: 'close' });
    const behind = await h.settled('behind');
    expect(behind, behind.detail ?? '').toMatchObject({ state: 'rejected', code: 'CLOCK_SKEW' });
    expect(h.device('v1').writeLog.map((w) => w.seq)).toEqual([right.seq]);
  });

  it('within the bound, commands pass and the history records the skew', async () => {
    h = await SimHarness.start({ clockPolicy: bounded(1_000) });
    h.plant.plc('mb').setFault({ kind: 'clock', offsetMs: 300 });
    h.submit('k1', { device: 'v1', action: 'open' });
    const r = await h.settled('k1');
    expect(r.state).toBe('confirmed');
    expect(h.notes('k1').find((n) => n.startsWith('dispatched:'))).toMatch(
      /seq 1; gateway clock not checked; controller skew \+(2|3)\d\d ms ± \d+ ms/,
    );
    expect(h.pipeline.device('v1')?.clockOff).toBeNull();
  });

  it('a drifting controller clock is flagged once it crosses the bound, and back when set right', async () => {
    // 200 ms/s of drift from a correct clock: past 600 ms after about 3 s.
    h = await SimHarness.start({ clockPolicy: bounded(600), skewMaxAgeMs: 500, monitorMs: 100 });
    h.plant.plc('mb').setFault({ kind: 'clock', offsetMs: 0, driftPpm: 200_000 });
    await h.until(() => h!.pipeline.device('v1')?.clockOff != null, 10_000, 'the flag');
    await h.until(() => h!.pipeline.device('v1')?.driftPpm != null, 10_000, 'a drift estimate');
    const view = h.pipeline.device('v1')!;
    expect(view.driftPpm).toBeGreaterThan(150_000);
    expect(view.driftPpm).toBeLessThan(250_000);
    h.submit('k1', { device: 'v1', action: 'open' });
    expect(await h.settled('k1')).toMatchObject({ state: 'rejected', code: 'CLOCK_SKEW' });
    h.plant.plc('mb').clearFault('clock');
    await h.until(() => h!.pipeline.device('v1')?.clockOff === null, 10_000, 'the flag cleared');
    h.submit('k2', { device: 'v1', action: 'open' });
    expect(await h.settled('k2')).toMatchObject({ state: 'confirmed' });
    expect(h.device('v1').writeLog.map((w) => w.seq)).toEqual([(await h.settled('k2')).seq]);
  });

  it('a controller clock set right again: the next command is measured again and runs, not refused on the old estimate', async () => {
    // The default estimate lifetime (60 s): without a fresh measurement before refusing, every
    // command in that minute would be refused CLOCK_SKEW on a clock already set right (found
    // by the fault campaign, test/reliability/faults.test.ts).
    h = await SimHarness.start({ clockPolicy: bounded(1_000) });
    h.plant.plc('mb').setFault({ kind: 'clock', offsetMs: 7_200_000 });
    h.submit('k1', { device: 'v1', action: 'open' });
    expect(await h.settled('k1')).toMatchObject({ state: 'rejected', code: 'CLOCK_SKEW' });
    h.plant.plc('mb').clearFault('clock');
    h.submit('k2', { device: 'v1', action: 'open' });
    const r = await h.settled('k2');
    expect(r).toMatchObject({ state: 'confirmed' });
    expect(h.device('v1').writeLog.map((w) => w.seq)).toEqual([r.seq]);
    expect(h.pipeline.device('v1')?.clockOff).toBeNull();
  });
});

/** The gateway's wall clock, stepped by the test; the monotonic clock runs on. */
class SteppingClock implements Clock {
  offset = 0;
  now(): number {
    return Date.now() + this.offset;
  }
  elapsed(): number {
    return performance.now();
  }
  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    return sleepFor(ms, signal);
  }
}

class GatewayStandIn implements GatewaySync {
  state = 'LOCKED';
  status(): { source: string; state: string; detail: string } {
    return { source: 'ptp', state: this.state, detail: `port SLAVE, state ${this.state}` };
  }
}

describe('gateway clock (SPEC §6)', () => {
  it('UNLOCKED or UNKNOWN: timestamped commands refused CLOCK_SKEW, gateway-timed ones run', async () => {
    const gateway = new GatewayStandIn();
    h = await SimHarness.start({
      clockPolicy: { onUnsynced: 'reject', maxControllerSkewMs: () => null, gateway },
    });
    for (const state of ['UNLOCKED', 'UNKNOWN']) {
      gateway.state = state;
      const timed = h.submit(`timed-${state}`, {
        device: 'v1',
        action: 'open',
        issuedAt: new Date().toISOString(),
      }).record;
      expect(timed).toMatchObject({ state: 'rejected', code: 'CLOCK_SKEW' });
      expect(timed.detail).toMatch(new RegExp(`gateway clock is ${state}`));
    }
    expect(h.device('v1').counters.writesReceived).toBe(0);
    h.submit('untimed', { device: 'v1', action: 'open' });
    expect(await h.settled('untimed')).toMatchObject({ state: 'confirmed' });
    gateway.state = 'HOLDOVER';
    h.submit('holdover', { device: 'v1', action: 'close', issuedAt: new Date().toISOString() });
    expect(await h.settled('holdover')).toMatchObject({ state: 'confirmed' });
    expect(h.notes('holdover').find((n) => n.startsWith('dispatched:'))).toMatch(
      /gateway clock HOLDOVER \(ptp\)/,
    );
  });

  it("the gateway's clock stepped back an hour under a ptp4l that follows its grandmaster: UNLOCKED at once, and a command held for that hour is not written", async () => {
    // pmc's answers as linuxptp 3.1.1 prints them (test/clock/fixtures/pmc), read by the real
    // reader and parser over a real UNIX socket; a ptp4l in this test cannot be made to measure
    // an hour without adjusting this machine's clock.
    const locked = readFileSync(
      join(import.meta.dirname, '..', 'clock', 'fixtures', 'pmc', 'hand-slave-locked.txt'),
      'utf8',
    );
    const hourBehind = locked
      .replace(/master_offset +-488/, 'master_offset              -3600000000000')
      .replace('offsetFromMaster -488.0', 'offsetFromMaster -3600000000000.0');
    expect(hourBehind).not.toBe(locked);
    let answer = locked;
    const { dir, cleanup } = tempDir('sluice-ptp-');
    const socket = createServer();
    await new Promise<void>((resolve) => socket.listen(join(dir, 'ptp4l'), resolve));
    const clock = new SteppingClock();
    const poller = new GatewayClockPoller({
      source: 'ptp',
      read: ptpReader({
        udsPath: join(dir, 'ptp4l'),
        clientSocketDir: dir,
        exec: () =>
          Promise.resolve({ stdout: answer, stderr: '', code: 0, timedOut: false, error: null }),
      }),
      policy: { maxOffsetNs: 1_000_000, holdoverMs: 60_000 },
      intervalMs: 50,
      clock,
      logger: silentLogger,
    });
    try {
      poller.start();
      expect((await poller.pollOnce()).state).toBe('LOCKED');
      h = await SimHarness.start({
        clock,
        clockPolicy: { onUnsynced: 'reject', maxControllerSkewMs: () => null, gateway: poller },
      });
      // The gateway's clock is stepped back an hour; ptp4l, following its grandmaster, measures
      // it (master_offset is slave minus master).
      clock.offset = -3_600_000;
      answer = hourBehind;
      await h.until(() => poller.status().state !== 'LOCKED', 5_000, 'the step seen');
      // An MQTT command the broker held for that hour: on the stepped clock it looks a second
      // old.
      h.submit('held', {
        device: 'v1',
        action: 'open',
        issuedAt: new Date(clock.now() - 1_000).toISOString(),
        ttlMs: 30_000,
      });
      const held = await h.settled('held');
      expect(held).toMatchObject({ state: 'rejected', code: 'CLOCK_SKEW' });
      expect(held.detail).toMatch(/gateway clock is UNLOCKED \(ptp: no holdover .*beyond/);
      expect(h.device('v1').counters.writesReceived).toBe(0);
      expect(poller.status()).toMatchObject({ state: 'UNLOCKED', offsetNs: -3_600_000_000_000 });
    } finally {
      await poller.stop();
      await new Promise((resolve) => socket.close(resolve));
      cleanup();
    }
  });

  it('a command timed by its receipt, recovered after a restart on a clock booted behind and UNLOCKED: refused CLOCK_SKEW, never written', async () => {
    // Its age ran on the monotonic clock of the life that received it; a restart leaves only
    // its receipt's wall time against the wall clock, as for a timestamped command. A gateway
    // whose real-time clock lost time over the outage would otherwise find it young and
    // write it past its deadline (I3).
    const gateway = new GatewayStandIn();
    const clock = new SteppingClock();
    h = await SimHarness.start({
      clock,
      travelMs: 1_000,
      clockPolicy: { onUnsynced: 'reject', maxControllerSkewMs: () => null, gateway },
    });
    h.submit('travelling', { device: 'v1', action: 'open' });
    await h.until(() => h!.device('v1').counters.writesReceived === 1, 5_000, 'the open written');
    // Queued behind the travel, timed by its receipt: 3 s to live.
    const queued = h.submit('queued', { device: 'v1', action: 'close', ttlMs: 3_000 }).record;
    expect(queued).toMatchObject({ state: 'accepted', issuedAtSource: 'gateway' });
    // On disk before the crash, as an intake or the admin endpoint answers only then
    // (a crash loses the batch still open).
    await h.journal.durable();
    await h.crash();
    // The outage outlasts its deadline, and the valve has finished its travel: the close is
    // legal, and only its age stands between it and the controller.
    await h.until(
      () => Date.now() > queued.deadline + 500 && h!.device('v1').snapshot().state === 'OPEN',
      10_000,
      'past the deadline, the valve open',
    );
    // The gateway boots with its clock behind: it reads half a second after the command's
    // receipt (a clock further behind would put the receipt "in the future", past the issuer
    // skew, and refuse it on that count).
    clock.offset = queued.acceptedAt + 500 - Date.now();
    gateway.state = 'UNLOCKED';
    await h.restart();
    const r = await h.settled('queued');
    expect(r).toMatchObject({ state: 'rejected', code: 'CLOCK_SKEW' });
    expect(r.detail).toMatch(
      /gateway clock is UNLOCKED .*timed by its receipt before the daemon restarted.*nothing was written/,
    );
    const travelling = await h.settled('travelling');
    expect(travelling).toMatchObject({ state: 'confirmed' });
    expect(h.device('v1').writeLog.map((w) => w.seq)).toEqual([travelling.seq]);
    // Received in this life, the same command needs no synced clock: its age is monotonic.
    h.submit('fresh', { device: 'v1', action: 'close', ttlMs: 3_000 });
    expect(await h.settled('fresh')).toMatchObject({ state: 'confirmed' });
  });

  it('policy warn: a timestamped command runs while the gateway clock is unlocked', async () => {
    const gateway = new GatewayStandIn();
    gateway.state = 'UNLOCKED';
    h = await SimHarness.start({
      clockPolicy: { onUnsynced: 'warn', maxControllerSkewMs: () => null, gateway },
    });
    h.submit('k1', { device: 'v1', action: 'open', issuedAt: new Date().toISOString() });
    expect(await h.settled('k1')).toMatchObject({ state: 'confirmed' });
  });
});

describe('controller clock arithmetic', () => {
  const skew = (offsetMs: number, uncertaintyMs = 1): SkewEstimate => ({
    offsetMs,
    monoOffsetMs: offsetMs,
    uncertaintyMs,
    measuredAt: 0,
    measuredMono: 0,
    epoch: 1,
    stamp: { monoOffsetMs: offsetMs, uncertaintyMs: uncertaintyMs + 0.5 },
  });
  it('drift by least squares, from 5 s of samples on; a step starts a new line', () => {
    const samples: SkewSample[] = [0, 1_000, 2_000, 3_000, 4_000, 5_000].map((t) => ({
      mono: t,
      offsetMs: 100 + t * 0.0001,
      uncertaintyMs: 1,
    }));
    expect(driftPpm(samples.slice(0, 5))).toBeNull();
    expect(driftPpm(samples)).toBeCloseTo(100, 3);
    const stepped = [...samples, { mono: 6_000, offsetMs: -15_000, uncertaintyMs: 1 }];
    expect(driftPpm(stepped)).toBeNull();
  });
  it('a measurement over a slow round trip does not outweigh the precise ones', () => {
    // +100 ppm measured to 0.5 ms every second; one reading, taken over a 60 ms round trip,
    // lands 25 ms off the line (inside its ± 30 ms): unweighted, the fit would read about −2,600 ppm.
    const samples: SkewSample[] = [0, 1_000, 2_000, 3_000, 4_000, 5_000, 6_000].map((t) => ({
      mono: t,
      offsetMs: 100 + t * 0.0001 + (t === 6_000 ? -25 : 0),
      uncertaintyMs: t === 6_000 ? 30 : 0.5,
    }));
    expect(driftPpm(samples)).toBeGreaterThan(80);
    expect(driftPpm(samples)).toBeLessThan(120);
  });
  it('a drift is shown once its standard error is within 10 ppm, or a tenth of itself', () => {
    // Each measurement off by a few tenths of a millisecond, as rounding and round trips leave it.
    const errors = [0, 0.4, -0.3, 0.2, -0.4, 0.3, -0.1, 0.35];
    const clock = (ppm: number, everyMs: number, n: number): SkewSample[] =>
      Array.from({ length: n }, (_, i) => ({
        mono: i * everyMs,
        offsetMs: 100 + i * everyMs * ppm * 1e-6 + errors[i % errors.length]!,
        uncertaintyMs: 0.5,
      }));
    // A perfect clock over its first 6 s: a line tens of ppm off, not shown.
    const first = clock(0, 1_000, 7);
    expect(Math.abs(driftPpm(first)!)).toBeGreaterThan(20);
    expect(shownDriftPpm(first)).toBeNull();
    // The same clock measured every minute for half an hour: shown, near 0.
    const later = clock(0, 60_000, 32);
    expect(Math.abs(shownDriftPpm(later)!)).toBeLessThan(10);
    // A clock that gains 0.2 s a second is known as such from its first 6 s.
    expect(shownDriftPpm(clock(200_000, 1_000, 7))).toBeCloseTo(200_000, -3);
  });
  it('beyond the bound only provably: the uncertainty counts in the device’s favour', () => {
    expect(skewExceeds(skew(1_005, 10), 1_000)).toBe(false);
    expect(skewExceeds(skew(-1_011, 10), 1_000)).toBe(true);
  });
  it('predicts when a drift crosses the bound', () => {
    // 500 ms off, +100 ppm (0.1 ms/s): 499 ms of room at 0.0001 ms/ms.
    expect(crossingInMs(skew(500), 100, 1_000)).toBeCloseTo(4_990_000, -3);
    expect(crossingInMs(skew(500), null, 1_000)).toBe(Infinity);
    // Drifting back toward zero: it crosses the other bound, later.
    expect(crossingInMs(skew(500), -100, 1_000)).toBeCloseTo(14_990_000, -3);
  });
});
