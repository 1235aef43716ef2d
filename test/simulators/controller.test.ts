import { describe, expect, it } from 'vitest';
import { DeviceController, LOG_CAPACITY, MAX_PENDING_WRITES } from '../../simulators/controller.js';
import type { DeviceSettings, ScanConditions } from '../../simulators/controller.js';
import { WRITE_LOG_CAPACITY, WriteLog } from '../../simulators/write-log.js';

const OPEN = 1;
const CLOSE = 2;
const STOP = 3;
const RESET = 4;
const MOVE = 5;

const CLEAR: ScanConditions = {
  stuckTravel: false,
  positionSensorFault: false,
  frozen: false,
  hold: false,
};

/** A controller on a manual clock; controller time is the time plus a fixed offset. */
function rig(settings: Partial<DeviceSettings> = {}) {
  let now = 1_000_000;
  const offset = 5_000;
  let seq = 0;
  const controller = new DeviceController(
    {
      id: 'dev',
      profile: 'valve',
      travelMs: 1000,
      travelTimeoutMs: 2000,
      initialPosition: 0,
      handshake: 'seq',
      refusal: 'keep',
      ...settings,
    },
    now + offset,
  );
  return {
    controller,
    scan(ms = 0, conditions: Partial<ScanConditions> = {}) {
      now += ms;
      controller.scan(now, now + offset, { ...CLEAR, ...conditions });
    },
    command(code: number, setpoint = 0, explicitSeq?: number) {
      seq = explicitSeq ?? seq + 1;
      controller.receiveWrite({ code, setpoint, seq }, now + offset);
    },
    controllerTime: () => now + offset,
    now: () => now,
  };
}

describe('valve controller program', () => {
  it('starts CLOSED, OPEN or STOPPED from its initial position', () => {
    expect(rig().controller.state).toBe('CLOSED');
    expect(rig({ initialPosition: 100 }).controller.state).toBe('OPEN');
    expect(rig({ initialPosition: 30 }).controller.state).toBe('STOPPED');
  });

  it('travels 0 → 100 % in travelMs and 100 → 0 % back', () => {
    const r = rig();
    r.command(OPEN);
    r.scan();
    r.scan(999);
    expect(r.controller.state).toBe('OPENING');
    expect(r.controller.position).toBeCloseTo(99.9, 6);
    r.scan(1);
    expect([r.controller.state, r.controller.position]).toEqual(['OPEN', 100]);
    r.command(CLOSE);
    r.scan();
    r.scan(500);
    expect([r.controller.state, r.controller.position]).toEqual(['CLOSING', 50]);
    r.scan(500);
    expect([r.controller.state, r.controller.position]).toEqual(['CLOSED', 0]);
  });

  it('resumes a partial stroke from STOPPED at the same speed', () => {
    const r = rig();
    r.command(OPEN);
    r.scan();
    r.scan(300);
    r.command(STOP);
    r.scan();
    expect([r.controller.state, r.controller.position]).toEqual(['STOPPED', 30]);
    r.command(CLOSE);
    r.scan();
    r.scan(300);
    expect(r.controller.state).toBe('CLOSED');
  });

  it('does not time out a normal stroke, only one that takes longer than travelTimeoutMs', () => {
    const r = rig({ travelTimeoutMs: 1200 });
    r.command(OPEN);
    r.scan();
    for (let i = 0; i < 100; i += 1) r.scan(10);
    expect(r.controller.state).toBe('OPEN');
    r.command(CLOSE);
    r.scan();
    r.scan(500, { stuckTravel: true });
    r.scan(700, { stuckTravel: true });
    expect(r.controller.state).toBe('CLOSING');
    r.scan(1, { stuckTravel: true });
    expect([r.controller.state, r.controller.faultCode, r.controller.position]).toEqual([
      'FAULT',
      0x81,
      100,
    ]);
  });

  it('resets out of FAULT to STOPPED when the valve is not closed', () => {
    const r = rig();
    r.command(OPEN);
    r.scan();
    r.scan(400);
    r.scan(0, { positionSensorFault: true });
    expect([r.controller.state, r.controller.faultCode]).toEqual(['FAULT', 0x82]);
    r.command(RESET);
    r.scan();
    expect([r.controller.state, r.controller.faultCode, r.controller.position]).toEqual([
      'STOPPED',
      0,
      40,
    ]);
  });

  it('resets out of FAULT at 100 % to STOPPED, not OPEN (SPEC §3: →STOPPED/CLOSED)', () => {
    const r = rig();
    r.command(OPEN);
    r.scan();
    r.scan(1000);
    expect([r.controller.state, r.controller.position]).toEqual(['OPEN', 100]);
    r.scan(0, { positionSensorFault: true });
    expect([r.controller.state, r.controller.faultCode]).toEqual(['FAULT', 0x82]);
    r.command(RESET);
    r.scan();
    expect([r.controller.state, r.controller.faultCode, r.controller.position]).toEqual([
      'STOPPED',
      0,
      100,
    ]);
    // STOPPED takes a close at once, as OPEN would; FAULT would refuse it.
    r.command(CLOSE);
    r.scan();
    expect(r.controller.state).toBe('CLOSING');
  });

  it('resets out of FAULT at 0 % to CLOSED', () => {
    const r = rig();
    r.scan(0, { positionSensorFault: true });
    r.command(RESET);
    r.scan();
    expect([r.controller.state, r.controller.faultCode]).toEqual(['CLOSED', 0]);
  });

  it('shows the device fault again once a 0x88 latch in FAULT is cleared by an accepted command', () => {
    const r = rig();
    r.scan(0, { positionSensorFault: true });
    r.command(OPEN);
    r.scan();
    expect(r.controller.faultCode).toBe(0x88);
    r.command(STOP);
    r.scan();
    expect([r.controller.state, r.controller.faultCode]).toEqual(['FAULT', 0x82]);
  });

  it('a device fault replaces a 0x88 latch in the fault register', () => {
    const r = rig();
    r.command(OPEN);
    r.scan();
    r.command(CLOSE);
    r.scan();
    expect(r.controller.faultCode).toBe(0x88);
    r.scan(10, { positionSensorFault: true });
    expect(r.controller.faultCode).toBe(0x82);
  });

  it('refuses unknown command codes and `move` with 0x88', () => {
    const r = rig();
    for (const code of [0, MOVE, 6, 65535]) {
      r.command(code);
      r.scan();
      expect([r.controller.state, r.controller.faultCode], `code ${code}`).toEqual([
        'CLOSED',
        0x88,
      ]);
    }
    expect(r.controller.counters.rejected).toBe(4);
  });

  it('takes several writes of one scan in arrival order', () => {
    const r = rig();
    r.command(OPEN);
    r.command(CLOSE);
    r.command(STOP);
    r.scan();
    expect(r.controller.log.map((e) => [e.code, e.outcome, e.from, e.to])).toEqual([
      [OPEN, 'accepted', 'CLOSED', 'OPENING'],
      [CLOSE, 'rejected-0x88', 'OPENING', 'OPENING'],
      [STOP, 'accepted', 'OPENING', 'STOPPED'],
    ]);
    expect(r.controller.seqEcho).toBe(3);
  });

  it('keeps the last 100 log entries and bounds the writes waiting for a scan', () => {
    const r = rig();
    for (let i = 0; i < LOG_CAPACITY + 20; i += 1) r.command(STOP);
    r.scan();
    const log = r.controller.log;
    expect(log).toHaveLength(LOG_CAPACITY);
    expect(log[0]?.seq).toBe(21);
    expect(log.at(-1)?.controllerTime).toBe(r.controllerTime());
    for (let i = 0; i < MAX_PENDING_WRITES + 5; i += 1) r.command(STOP);
    expect(r.controller.counters).toMatchObject({
      writesReceived: LOG_CAPACITY + 20 + MAX_PENDING_WRITES + 5,
      overruns: 5,
    });
    r.controller.resetCounters();
    expect(r.controller.counters.writesReceived).toBe(0);
    expect(r.controller.log).toEqual([]);
  });

  it('LOCAL outranks everything; back in REMOTE a persisting sensor fault shows on the next scan', () => {
    const r = rig();
    r.controller.setLocalSwitch(true);
    r.scan(0, { positionSensorFault: true });
    expect(r.controller.state).toBe('LOCAL');
    r.controller.setLocalSwitch(false);
    r.scan(0, { positionSensorFault: true });
    expect([r.controller.state, r.controller.faultCode]).toEqual(['FAULT', 0x82]);
  });

  it('publishes every scan but moves SourceTimestamps only when a value changes', () => {
    const r = rig();
    r.scan(10);
    const first = r.controller.published;
    r.scan(10);
    const second = r.controller.published;
    expect(second.scanTime).toBe(first.scanTime + 10);
    expect(second.changedAt).toEqual(first.changedAt);
    r.command(OPEN);
    r.scan(10);
    const third = r.controller.published;
    expect(third.changedAt.state).toBe(r.controllerTime());
    expect(third.changedAt.seqEcho).toBe(r.controllerTime());
    expect(third.changedAt.position).toBe(first.changedAt.position);
    r.scan(10, { frozen: true });
    expect(r.controller.published).toEqual(third);
  });
});

describe('actuator controller program', () => {
  it('moves to a setpoint and goes IDLE there; stop holds it where it is', () => {
    const r = rig({ profile: 'actuator' });
    expect(r.controller.state).toBe('IDLE');
    r.command(MOVE, 60);
    r.scan();
    r.scan(300);
    expect([r.controller.state, r.controller.position]).toEqual(['MOVING', 30]);
    r.scan(300);
    expect([r.controller.state, r.controller.position]).toEqual(['IDLE', 60]);
    r.command(MOVE, 20);
    r.scan();
    r.scan(100);
    r.command(STOP);
    r.scan();
    expect([r.controller.state, r.controller.position]).toEqual(['IDLE', 50]);
  });

  it('refuses setpoints outside 0–100 % and valve commands with 0x88', () => {
    const r = rig({ profile: 'actuator' });
    for (const [code, setpoint] of [
      [MOVE, 100.1],
      [MOVE, -1],
      [MOVE, Number.NaN],
      [OPEN, 0],
      [CLOSE, 0],
    ] as const) {
      r.command(code, setpoint);
      r.scan();
      expect([r.controller.state, r.controller.faultCode], `${code} ${setpoint}`).toEqual([
        'IDLE',
        0x88,
      ]);
    }
  });

  it('times out a stuck move into FAULT 0x81 and resets to IDLE', () => {
    const r = rig({ profile: 'actuator' });
    r.command(MOVE, 100);
    r.scan();
    r.scan(2001, { stuckTravel: true });
    expect([r.controller.state, r.controller.faultCode]).toEqual(['FAULT', 0x81]);
    r.command(RESET);
    r.scan();
    expect([r.controller.state, r.controller.faultCode]).toEqual(['IDLE', 0]);
  });

  it('comes back from LOCAL as IDLE wherever it was left', () => {
    const r = rig({ profile: 'actuator' });
    r.controller.setLocalSwitch(true, 33);
    r.scan();
    expect([r.controller.state, r.controller.position]).toEqual(['LOCAL', 33]);
    r.controller.setLocalSwitch(false);
    r.scan();
    expect([r.controller.state, r.controller.position]).toEqual(['IDLE', 33]);
  });
});

describe('held command handshake', () => {
  it('leaves writes waiting, in order, while the image keeps publishing; takes them once released', () => {
    const r = rig();
    r.command(OPEN);
    r.command(STOP);
    r.scan(10, { hold: true });
    r.command(OPEN);
    r.scan(10, { hold: true });
    expect(r.controller.counters).toMatchObject({ writesReceived: 3, commandsTaken: 0 });
    expect(r.controller.pendingWrites).toBe(3);
    expect(r.controller.published).toMatchObject({
      state: 'CLOSED',
      seqEcho: 0,
      scanTime: r.controllerTime(),
    });
    r.scan(10);
    expect(r.controller.log.map((e) => [e.seq, e.code, e.outcome])).toEqual([
      [1, OPEN, 'accepted'],
      [2, STOP, 'accepted'],
      [3, OPEN, 'accepted'],
    ]);
    expect([r.controller.state, r.controller.seqEcho, r.controller.pendingWrites]).toEqual([
      'OPENING',
      3,
      0,
    ]);
  });

  it('keeps the overrun rule while held: the oldest waiting write is discarded and counted', () => {
    const r = rig();
    for (let i = 0; i < MAX_PENDING_WRITES + 2; i += 1) r.command(STOP);
    r.scan(10, { hold: true });
    expect(r.controller.counters).toMatchObject({
      writesReceived: MAX_PENDING_WRITES + 2,
      overruns: 2,
    });
    expect(r.controller.pendingWrites).toBe(MAX_PENDING_WRITES);
    const log = r.controller.writeLog.entries();
    expect(log.slice(0, 3).map((e) => [e.seq, e.outcome])).toEqual([
      [1, 'overrun'],
      [2, 'overrun'],
      [3, null],
    ]);
    r.scan(10);
    expect(r.controller.log[0]?.seq).toBe(3 + MAX_PENDING_WRITES - LOG_CAPACITY);
    expect(r.controller.seqEcho).toBe(MAX_PENDING_WRITES + 2);
  });
});

describe('power cycle of the controller', () => {
  it('loses pending writes, seq echo, travel and the 0x88 latch; keeps position, counters and logs', () => {
    const r = rig();
    r.command(OPEN, 0, 40);
    r.scan();
    r.scan(400);
    r.command(CLOSE, 0, 41); // illegal while OPENING: latches 0x88
    r.scan();
    r.command(STOP, 0, 42);
    expect([r.controller.state, r.controller.faultCode, r.controller.pendingWrites]).toEqual([
      'OPENING',
      0x88,
      1,
    ]);
    const lostAt = r.controllerTime();
    r.controller.powerCycle(lostAt, lostAt + 500, false, r.now(), false);
    expect([
      r.controller.state,
      r.controller.position,
      r.controller.faultCode,
      r.controller.seqEcho,
      r.controller.pendingWrites,
    ]).toEqual(['STOPPED', 40, 0, 0, 0]);
    expect(r.controller.published).toMatchObject({
      state: 'STOPPED',
      position: 40,
      seqEcho: 0,
      faultCode: 0,
      scanTime: lostAt + 500,
    });
    // Travel stopped: time passes, the valve stays.
    r.scan(500);
    expect(r.controller.position).toBe(40);
    expect(r.controller.counters).toMatchObject({ writesReceived: 3, commandsTaken: 2 });
    expect(r.controller.log).toHaveLength(2);
    expect(r.controller.writeLog.entries().at(-1)).toMatchObject({
      seq: 42,
      outcome: 'power-cycle',
      settledAt: lostAt,
    });
    // The seq echo is back at its power-up value: a command with the last seq is new again.
    r.command(OPEN, 0, 42);
    r.scan();
    expect([r.controller.state, r.controller.seqEcho]).toEqual(['OPENING', 42]);
  });

  it('comes back from FAULT at 100 % as OPEN (power-up rule) and in LOCAL if the switch says so', () => {
    const r = rig({ initialPosition: 100 });
    r.scan(0, { positionSensorFault: true });
    expect(r.controller.state).toBe('FAULT');
    r.controller.powerCycle(r.controllerTime(), r.controllerTime(), false, r.now(), false);
    expect([r.controller.state, r.controller.faultCode]).toEqual(['OPEN', 0]);
    r.controller.setLocalSwitch(true);
    r.controller.powerCycle(r.controllerTime(), r.controllerTime(), false, r.now(), false);
    expect(r.controller.published.state).toBe('LOCAL');
  });
});

describe('write log', () => {
  it('records every received write with its receipt time, then its outcome and when', () => {
    const r = rig();
    r.command(OPEN, 0, 7);
    const receivedAt = r.controllerTime();
    r.scan(10);
    r.command(CLOSE, 0, 7);
    r.scan(10);
    expect(r.controller.writeLog.entries()).toEqual([
      {
        receivedAt,
        seq: 7,
        code: OPEN,
        setpoint: 0,
        outcome: 'accepted',
        settledAt: receivedAt + 10,
      },
      {
        receivedAt: receivedAt + 10,
        seq: 7,
        code: CLOSE,
        setpoint: 0,
        outcome: 'ignored-same-seq',
        settledAt: receivedAt + 20,
      },
    ]);
    expect(r.controller.writeLog.countSeq(7)).toBe(2);
    expect(r.controller.writeLog.countSeq(8)).toBe(0);
    r.controller.resetCounters();
    expect(r.controller.writeLog.entries()).toEqual([]);
    expect(r.controller.writeLog.countSeq(7)).toBe(0);
  });

  it('holds 100 000 entries by default, drops and counts the oldest, counts seqs exactly', () => {
    expect(new WriteLog().capacity).toBe(WRITE_LOG_CAPACITY);
    expect(WRITE_LOG_CAPACITY).toBe(100_000);
    const log = new WriteLog(5);
    for (let i = 1; i <= 12; i += 1) log.record(i, i % 3, 1, 0);
    expect(log.dropped).toBe(7);
    expect(log.entries().map((e) => e.receivedAt)).toEqual([8, 9, 10, 11, 12]);
    expect(log.entries(0).map((e) => e.receivedAt)).toEqual([9, 12]);
    expect([log.countSeq(0), log.countSeq(1), log.countSeq(2)]).toEqual([4, 4, 4]);
    log.clear();
    expect([log.dropped, log.entries().length, log.countSeq(0)]).toEqual([0, 0, 0]);
  });

  it('keeps up with a campaign-sized stream of writes', () => {
    const r = rig();
    const total = WRITE_LOG_CAPACITY + 1000;
    for (let i = 0; i < total; i += 1) {
      r.command(STOP, 0, (i % 65535) + 1);
      if (i % 500 === 499) r.scan(1);
    }
    r.scan(1);
    expect(r.controller.writeLog.dropped).toBe(1000);
    const entries = r.controller.writeLog.entries();
    expect(entries).toHaveLength(WRITE_LOG_CAPACITY);
    expect(entries[0]?.seq).toBe(1001);
    expect(entries.every((e) => e.outcome !== null)).toBe(true);
    expect(r.controller.writeLog.countSeq(1)).toBe(2);
  });
});

describe('refusal: fault', () => {
  it('keep (default) refuses with 0x88 and travels on; fault refuses into FAULT where it is', () => {
    const keep = rig();
    const fault = rig({ refusal: 'fault' });
    for (const r of [keep, fault]) {
      r.command(OPEN);
      r.scan();
      r.scan(400);
      r.command(CLOSE); // illegal while OPENING
      r.scan();
    }
    expect([keep.controller.state, keep.controller.faultCode]).toEqual(['OPENING', 0x88]);
    expect([fault.controller.state, fault.controller.faultCode]).toEqual(['FAULT', 0x88]);
    expect(fault.controller.seqEcho).toBe(2);
    expect(fault.controller.log.at(-1)).toMatchObject({
      outcome: 'rejected-0x88',
      from: 'OPENING',
      to: 'FAULT',
    });
    expect(fault.controller.counters.rejected).toBe(1);
    keep.scan(300);
    fault.scan(300);
    expect(keep.controller.position).toBe(70);
    expect(fault.controller.position).toBe(40);
  });

  it('keeps 0x88 through an accepted no-op and recovers on reset as from any fault', () => {
    const r = rig({ refusal: 'fault' });
    r.command(OPEN);
    r.scan();
    r.scan(400);
    r.command(CLOSE);
    r.scan();
    r.command(STOP); // a no-op in FAULT: it clears the latch, and the refusal is the device fault
    r.scan();
    expect([r.controller.state, r.controller.faultCode]).toEqual(['FAULT', 0x88]);
    r.command(RESET);
    r.scan();
    expect([r.controller.state, r.controller.faultCode, r.controller.position]).toEqual([
      'STOPPED',
      0,
      40,
    ]);
  });

  it('refuses an unknown code into FAULT at rest, and reset leaves it CLOSED at 0 %', () => {
    const r = rig({ refusal: 'fault' });
    r.command(9);
    r.scan();
    expect([r.controller.state, r.controller.faultCode]).toEqual(['FAULT', 0x88]);
    r.command(RESET);
    r.scan();
    expect([r.controller.state, r.controller.faultCode]).toEqual(['CLOSED', 0]);
  });

  it('leaves a device already in FAULT with the fault that put it there', () => {
    const r = rig({ refusal: 'fault' });
    r.scan(0, { positionSensorFault: true });
    r.command(OPEN); // illegal in FAULT
    r.scan();
    expect([r.controller.state, r.controller.faultCode]).toEqual(['FAULT', 0x88]);
    r.command(STOP);
    r.scan();
    expect([r.controller.state, r.controller.faultCode]).toEqual(['FAULT', 0x82]);
  });

  it('an actuator refused a move while moving stops in FAULT; reset goes IDLE there', () => {
    const r = rig({ profile: 'actuator', refusal: 'fault' });
    r.command(MOVE, 80);
    r.scan();
    r.scan(250);
    r.command(MOVE, 10);
    r.scan();
    r.scan(250);
    expect([r.controller.state, r.controller.faultCode, r.controller.position]).toEqual([
      'FAULT',
      0x88,
      25,
    ]);
    r.command(RESET);
    r.scan();
    expect([r.controller.state, r.controller.faultCode, r.controller.position]).toEqual([
      'IDLE',
      0,
      25,
    ]);
  });

  it('ignores commands in LOCAL rather than refusing them', () => {
    const r = rig({ refusal: 'fault' });
    r.controller.setLocalSwitch(true);
    r.scan();
    r.command(9);
    r.scan();
    expect([r.controller.state, r.controller.faultCode]).toEqual(['LOCAL', 0]);
  });
});

describe('seq-less handshake (every-write)', () => {
  it('takes every write as a new command, seq 0 included, and never ignores a repeat', () => {
    const r = rig({ handshake: 'every-write' });
    r.command(OPEN, 0, 0);
    r.command(OPEN, 0, 0);
    r.scan();
    r.command(STOP, 0, 0);
    r.command(STOP, 0, 0);
    r.scan();
    expect(r.controller.counters).toMatchObject({
      writesReceived: 4,
      commandsTaken: 4,
      accepted: 4,
      noops: 2,
      ignoredSameSeq: 0,
    });
    expect(r.controller.state).toBe('STOPPED');
    expect(r.controller.seqEcho).toBe(0);
    expect(r.controller.writeLog.countSeq(0)).toBe(4);
    expect(r.controller.writeLog.entries().map((e) => e.outcome)).toEqual([
      'accepted',
      'noop',
      'accepted',
      'noop',
    ]);
  });
});

describe('commands decoded by a vendor layout', () => {
  it('follows the given meaning, logs the code as written, and refuses an undefined code', () => {
    const r = rig({ profile: 'actuator' });
    // A vendor table where 1 means move: the controller must not read it as the profile's open.
    r.controller.receiveWrite({ code: 1, setpoint: 50, seq: 1, command: 'move' }, 0);
    r.scan();
    expect(r.controller.state).toBe('MOVING');
    r.controller.receiveWrite({ code: 7, setpoint: 0, seq: 2, command: null }, 0);
    r.scan();
    expect(r.controller.faultCode).toBe(0x88);
    expect(r.controller.writeLog.entries().map((e) => [e.code, e.outcome])).toEqual([
      [1, 'accepted'],
      [7, 'rejected-0x88'],
    ]);
  });
});
