import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import {
  errorShape,
  noReadFailures,
  readFailed,
  readSucceeded,
  type ReadTime,
} from '../../src/core/read-failures.js';

/**
 * The run of failed reads one device keeps, and what it logs: warn once per error of a run
 * (not once per poll), info when reads recover. A real pino logger writes into an array.
 */

interface Line {
  readonly level: number;
  readonly msg: string;
  readonly error?: string;
  readonly previousError?: string;
  readonly failures?: number;
  readonly failedForMs?: number;
  readonly lastError?: string;
}

function logger(): { log: pino.Logger; lines: Line[] } {
  const lines: Line[] = [];
  const log = pino(
    { level: 'debug' },
    {
      write: (line: string) => {
        lines.push(JSON.parse(line) as Line);
      },
    },
  );
  return { log, lines };
}

const at = (mono: number): ReadTime => ({ now: 1_800_000_000_000 + mono, mono });
const REFUSED = 'plc: read 500+8: Modbus exception 0x02 (illegal data address)';

describe('read failures', () => {
  it('a run of failures: one warning, every failure counted, the recovery logged once', () => {
    const { log, lines } = logger();
    const failures = noReadFailures();
    for (let i = 0; i < 50; i++) readFailed(failures, 'device reads', REFUSED, at(i * 100), log);
    expect(failures.current).toEqual({
      message: REFUSED,
      since: at(0).now,
      lastAt: at(4_900).now,
      failures: 50,
      sinceMono: 0,
    });
    expect(lines.filter((l) => l.level === 40)).toEqual([
      expect.objectContaining({ msg: 'device reads fail', error: REFUSED, failures: 1 }),
    ]);
    expect(lines.filter((l) => l.level === 20)).toHaveLength(49);

    readSucceeded(failures, 'device reads', at(5_000), log);
    readSucceeded(failures, 'device reads', at(5_100), log);
    expect(failures.current).toBeNull();
    expect(failures.total).toBe(50);
    expect(lines.filter((l) => l.level === 30)).toEqual([
      expect.objectContaining({
        msg: 'device reads recovered',
        failures: 50,
        failedForMs: 5_000,
        lastError: REFUSED,
      }),
    ]);

    // A new run is said again.
    readFailed(failures, 'device reads', REFUSED, at(6_000), log);
    expect(lines.filter((l) => l.level === 40)).toHaveLength(2);
    expect(failures.current?.failures).toBe(1);
    expect(failures.total).toBe(51);
  });

  it('another error is said once; errors that alternate, or differ in numbers only, are not said again', () => {
    const { log, lines } = logger();
    const failures = noReadFailures();
    const refused4 = 'plc: read 500+8: Modbus exception 0x04 (server device failure)';
    const waiting = (ms: number): string =>
      `plc: not connected; next attempt in ${ms} ms (plc: connect to 127.0.0.1:5020 failed: ECONNREFUSED)`;
    const sequence = [REFUSED, refused4, REFUSED, refused4, waiting(734), waiting(512), waiting(9)];
    sequence.forEach((message, i) => {
      readFailed(failures, 'device reads', message, at(i), log);
    });
    expect(
      lines.filter((l) => l.level === 40).map((l) => [l.msg, l.error, l.previousError]),
    ).toEqual([
      ['device reads fail', REFUSED, undefined],
      ['device reads fail with another error', refused4, REFUSED],
      ['device reads fail with another error', waiting(734), refused4],
    ]);
    expect(failures.current).toMatchObject({ message: waiting(9), failures: 7, since: at(0).now });
  });

  it('keeps hexadecimal codes and blanks decimal numbers', () => {
    expect(errorShape('mb: read 100+8: Modbus exception 0x02 (illegal data address)')).toBe(
      'mb: read #+#: Modbus exception 0x02 (illegal data address)',
    );
    expect(errorShape('ua: connection attempt 12 failed; next in 2000 ms')).toBe(
      'ua: connection attempt # failed; next in # ms',
    );
    expect(errorShape('connect to 10.0.0.7:502 failed')).toBe('connect to #:# failed');
  });

  it('at most 16 distinct errors of one run are warned; the rest go to debug', () => {
    const { log, lines } = logger();
    const failures = noReadFailures();
    for (let i = 0; i < 40; i++) {
      readFailed(failures, 'controller clock reads', `error ${'x'.repeat(i)}`, at(i), log);
    }
    expect(lines.filter((l) => l.level === 40)).toHaveLength(16);
    expect(lines.filter((l) => l.level === 20)).toHaveLength(24);
    expect(lines[0]?.msg).toBe('controller clock reads fail');
  });
});
