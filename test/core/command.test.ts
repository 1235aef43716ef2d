import { describe, expect, it } from 'vitest';
import {
  checkFreshness,
  fingerprint,
  MAX_TTL_MS,
  parseCommandKey,
  parseCommandRequest,
  parseIdempotencyKey,
} from '../../src/core/command.js';
import { InvalidCommandError, InvalidKeyError } from '../../src/core/errors.js';

describe('parseCommandRequest', () => {
  it('accepts a full command and canonicalises issuedAt to UTC milliseconds', () => {
    const c = parseCommandRequest({
      device: 'inlet-valve',
      action: 'open',
      issuedAt: '2026-11-23T18:00:00+01:00',
      ttlMs: 30000,
    });
    expect(c).toEqual({
      device: 'inlet-valve',
      action: 'open',
      position: null,
      issuedAt: '2026-11-23T17:00:00.000Z',
      ttlMs: 30000,
    });
  });

  it('says a required field is required', () => {
    expect(() => parseCommandRequest({})).toThrow(
      'invalid command: device: is required; action: is required',
    );
    // Given but wrong: zod's own words.
    expect(() => parseCommandRequest({ device: 5, action: 'fly' })).toThrow(
      /device: Invalid input: expected string, received number; action: Invalid option/,
    );
  });

  it('reports every problem at once, with its path', () => {
    try {
      parseCommandRequest({ device: '', action: 'explode', ttlMs: -1, issuedAt: 'yesterday' });
      expect.unreachable();
    } catch (error) {
      expect(error).toBeInstanceOf(InvalidCommandError);
      const errors = (error as InvalidCommandError).errors.join('\n');
      expect(errors).toMatch(/^device:/m);
      expect(errors).toMatch(/^action:/m);
      expect(errors).toMatch(/^ttlMs:/m);
      expect(errors).toMatch(/^issuedAt:/m);
    }
  });

  it.each([
    [{ device: 'd', action: 'move' }, /position: is required for move/],
    [{ device: 'd', action: 'open', position: 5 }, /position: is only allowed for move/],
    [{ device: 'd', action: 'move', position: 101 }, /position:/],
    [{ device: 'd', action: 'open', ttlMs: 1.5 }, /ttlMs:/],
    [{ device: 'd', action: 'open', ttlMs: 90_000_000 }, /ttlMs:/],
    [{ device: 'd', action: 'open', issuedAt: '2026-11-23T17:00:00' }, /issuedAt:.*offset/],
    [{ device: 'd', action: 'open', issuedAt: '2026-13-45T17:00:00Z' }, /issuedAt:/],
    ['not an object', /\(body\)/],
    [null, /\(body\)/],
    [{ device: 7, action: 'open' }, /device:/],
  ])('refuses %j', (input, message) => {
    expect(() => parseCommandRequest(input)).toThrow(message);
  });

  it("takes the intake's own fields (the MQTT payload's key), and only when the intake has them", () => {
    const stop = { device: 'd', action: 'stop', key: 'k1' };
    expect(parseCommandRequest(stop, { own: ['key'] }).action).toBe('stop');
    expect(() => parseCommandRequest(stop)).toThrow(/^invalid command: key: is not a field/);
    expect(() =>
      parseCommandRequest(stop, {
        elsewhere: { key: 'the key goes in the Idempotency-Key header' },
      }),
    ).toThrow('key: does not go in the body here; the key goes in the Idempotency-Key header');
  });
});

describe('parseCommandRequest: unknown fields', () => {
  const errorsOf = (input: unknown, own?: string[]): readonly string[] => {
    try {
      parseCommandRequest(input, own === undefined ? {} : { own });
    } catch (error) {
      if (error instanceof InvalidCommandError) return error.errors;
      throw error;
    }
    return [];
  };

  it('refuses a misspelt ttlMs or issuedAt instead of falling back to the default or no check', () => {
    for (const [field, meant] of [
      ['ttl', 'ttlMs'],
      ['ttlms', 'ttlMs'],
      ['ttl_ms', 'ttlMs'],
      ['TTLMs', 'ttlMs'],
      ['issuedat', 'issuedAt'],
      ['issued_at', 'issuedAt'],
      ['isuedAt', 'issuedAt'],
      ['positon', 'position'],
    ] as const) {
      const body: Record<string, unknown> = { device: 'd', action: 'open', [field]: 5000 };
      expect(errorsOf(body), field).toEqual([
        `${field}: is not a field of a command (did you mean "${meant}"?); the fields are device, action, position, issuedAt, ttlMs: a field that is not understood is refused, not ignored`,
      ]);
    }
  });

  it("names the intake's own fields among the allowed ones, and gives no guess when none fits", () => {
    expect(errorsOf({ device: 'd', action: 'open', comment: 'x' }, ['key'])).toEqual([
      'comment: is not a field of a command; the fields are device, action, position, issuedAt, ttlMs, key: a field that is not understood is refused, not ignored',
    ]);
  });

  it('reports unknown fields first, then every other problem', () => {
    expect(errorsOf({ device: 'd', action: 'move', posiiton: 40 })).toEqual([
      expect.stringMatching(/^posiiton: .*did you mean "position"/),
      'position: is required for move',
    ]);
  });

  it('quotes odd names, cuts long ones and counts past the first eight', () => {
    const odd = errorsOf({ device: 'd', action: 'open', 'a b\n': 1, ['x'.repeat(100)]: 2 });
    expect(odd[0]).toMatch(/^"a b\\n": is not a field/);
    expect(odd[1]).toMatch(new RegExp(`^${'x'.repeat(64)}…: is not a field`));
    const many = Object.fromEntries(Array.from({ length: 12 }, (_, i) => [`f${String(i)}`, i]));
    const errors = errorsOf({ device: 'd', action: 'open', ...many });
    expect(errors).toHaveLength(9);
    expect(errors[8]).toBe('(body): 4 more fields that are not fields of a command');
  });

  it('refuses an own __proto__ member as JSON.parse makes it', () => {
    const parsed: unknown = JSON.parse('{"device":"d","action":"open","__proto__":{"ttlMs":5}}');
    expect(errorsOf(parsed)).toEqual([expect.stringMatching(/^__proto__: is not a field/)]);
  });
});

describe('parseCommandRequest: dates and result documents', () => {
  const base = { device: 'v1', action: 'open' };
  it('refuses a date the calendar does not have, instead of rolling it over', () => {
    for (const issuedAt of [
      '2026-02-30T10:00:00Z',
      '2026-02-29T10:00:00Z',
      '2026-04-31T10:00:00Z',
      '2026-13-01T10:00:00Z',
      '2026-01-01T24:00:00Z',
      '2026-01-01T10:60:00Z',
      '2026-01-01T10:00:60Z',
      '2026-01-01T10:00:00+24:00',
    ]) {
      expect(() => parseCommandRequest({ ...base, issuedAt }), issuedAt).toThrow(
        /issuedAt: is not a valid date-time/,
      );
    }
    expect(parseCommandRequest({ ...base, issuedAt: '2028-02-29T10:00:00Z' }).issuedAt).toBe(
      '2028-02-29T10:00:00.000Z',
    );
    expect(parseCommandRequest({ ...base, issuedAt: '2026-12-31T23:59:59+14:00' }).issuedAt).toBe(
      '2026-12-31T09:59:59.000Z',
    );
  });

  it('takes an RFC 3339 fraction of any length, kept to the millisecond', () => {
    for (const fraction of ['1234567890', '123999999999999999999999']) {
      expect(
        parseCommandRequest({ ...base, issuedAt: `2026-11-23T17:00:00.${fraction}Z` }).issuedAt,
      ).toBe('2026-11-23T17:00:00.123Z');
    }
  });

  it('reads a space-separated date-time by its fields, a year below 100 included', () => {
    // V8's Date.parse hands a space-separated date-time to its legacy parser, which guesses
    // at such years: the first was read as 2026-12-03T18:10:00Z (fresh), the last refused.
    for (const [issuedAt, instant] of [
      ['0012-03-26 18:10:00Z', '0012-03-26T18:10:00.000Z'],
      ['0099-12-03 18:10:00.5+01:00', '0099-12-03T17:10:00.500Z'],
      ['0026-12-03 18:10:00Z', '0026-12-03T18:10:00.000Z'],
      ['2026-11-23 18:00:00.1239-01:30', '2026-11-23T19:30:00.123Z'],
    ]) {
      expect(parseCommandRequest({ ...base, issuedAt }).issuedAt, issuedAt).toBe(instant);
    }
    expect(() => parseCommandRequest({ ...base, issuedAt: '0000-01-01 00:30:00+01:00' })).toThrow(
      /issuedAt: lies outside the years 0000-9999 in UTC/,
    );
  });

  it('refuses an issuedAt whose UTC date-time, or its deadline, has no four-digit year (no RFC 3339 result could show it)', () => {
    // The last: a deadline a day (MAX_TTL_MS) later was `+010000-…` in the result.
    for (const issuedAt of [
      '9999-12-31T23:59:59-23:59',
      '0000-01-01T00:30:00+01:00',
      '9999-12-31T23:59:59.999Z',
      '9999-12-31T00:00:00.000Z',
    ]) {
      expect(() => parseCommandRequest({ ...base, issuedAt }), issuedAt).toThrow(
        /^invalid command: issuedAt: lies outside the years 0000-9999 in UTC[^;]*$/,
      );
    }
    const last = parseCommandRequest({ ...base, issuedAt: '9999-12-30T23:59:59.999Z' });
    expect(last.issuedAt).toBe('9999-12-30T23:59:59.999Z');
    expect(new Date(Date.parse(last.issuedAt!) + MAX_TTL_MS).toISOString()).toBe(
      '9999-12-31T23:59:59.999Z',
    );
    expect(parseCommandRequest({ ...base, issuedAt: '0000-01-01T00:00:00Z' }).issuedAt).toBe(
      '0000-01-01T00:00:00.000Z',
    );
  });

  it('says once per number what is allowed', () => {
    const errors = (input: Record<string, unknown>): readonly string[] => {
      try {
        parseCommandRequest({ ...base, ...input });
      } catch (error) {
        if (error instanceof InvalidCommandError) return error.errors;
        throw error;
      }
      return [];
    };
    for (const ttlMs of [1e21, 0, 1.5, -5, 86_400_001]) {
      expect(errors({ ttlMs }), String(ttlMs)).toEqual([
        'ttlMs: must be a whole number of milliseconds from 1 to 86400000 (a day)',
      ]);
    }
    for (const position of [-1, 100.5, 1e21]) {
      expect(errors({ action: 'move', position }), String(position)).toEqual([
        'position: must be a percentage from 0 to 100',
      ]);
    }
    expect(errors({ ttlMs: '5000' })).toEqual([expect.stringMatching(/^ttlMs: .*received string/)]);
  });

  it('refuses a result document: it is never taken for a command', () => {
    const result = {
      key: 'k',
      device: 'v1',
      action: 'open',
      state: 'rejected',
      code: 'FORBIDDEN_DEVICE',
      observed: null,
      replayed: false,
    };
    expect(() => parseCommandRequest(result)).toThrow(
      /state: is a field of a result document[\s\S]*code: is a field/,
    );
    expect(() => parseCommandRequest({ ...base, state: 'OPEN' })).toThrow(InvalidCommandError);
  });
});

describe('parseIdempotencyKey', () => {
  it('accepts 1 to 255 printable ASCII characters', () => {
    expect(parseIdempotencyKey('a')).toBe('a');
    expect(parseIdempotencyKey('x'.repeat(255))).toHaveLength(255);
    expect(parseIdempotencyKey('3f1c9a3e-2b7d-4a7e-9a51-4f0f8c1b2d3e')).toBeTruthy();
  });

  it("takes a new command's key without double quotes only; reads still take any key", () => {
    expect(parseCommandKey('a\\b!~')).toBe('a\\b!~');
    for (const key of ['"k"', 'a"b', '"']) {
      expect(() => parseCommandKey(key)).toThrow(/no double quote/);
      expect(parseIdempotencyKey(key)).toBe(key);
    }
    expect(() => parseCommandKey('has space')).toThrow(InvalidKeyError);
  });

  it.each([undefined, '', 'x'.repeat(256), 'has space', 'tab\there', 'ünïcode', 42])(
    'refuses %j',
    (key) => {
      expect(() => parseIdempotencyKey(key)).toThrow(InvalidKeyError);
    },
  );
});

describe('fingerprint', () => {
  const base = parseCommandRequest({
    device: 'inlet-valve',
    action: 'open',
    issuedAt: '2026-11-23T17:00:00Z',
  });

  it('is the same for the same instant written differently, and for field order', () => {
    const other = parseCommandRequest({
      issuedAt: '2026-11-23T18:00:00.000+01:00',
      action: 'open',
      device: 'inlet-valve',
    });
    expect(fingerprint(other)).toBe(fingerprint(base));
  });

  it('differs when any command field differs', () => {
    const variants = [
      { ...base, device: 'drain-valve' },
      { ...base, action: 'close' as const },
      { ...base, issuedAt: '2026-11-23T17:00:00.001Z' },
      { ...base, ttlMs: 30000 },
      { ...base, issuedAt: null },
    ];
    const prints = new Set([fingerprint(base), ...variants.map(fingerprint)]);
    expect(prints.size).toBe(variants.length + 1);
  });

  it('takes position -0 as 0, the same command as position 0', () => {
    const move = (position: number) =>
      parseCommandRequest({ device: 'act', action: 'move', position, issuedAt: base.issuedAt });
    // toBe is Object.is: -0 is not 0 to it.
    expect(move(-0).position).toBe(0);
    expect(JSON.parse('-0.0e5')).toBe(-0);
    expect(move(JSON.parse('-0.0e5') as number).position).toBe(0);
    expect(fingerprint(move(-0))).toBe(fingerprint(move(0)));
  });

  it('keeps an absent ttl distinct from the default value it stands for', () => {
    expect(fingerprint({ ...base, ttlMs: null })).not.toBe(fingerprint({ ...base, ttlMs: 30000 }));
  });
});

describe('checkFreshness (I3)', () => {
  const policy = { maxIssuerSkewMs: 2000 };
  const issuedAt = 1_000_000;
  const command = { issuedAt, deadline: issuedAt + 30_000 };

  it('is fresh up to one millisecond before the deadline', () => {
    expect(checkFreshness(command, issuedAt, policy)).toBe('FRESH');
    expect(checkFreshness(command, command.deadline - 1, policy)).toBe('FRESH');
  });

  it('is stale at and after the deadline', () => {
    expect(checkFreshness(command, command.deadline, policy)).toBe('STALE_COMMAND');
    expect(checkFreshness(command, command.deadline + 3_600_000, policy)).toBe('STALE_COMMAND');
  });

  it('allows issuedAt up to the issuer skew in the future, and no further', () => {
    expect(checkFreshness(command, issuedAt - 2000, policy)).toBe('FRESH');
    expect(checkFreshness(command, issuedAt - 2001, policy)).toBe('CLOCK_SKEW');
  });
});
