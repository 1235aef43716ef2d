import { afterEach, expect, it } from 'vitest';
import { systemClock } from '../../src/core/clock.js';
import { DeviceReads } from '../../src/core/device-reads.js';
import type { ExecutionHost, Lane } from '../../src/core/lane.js';
import { silentLogger } from '../../src/core/logger.js';
import { noReadFailures } from '../../src/core/read-failures.js';
import { judgeRedispatch, mayStillLand, type RedispatchFacts } from '../../src/core/redispatch.js';
import type { SkewEstimate } from '../../src/core/skew.js';
import { SimHarness } from '../helpers/sim-harness.js';

/**
 * I1: the proof that a write whose outcome is unknown was not applied places the newest image
 * on the gateway's clock with a skew estimate — which must be of the connection the image came
 * over. The confirmation loop measures the skew again while it waits (`notTaken`, when the
 * estimate has expired), and that measurement may go out on a new connection to a controller
 * that restarted with its clock set an hour back: the old connection's image, placed with the
 * new estimate, was "produced an hour after the write's outcome became unknown", a false proof
 * and a second write. On sluice-sim with the real driver and DeviceReads; the verdicts are the
 * rule's (redispatch.ts) that both the live path and recovery use.
 */

let h: SimHarness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

it("an image is never placed with the skew of another connection: a restarted controller's new clock proves nothing", async () => {
  h = await SimHarness.start({ warm: true });
  const binding = h.drivers.bindings.find((b) => b.id === 'v1')!;
  const lane = {
    binding,
    signal: new AbortController().signal,
    skew: null,
    skewSamples: [],
    clockReads: noReadFailures(),
    statusReads: noReadFailures(),
    clockOff: null,
    oldImageCheck: null,
  } as unknown as Lane;
  const host = {
    clock: systemClock,
    clockPolicy: { maxControllerSkewMs: () => null },
    skewMaxAgeMs: 60_000,
    mirror: () => undefined,
  } as unknown as ExecutionHost;
  const reads = new DeviceReads(host);
  await reads.measureSkew(lane, silentLogger);
  // The write's outcome becomes unknown now (its request timed out on this connection), and an
  // image of this connection, produced within the guard, is read.
  const unknownSinceMono = systemClock.elapsed();
  const writeEpoch = binding.driver.health().connectionEpoch;
  const image = (await reads.tryRead(lane, silentLogger))!;
  const facts = (skew: SkewEstimate | null): RedispatchFacts => ({
    profile: binding.profile,
    seq: 1234,
    writesMaybeSent: 1,
    dispatches: 1,
    deadline: Date.now() + 30_000,
    before: {
      state: image.state,
      position: image.position,
      faultCode: image.faultCode,
      seq: image.seq,
    },
    readback: image,
    skew,
    acked: false,
    echoSeen: false,
    unknownSinceMono,
    nowWall: Date.now(),
    sameConnection: writeEpoch === image.epoch,
  });
  const own = judgeRedispatch(facts(reads.usableSkew(lane)));
  expect(own.kind).toBe('wait');
  // Past the guard the same image proves the write unapplied — unless an earlier readback showed
  // its echo: the controller took it, and one that no longer shows it (restarted behind a
  // gateway that kept the connection, say) proves nothing (I1).
  const past = { ...facts(reads.usableSkew(lane)), unknownSinceMono: unknownSinceMono - 60_000 };
  expect(judgeRedispatch(past).kind).toBe('redispatch');
  expect(judgeRedispatch({ ...past, echoSeen: true })).toEqual({
    kind: 'unprovable',
    reason: 'an earlier readback showed it taken',
  });

  // The PLC restarts with its clock an hour back; the skew is measured on the new connection.
  h.plant.plc('mb').powerCycle({ clockOffsetMs: -3_600_000 });
  let skew: SkewEstimate | null = null;
  const end = Date.now() + 10_000;
  while (skew === null || skew.epoch === image.epoch) {
    if (Date.now() > end) throw new Error('no skew measured on a new connection');
    lane.skew = null;
    skew = await reads.ensureSkew(lane, silentLogger);
    if (skew === null) await new Promise((r) => setTimeout(r, 50));
  }
  expect(skew.offsetMs).toBeLessThan(-3_500_000);
  // Before the fix: { kind: 'redispatch', proof: 'an image produced 3600000 ms after …' }.
  expect(judgeRedispatch(facts(skew))).toEqual({
    kind: 'wait',
    reason: 'no controller clock estimate on this connection yet',
  });
  // The image was read within the guard: the write may still land, whatever the new clock says.
  expect(mayStillLand(facts(skew))).toMatch(/may still reach the controller/);
  expect(image.epoch).not.toBe(skew.epoch);
});
