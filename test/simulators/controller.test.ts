import { describe, expect, it } from 'vitest';
import { DeviceController, LOG_CAPACITY, MAX_PENDING_WRITES } from '../../simulators/controller.js';
import type { DeviceSettings, ScanConditions } from '../../simulators/controller.js';

const OPEN = 1;
const CLOSE = 2;
const STOP = 3;
const RESET = 4;
const MOVE = 5;

const CLEAR: ScanConditions = { stuckTravel: false, positionSensorFault: false, frozen: false };

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
      controller.receiveWrite({ code, setpoint, seq });
    },
    controllerTime: () => now + offset,
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
