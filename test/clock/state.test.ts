import { describe, expect, it } from 'vitest';
import {
  initialGatewayClockStatus,
  nextGatewayClockStatus,
  NO_SOURCE_DETAIL,
  type ChronyObservation,
  type ClockInstant,
  type ClockProbe,
  type GatewayClockPolicy,
  type GatewayClockStatus,
  type PtpObservation,
} from '../../src/core/gateway-clock.js';

/**
 * The gateway clock's state rule, one transition at a time, on fake time: `at(ms)` is a
 * moment `ms` after the start on both clocks unless a test steps the wall clock alone.
 */
const POLICY: GatewayClockPolicy = { maxOffsetNs: 1000, holdoverMs: 5000 };
const WALL0 = 1_764_612_000_000;
const at = (ms: number, wallStep = 0): ClockInstant => ({
  wall: WALL0 + ms + wallStep,
  mono: 10_000 + ms,
});

const GM = '7607ba.fffe.905df3';

function ptp(over: Partial<PtpObservation> = {}): ClockProbe {
  return {
    kind: 'observed',
    observation: {
      source: 'ptp',
      clockIdentity: 'fe0fe1.fffe.75124f',
      ports: [{ identity: 'fe0fe1.fffe.75124f-1', state: 'SLAVE' }],
      gmPresent: true,
      gmIdentity: GM,
      masterOffsetNs: 120,
      offsetFromMasterNs: 120,
      stepsRemoved: 1,
      notes: [],
      ...over,
    },
  };
}
const port = (state: string): Partial<PtpObservation> => ({
  ports: [{ identity: 'fe0fe1.fffe.75124f-1', state }],
});
const unreachable = (error = 'pmc timed out after 2000 ms'): ClockProbe => ({
  kind: 'unreachable',
  source: 'ptp',
  error,
});

/** Runs probes at the given moments from the initial status; returns every status. */
function run(
  steps: readonly (readonly [number, ClockProbe])[],
  policy: GatewayClockPolicy = POLICY,
): GatewayClockStatus[] {
  let status = initialGatewayClockStatus('ptp', at(0));
  const out: GatewayClockStatus[] = [];
  for (const [ms, probe] of steps) {
    status = nextGatewayClockStatus(status, probe, policy, at(ms));
    out.push(status);
  }
  return out;
}
const states = (statuses: GatewayClockStatus[]): string[] => statuses.map((s) => s.state);
const last = (statuses: GatewayClockStatus[]): GatewayClockStatus => statuses.at(-1)!;

describe('gateway clock state rule', () => {
  it('starts UNKNOWN, not checked yet; source none is UNKNOWN for good', () => {
    expect(initialGatewayClockStatus('ptp', at(0))).toMatchObject({
      state: 'UNKNOWN',
      detail: 'not checked yet',
      lastLockedAt: null,
    });
    expect(initialGatewayClockStatus('none', at(0))).toEqual({
      source: 'none',
      state: 'UNKNOWN',
      offsetNs: null,
      grandmaster: null,
      portState: null,
      detail: NO_SOURCE_DETAIL,
      checkedAt: WALL0,
      since: WALL0,
      lastLockedAt: null,
      lastLockedMono: null,
    });
    expect(NO_SOURCE_DETAIL).toBe('no gateway clock source configured');
  });

  it('UNKNOWN → LOCKED: port SLAVE, grandmaster present, |offset| within the bound', () => {
    const s = last(run([[100, ptp()]]));
    expect(s).toEqual({
      source: 'ptp',
      state: 'LOCKED',
      offsetNs: 120,
      grandmaster: GM,
      portState: 'SLAVE',
      detail: `locked to grandmaster ${GM}: port SLAVE, offset 120 ns within ±1000 ns`,
      checkedAt: WALL0 + 100,
      since: WALL0 + 100,
      lastLockedAt: WALL0 + 100,
      lastLockedMono: 10_100,
    });
  });

  it('UNKNOWN → UNLOCKED: never locked', () => {
    const s = last(run([[100, ptp(port('LISTENING'))]]));
    expect(s).toMatchObject({ state: 'UNLOCKED', lastLockedAt: null, offsetNs: null });
    expect(s.detail).toBe('port LISTENING: no port follows a master (not SLAVE)');
  });

  it('LOCKED → LOCKED keeps `since`, moves `checkedAt` and the last lock', () => {
    const [a, b] = run([
      [100, ptp()],
      [1100, ptp({ masterOffsetNs: -900 })],
    ]);
    expect(b).toMatchObject({
      state: 'LOCKED',
      since: a!.since,
      checkedAt: WALL0 + 1100,
      lastLockedMono: 11_100,
      offsetNs: -900,
    });
  });

  it.each([
    [
      'grandmaster gone',
      ptp({ gmPresent: false, gmIdentity: 'fe0fe1.fffe.75124f' }),
      'gmPresent false',
    ],
    ['port LISTENING', ptp(port('LISTENING')), 'port LISTENING'],
    ['port MASTER', ptp(port('MASTER')), 'port MASTER'],
    ['port UNCALIBRATED', ptp(port('UNCALIBRATED')), 'port UNCALIBRATED: not locked'],
    ['port FAULTY', ptp(port('FAULTY')), 'port FAULTY'],
    // A servo's spike past the bound, within what a holdover presumes (the bound + holdoverMs
    // at 100 ppm: 1000 + 5000 × 100 = 501,000 ns here).
    ['offset beyond, positive', ptp({ masterOffsetNs: 1001 }), 'offset 1001 ns beyond ±1000 ns'],
    ['offset beyond, negative', ptp({ masterOffsetNs: -5000 }), 'offset -5000 ns beyond'],
    [
      'offset at what a holdover presumes',
      ptp({ masterOffsetNs: -501_000 }),
      'offset -501000 ns beyond ±1000 ns',
    ],
    ['no offset', ptp({ masterOffsetNs: null, offsetFromMasterNs: null }), 'no offset reported'],
  ])('LOCKED → HOLDOVER: %s', (_name, probe, reason) => {
    const [locked, holdover] = run([
      [100, ptp()],
      [1100, probe],
    ]);
    expect(holdover).toMatchObject({
      state: 'HOLDOVER',
      since: WALL0 + 1100,
      lastLockedAt: locked!.lastLockedAt,
      lastLockedMono: 10_100,
    });
    expect(holdover!.detail).toContain('holdover: locked 1000 ms ago, UNLOCKED after 5000 ms');
    expect(holdover!.detail).toContain(reason);
  });

  it.each([
    // Past the bound + holdoverMs at 100 ppm (501,000 ns here): no holdover presumes it.
    ['positive', 501_001, 'offset 501001 ns beyond ±1000 ns'],
    ['negative', -2_000_000, 'offset -2000000 ns beyond ±1000 ns'],
    // The gateway's clock stepped back an hour under a ptp4l that follows its grandmaster.
    ['an hour behind', -3_600_000_000_000, 'offset -3600000000000 ns beyond ±1000 ns'],
  ])(
    'LOCKED → UNLOCKED at once, no holdover: the grandmaster measures the clock off beyond what a holdover presumes (%s)',
    (_name, offset, reason) => {
      const [, off, back] = run([
        [100, ptp()],
        [1100, ptp({ masterOffsetNs: offset, offsetFromMasterNs: offset })],
        [2100, ptp()],
      ]);
      expect(off).toMatchObject({ state: 'UNLOCKED', offsetNs: offset, lastLockedMono: 10_100 });
      expect(off!.detail).toBe(
        `no holdover (locked 1000 ms ago): the reference measures this clock off; ${reason}`,
      );
      // Back within the bound: LOCKED again.
      expect(back!.state).toBe('LOCKED');
    },
  );

  it('a port UNCALIBRATED (not accepted) that measures the clock off: UNLOCKED, no holdover', () => {
    const [, off] = run([
      [100, ptp()],
      [1100, ptp({ ...port('UNCALIBRATED'), masterOffsetNs: 2_000_000 })],
    ]);
    expect(off).toMatchObject({ state: 'UNLOCKED', offsetNs: 2_000_000 });
  });

  it('an offset beyond the bound after the grandmaster is lost is stale: holdover as usual', () => {
    // LISTENING keeps the last master_offset it measured; no port follows a master.
    const [, lostGm] = run([
      [100, ptp()],
      [1100, ptp({ ...port('LISTENING'), masterOffsetNs: -5000 })],
    ]);
    expect(lostGm).toMatchObject({ state: 'HOLDOVER', offsetNs: null });
  });

  it('the offset falls back to CURRENT_DATA_SET offsetFromMaster without master_offset', () => {
    const s = last(run([[100, ptp({ masterOffsetNs: null, offsetFromMasterNs: 42 })]]));
    expect(s).toMatchObject({ state: 'LOCKED', offsetNs: 42 });
  });

  it('HOLDOVER → HOLDOVER within holdoverMs (inclusive), then → UNLOCKED', () => {
    const statuses = run([
      [0, ptp()],
      [1000, ptp(port('LISTENING'))],
      [5000, ptp(port('LISTENING'))],
      [5001, ptp(port('LISTENING'))],
      [9000, ptp(port('LISTENING'))],
    ]);
    expect(states(statuses)).toEqual(['LOCKED', 'HOLDOVER', 'HOLDOVER', 'UNLOCKED', 'UNLOCKED']);
    expect(statuses[2]!.since).toBe(WALL0 + 1000);
    expect(statuses[3]).toMatchObject({ since: WALL0 + 5001, lastLockedAt: WALL0 });
    expect(statuses[3]!.detail).toMatch(
      /^holdover of 5000 ms expired \(locked 5001 ms ago\); port/,
    );
    expect(statuses[4]!.since).toBe(WALL0 + 5001);
    expect(statuses[4]!.detail).not.toContain('expired');
  });

  it('HOLDOVER → LOCKED when the lock is back', () => {
    const statuses = run([
      [0, ptp()],
      [1000, ptp({ gmPresent: false })],
      [2000, ptp()],
    ]);
    expect(states(statuses)).toEqual(['LOCKED', 'HOLDOVER', 'LOCKED']);
    expect(statuses[2]!.since).toBe(WALL0 + 2000);
  });

  it('UNLOCKED → LOCKED, and UNLOCKED stays UNLOCKED while not locked', () => {
    const statuses = run([
      [0, ptp(port('LISTENING'))],
      [1000, ptp(port('UNCALIBRATED'))],
      [2000, ptp()],
    ]);
    expect(states(statuses)).toEqual(['UNLOCKED', 'UNLOCKED', 'LOCKED']);
    expect(statuses[1]!.since).toBe(WALL0);
  });

  it.each([
    ['LOCKED', [[0, ptp()]]],
    [
      'HOLDOVER',
      [
        [0, ptp()],
        [1000, ptp(port('MASTER'))],
      ],
    ],
    ['UNLOCKED', [[0, ptp(port('MASTER'))]]],
  ] as const)(
    '%s → UNKNOWN when the source is unreachable; the last lock is kept',
    (_from, steps) => {
      const statuses = run([...steps, [2000, unreachable()]]);
      const before = statuses.at(-2)!;
      expect(last(statuses)).toEqual({
        source: 'ptp',
        state: 'UNKNOWN',
        offsetNs: null,
        grandmaster: null,
        portState: null,
        detail: 'ptp source unreachable: pmc timed out after 2000 ms',
        checkedAt: WALL0 + 2000,
        since: WALL0 + 2000,
        lastLockedAt: before.lastLockedAt,
        lastLockedMono: before.lastLockedMono,
      });
    },
  );

  it('UNKNOWN → UNKNOWN keeps `since`; the detail follows the latest error', () => {
    const statuses = run([
      [0, unreachable('no ptp4l socket at /var/run/ptp4l')],
      [1000, unreachable()],
    ]);
    expect(statuses[1]).toMatchObject({ state: 'UNKNOWN', since: WALL0 });
    expect(statuses[1]!.detail).toContain('timed out');
  });

  it('UNKNOWN → HOLDOVER: locked shortly before an outage, not locked after it', () => {
    const statuses = run([
      [0, ptp()],
      [1000, unreachable()],
      [2000, ptp(port('LISTENING'))],
    ]);
    expect(states(statuses)).toEqual(['LOCKED', 'UNKNOWN', 'HOLDOVER']);
  });

  it('UNKNOWN → UNLOCKED: the outage outlasted the holdover', () => {
    const statuses = run([
      [0, ptp()],
      [1000, unreachable()],
      [7000, ptp(port('LISTENING'))],
    ]);
    expect(states(statuses)).toEqual(['LOCKED', 'UNKNOWN', 'UNLOCKED']);
    expect(last(statuses).detail).toContain('holdover of 5000 ms expired');
  });

  it('UNKNOWN → LOCKED', () => {
    expect(
      states(
        run([
          [0, unreachable()],
          [1000, ptp()],
        ]),
      ),
    ).toEqual(['UNKNOWN', 'LOCKED']);
  });

  it('holdoverMs 0: LOCKED → UNLOCKED at once', () => {
    const statuses = run(
      [
        [0, ptp()],
        [1000, ptp(port('LISTENING'))],
      ],
      { ...POLICY, holdoverMs: 0 },
    );
    expect(states(statuses)).toEqual(['LOCKED', 'UNLOCKED']);
  });

  it('holdover is measured on the monotonic clock: a wall-clock step neither stretches nor cuts it', () => {
    let status = initialGatewayClockStatus('ptp', at(0));
    status = nextGatewayClockStatus(status, ptp(), POLICY, at(0));
    // The wall clock steps back an hour (a PTP step after the lock was lost): still 4 s.
    status = nextGatewayClockStatus(status, ptp(port('LISTENING')), POLICY, at(4000, -3_600_000));
    expect(status.state).toBe('HOLDOVER');
    // ... and forward an hour: 5.5 s on the monotonic clock, past the holdover.
    const forward = nextGatewayClockStatus(
      status,
      ptp(port('LISTENING')),
      POLICY,
      at(5500, 3_600_000),
    );
    expect(forward.state).toBe('UNLOCKED');
    const stillWithin = nextGatewayClockStatus(
      status,
      ptp(port('LISTENING')),
      POLICY,
      at(4500, 3_600_000),
    );
    expect(stillWithin.state).toBe('HOLDOVER');
  });

  it('UNCALIBRATED counts as following its master only under acceptUncalibrated (free-running ptp4l)', () => {
    const probe = ptp(port('UNCALIBRATED'));
    expect(last(run([[0, probe]])).state).toBe('UNLOCKED');
    const accepted = last(run([[0, probe]], { ...POLICY, acceptUncalibrated: true }));
    expect(accepted).toMatchObject({ state: 'LOCKED', portState: 'UNCALIBRATED' });
    expect(accepted.detail).toContain('UNCALIBRATED accepted: ptp4l runs free_running');
  });

  it('several ports: LOCKED when one of them is SLAVE', () => {
    const probe = ptp({
      ports: [
        { identity: 'fe0fe1.fffe.75124f-1', state: 'MASTER' },
        { identity: 'fe0fe1.fffe.75124f-2', state: 'SLAVE' },
        { identity: 'fe0fe1.fffe.75124f-3', state: 'PASSIVE' },
      ],
    });
    expect(last(run([[0, probe]]))).toMatchObject({ state: 'LOCKED', portState: 'SLAVE' });
    const none = last(run([[0, ptp({ ports: [] })]]));
    expect(none).toMatchObject({ state: 'UNLOCKED', portState: null });
    expect(none.detail).toContain('no PTP port reported');
  });
});

describe('gateway clock state rule, chrony', () => {
  const chrony = (over: Partial<ChronyObservation> = {}): ClockProbe => ({
    kind: 'observed',
    observation: {
      source: 'chrony',
      referenceId: '50484330',
      referenceName: 'PHC0',
      stratum: 1,
      leapStatus: 'Normal',
      offsetNs: -21,
      maxErrorNs: 600,
      refTimeMs: WALL0,
      ...over,
    },
  });
  const runChrony = (steps: readonly (readonly [number, ClockProbe])[]): GatewayClockStatus[] => {
    let status = initialGatewayClockStatus('chrony', at(0));
    return steps.map(
      ([ms, probe]) => (status = nextGatewayClockStatus(status, probe, POLICY, at(ms))),
    );
  };

  it('synchronised within the error bound → LOCKED; the bound widening → HOLDOVER → UNLOCKED', () => {
    const statuses = runChrony([
      [0, chrony()],
      [1000, chrony({ maxErrorNs: 5000 })],
      [6000, chrony({ maxErrorNs: 9000 })],
    ]);
    expect(states(statuses)).toEqual(['LOCKED', 'HOLDOVER', 'UNLOCKED']);
    expect(statuses[0]).toMatchObject({
      source: 'chrony',
      offsetNs: -21,
      grandmaster: 'PHC0',
      portState: null,
    });
  });

  it('chrony measuring the clock off beyond the bound (its pending correction): UNLOCKED at once, no holdover', () => {
    const statuses = runChrony([
      [0, chrony()],
      // The clock stepped two seconds: chrony, still synchronised, has that much to correct.
      [1000, chrony({ offsetNs: -2_000_000_000, maxErrorNs: 2_000_000_600 })],
    ]);
    expect(states(statuses)).toEqual(['LOCKED', 'UNLOCKED']);
    expect(statuses[1]!.detail).toMatch(
      /^no holdover \(locked 1000 ms ago\): the reference measures this clock off; chrony error bound/,
    );
  });

  it('Not synchronised, or serving its local clock: UNLOCKED', () => {
    const [unsync] = runChrony([
      [0, chrony({ leapStatus: 'Not synchronised', referenceId: '00000000', referenceName: '' })],
    ]);
    expect(unsync).toMatchObject({ state: 'UNLOCKED', grandmaster: null });
    const [local] = runChrony([[0, chrony({ referenceId: '7F7F0101', referenceName: '' })]]);
    expect(local!.state).toBe('UNLOCKED');
    const [noRef] = runChrony([[0, chrony({ referenceId: '00000000', referenceName: '' })]]);
    expect(noRef!.detail).toContain('no reference');
  });

  it('chronyc failing → UNKNOWN', () => {
    const [s] = runChrony([
      [0, { kind: 'unreachable', source: 'chrony', error: 'chronyc exited with status 1' }],
    ]);
    expect(s).toMatchObject({ source: 'chrony', state: 'UNKNOWN' });
    expect(s!.detail).toBe('chrony source unreachable: chronyc exited with status 1');
  });
});
