import { describe, expect, it } from 'vitest';
import { decide } from '../../src/core/state-machine.js';
import { parseProfile } from '../../src/core/profile.js';
import { ProfileError } from '../../src/core/errors.js';
import { profile } from '../helpers/fixtures.js';
import { parse } from 'yaml';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT } from '../helpers/fixtures.js';

// SPEC §3, transcribed by hand: `→X` write (next state X), `=` no-op, `88` illegal, `L` LOCAL_MODE.
const VALVE: Record<string, Record<string, string>> = {
  open: {
    CLOSED: '→OPENING',
    OPENING: '=',
    OPEN: '=',
    CLOSING: '88',
    STOPPED: '→OPENING',
    FAULT: '88',
    LOCAL: 'L',
  },
  close: {
    CLOSED: '=',
    OPENING: '88',
    OPEN: '→CLOSING',
    CLOSING: '=',
    STOPPED: '→CLOSING',
    FAULT: '88',
    LOCAL: 'L',
  },
  stop: {
    CLOSED: '=',
    OPENING: '→STOPPED',
    OPEN: '=',
    CLOSING: '→STOPPED',
    STOPPED: '=',
    FAULT: '=',
    LOCAL: 'L',
  },
  reset: {
    CLOSED: '=',
    OPENING: '=',
    OPEN: '=',
    CLOSING: '=',
    STOPPED: '=',
    FAULT: '→STOPPED',
    LOCAL: 'L',
  },
};
// Actuator (positioner): move while MOVING is 0x88 (SPEC §3); stop ends travel; reset clears FAULT.
const ACTUATOR: Record<string, Record<string, string>> = {
  move: { IDLE: '→MOVING', MOVING: '88', FAULT: '88', LOCAL: 'L' },
  stop: { IDLE: '=', MOVING: '→IDLE', FAULT: '=', LOCAL: 'L' },
  reset: { IDLE: '=', MOVING: '=', FAULT: '→IDLE', LOCAL: 'L' },
};

function cells(table: Record<string, Record<string, string>>): [string, string, string][] {
  return Object.entries(table).flatMap(([action, row]) =>
    Object.entries(row).map(([state, want]): [string, string, string] => [action, state, want]),
  );
}

describe.each([
  ['valve', VALVE],
  ['actuator', ACTUATOR],
] as const)('%s profile: every cell of SPEC §3', (name, table) => {
  const p = profile(name);

  it('covers exactly the states and actions of the specification', () => {
    expect(new Set(p.actions)).toEqual(new Set(Object.keys(table)));
    expect(new Set(p.states)).toEqual(new Set(Object.keys(Object.values(table)[0]!)));
  });

  it.each(cells(table))('%s in %s → %s', (action, state, want) => {
    const d = decide(p, state, action as 'open');
    if (want === '88') {
      expect(d).toEqual({ kind: 'reject', code: 'ILLEGAL_TRANSITION', faultCode: '0x88' });
    } else if (want === 'L') {
      expect(d).toEqual({ kind: 'reject', code: 'LOCAL_MODE', faultCode: null });
    } else if (want === '=') {
      expect(d.kind).toBe('noop');
      // A no-op is confirmed by a readback of a target state; the state it is in must be one
      // of them or lead to one without a write (travel completing).
      if (d.kind === 'noop') expect(d.confirm.length).toBeGreaterThan(0);
    } else {
      expect(d.kind).toBe('write');
      if (d.kind === 'write') expect(d.next).toBe(want.slice(1));
    }
  });
});

describe('confirmation targets', () => {
  const v = profile('valve');
  it('open and close confirm at the end of travel, not on the way', () => {
    expect(decide(v, 'CLOSED', 'open')).toMatchObject({ kind: 'write', confirm: ['OPEN'] });
    expect(decide(v, 'OPENING', 'open')).toMatchObject({ kind: 'noop', confirm: ['OPEN'] });
    expect(decide(v, 'OPEN', 'close')).toMatchObject({ kind: 'write', confirm: ['CLOSED'] });
  });
  it('reset from FAULT confirms on STOPPED or CLOSED', () => {
    expect(decide(v, 'FAULT', 'reset')).toMatchObject({ confirm: ['STOPPED', 'CLOSED'] });
  });
  it('an unknown state or an action the profile lacks is never written', () => {
    expect(decide(v, 'EXPLODED', 'open').kind).toBe('reject');
    expect(decide(v, 'CLOSED', 'move').kind).toBe('reject');
  });
  it('a state named like a member every object inherits (an OPC UA server may report any string) is unknown', () => {
    for (const state of ['constructor', 'toString', '__proto__', 'hasOwnProperty']) {
      expect(decide(v, state, 'open'), state).toEqual({
        kind: 'reject',
        code: 'ILLEGAL_TRANSITION',
        faultCode: '0x88',
      });
    }
  });
});

describe('parseProfile', () => {
  const raw = (): Record<string, unknown> =>
    parse(readFileSync(join(ROOT, 'devices', 'profiles', 'valve.yaml'), 'utf8')) as Record<
      string,
      unknown
    >;

  it('accepts the bundled profiles', () => {
    expect(() => parseProfile(raw(), 'valve.yaml')).not.toThrow();
  });

  it('reports a missing cell, an unknown state and a LOCAL that does not reject, all at once', () => {
    const data = raw();
    const table = data.table as Record<string, Record<string, unknown>>;
    delete table.open!.CLOSED;
    table.close!.OPEN = { effect: 'write', next: 'SIDEWAYS', confirm: ['CLOSED'] };
    table.stop!.LOCAL = { effect: 'noop', confirm: ['LOCAL'] };
    try {
      parseProfile(data, 'broken.yaml');
      expect.unreachable();
    } catch (error) {
      expect(error).toBeInstanceOf(ProfileError);
      const errors = (error as ProfileError).errors;
      expect(errors).toContain('table.open.CLOSED: missing cell');
      expect(errors).toContain('table.close.OPEN.next: unknown state "SIDEWAYS"');
      expect(errors).toContain('table.stop.LOCAL: the local state must reject with LOCAL_MODE');
    }
  });

  it('reports schema errors with their paths', () => {
    const data = raw();
    (data.timing as Record<string, unknown>).pollIntervalMs = 'fast';
    delete data.states;
    expect(() => parseProfile(data, 'broken.yaml')).toThrow(/timing\.pollIntervalMs.*|states/);
  });
});
