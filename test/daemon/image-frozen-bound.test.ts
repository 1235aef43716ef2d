import { describe, expect, it } from 'vitest';
import { IMAGE_FROZEN_MS, imageFrozen, type DeviceView } from '../../src/core/device-monitor.js';
import { noWrites } from '../../src/core/lane.js';
import {
  ProbeCache,
  READ_FAILURES_UNREACHABLE,
  READS_FAILING_MS,
  statusLine as statusView,
  type ReadinessParts,
} from '../../src/daemon/readiness.js';
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
    holding: 0,
    driftPpm: null,
    clockOff: null,
  };
}

/**
 * The parts the STATUS= line reads: a journal that has not failed, no intake, no clock source;
 * the monotonic clock at `nowMono`.
 */
function parts(device: DeviceView, nowMono = 0): ReadinessParts {
  return {
    journal: {
      checkWritable: () => undefined,
      knownFailure: () => null,
      durable: () => Promise.resolve(),
    },
    pipeline: { devices: () => [device], openCommands: () => [], recoveryFailed: () => null },
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
    elapsed: () => nowMono,
  } as unknown as ReadinessParts;
}

/** The STATUS= line the daemon would send now. */
function statusLine(p: ReadinessParts, recovery: { total: number; open: number }): string {
  return statusView(p, recovery, new ProbeCache(() => 0), { prove: false, note: null }).line;
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
  /** Reads failed `failures` times in a row, the first at monotonic 0. */
  const failing = (imageUnchangedMs: number, failures: number): DeviceView => ({
    ...view(imageUnchangedMs),
    readError: {
      message: 'mb: read 0+8: Timed out',
      since: Date.parse('2026-12-05T12:00:15Z'),
      lastAt: Date.parse('2026-12-05T12:00:15Z'),
      failures,
      sinceMono: 0,
    },
  });

  it('a young readback does not keep the device ready once its reads have kept failing: unreachable', () => {
    const line = statusLine(parts(failing(0, READ_FAILURES_UNREACHABLE), READS_FAILING_MS), {
      total: 0,
      open: 0,
    });
    expect(line).toMatch(/^not ready \(v1 unreachable\): /);
  });

  it('one failed read, or a burst of them from one lost connection, does not make it unreachable', () => {
    // A single failed read however long ago (the next read is slow, not failed yet).
    expect(statusLine(parts(failing(0, 1), 2 * READS_FAILING_MS), { total: 0, open: 0 })).toMatch(
      /^ready: /,
    );
    // Reads queued on one connection fail together when it is lost: many, within a moment.
    expect(statusLine(parts(failing(0, 5), READS_FAILING_MS - 1), { total: 0, open: 0 })).toMatch(
      /^ready: /,
    );
  });

  it('reads that keep failing are said rather than the frozen image of the last good one', () => {
    const frozen = failing(IMAGE_FROZEN_MS + 1_000, READ_FAILURES_UNREACHABLE);
    expect(statusLine(parts(frozen, READS_FAILING_MS), { total: 0, open: 0 })).toMatch(
      /^not ready \(v1 unreachable\): /,
    );
    // One failed read does not hide the frozen image.
    expect(statusLine(parts(frozen, 10), { total: 0, open: 0 })).toMatch(
      /^not ready \(v1 image frozen\): /,
    );
  });
});
