import { describe, expect, it } from 'vitest';
import { IMAGE_FROZEN_MS, imageFrozen, type DeviceView } from '../../src/core/device-monitor.js';
import { noWrites } from '../../src/core/lane.js';
import { statusLine, type ReadinessParts } from '../../src/daemon/readiness.js';
import { deviceDocument } from '../../src/intake/device-view.js';

/**
 * A frozen image is judged by one rule (imageFrozen) wherever it is shown: /readyz and the
 * STATUS= line (readiness.ts) on the daemon's unrounded time, sluicectl on /v1/devices' whole
 * milliseconds (device-view.ts), the status page and the metric on the unrounded time. Rounded
 * to the nearest, 14 999.6 ms was frozen to /readyz and not yet to the metric: a full run of the
 * suite caught /readyz naming a device frozen while its metric said 14.9995 s. Pure functions on a
 * device as the pipeline describes it, around the bound.
 */

function view(imageUnchangedMs: number): DeviceView {
  return {
    id: 'v1',
    profile: 'valve',
    mirror: {
      state: 'CLOSED',
      position: 0,
      seq: 1,
      faultCode: null,
      sourceTime: Date.parse('2026-12-05T12:00:00Z'),
      requestedAt: Date.parse('2026-12-05T12:00:15Z'),
      receivedAt: Date.parse('2026-12-05T12:00:15Z'),
    },
    readbackAgeMs: 40,
    imageUnchangedMs,
    skew: null,
    skewStands: false,
    health: {
      connected: true,
      lastGoodReadAt: null,
      errorCount: 0,
      lastError: null,
      connectionEpoch: 1,
    },
    readError: null,
    clockReadError: null,
    readErrors: { status: 0, clock: 0 },
    writes: noWrites(),
    queued: 0,
    inFlight: null,
    unresolved: null,
    driftPpm: null,
    clockOff: null,
  };
}

/** The parts the STATUS= line reads: a journal that has not failed, no intake, no clock source. */
function parts(device: DeviceView): ReadinessParts {
  return {
    journal: {
      checkWritable: () => undefined,
      knownFailure: () => null,
    },
    pipeline: { devices: () => [device], openCommands: () => [] },
    mqttIntake: null,
    httpsIntake: null,
    https: null,
    gatewayClock: {
      status: () => ({
        source: 'none',
        state: 'UNKNOWN',
        offsetNs: null,
        grandmaster: null,
        portState: null,
        detail: 'no clock source configured',
        checkedAt: 0,
        since: 0,
        lastLockedAt: null,
      }),
    },
    onUnsynced: 'warn',
  } as unknown as ReadinessParts;
}

describe('the frozen-image bound', () => {
  for (const ms of [
    IMAGE_FROZEN_MS - 0.6,
    IMAGE_FROZEN_MS - 0.5,
    IMAGE_FROZEN_MS - 0.4,
    IMAGE_FROZEN_MS,
    IMAGE_FROZEN_MS + 0.6,
  ]) {
    it(`at ${ms} ms: every view says the same`, () => {
      const frozen = imageFrozen(ms);
      expect(frozen).toBe(ms >= IMAGE_FROZEN_MS);
      // /readyz's and the STATUS= line's check.
      const line = statusLine(parts(view(ms)), { total: 0, open: 0 });
      expect(line.includes('v1 image frozen'), line).toBe(frozen);
      // What sluicectl judges: /v1/devices' whole milliseconds.
      const shown = deviceDocument(view(ms), true).imageUnchangedMs;
      expect(imageFrozen(shown), String(shown)).toBe(frozen);
    });
  }
});

describe('reads that fail after a good one (readyz-failing-reads.test.ts on the daemon)', () => {
  const failing = (imageUnchangedMs: number): DeviceView => ({
    ...view(imageUnchangedMs),
    readError: {
      message: 'mb: read 0+8: Timed out',
      since: Date.parse('2026-12-05T12:00:15Z'),
      lastAt: Date.parse('2026-12-05T12:00:15Z'),
      failures: 1,
      sinceMono: 0,
    },
  });

  it('a young readback does not keep the device ready: the STATUS= line says it unreachable', () => {
    const line = statusLine(parts(failing(0)), { total: 0, open: 0 });
    expect(line).toMatch(/^not ready \(v1 unreachable\): /);
  });

  it('reads that fail now are said rather than the frozen image of the last good one', () => {
    const line = statusLine(parts(failing(IMAGE_FROZEN_MS + 1_000)), { total: 0, open: 0 });
    expect(line).toMatch(/^not ready \(v1 unreachable\): /);
  });
});
