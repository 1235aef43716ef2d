import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  judgeObservation,
  type ChronyObservation,
  type GatewayClockPolicy,
} from '../../src/core/gateway-clock.js';
import { CHRONYC_ARGS, chronyReader, parseChronyTracking } from '../../src/clock/chrony.js';
import type { Exec, ExecResult } from '../../src/clock/exec.js';

/**
 * `chronyc -c tracking` outputs written by hand from the documented format (chronyc(1) and
 * chronyc.c print_report() in CSV mode): chrony is not installed here and must not be started
 * on this machine (it would adjust the clock). See fixtures/README.md.
 */
const FIXTURES = join(import.meta.dirname, 'fixtures', 'chrony');
const fixture = (name: string): string => readFileSync(join(FIXTURES, name), 'utf8');
const POLICY: GatewayClockPolicy = { maxOffsetNs: 1_000_000, holdoverMs: 10_000 };

function observed(name: string): ChronyObservation {
  const parsed = parseChronyTracking(fixture(name));
  if (!parsed.ok) throw new Error(`${name}: ${parsed.error}`);
  return parsed.observation;
}

describe('chronyc -c tracking', () => {
  it('synchronised to an NTP server: the offset from "System time", sign turned to clock − true time', () => {
    const o = observed('synchronised-ntp.csv');
    expect(o).toMatchObject({
      source: 'chrony',
      referenceId: 'C0A80001',
      referenceName: '192.168.0.1',
      stratum: 3,
      leapStatus: 'Normal',
      refTimeMs: 1764612000123.4568,
    });
    // System time -0.000012345 s: the clock is fast by 12.345 µs (not "Last offset", -10.001 µs).
    expect(o.offsetNs).toBeCloseTo(12_345, 3);
    // |offset| + root dispersion 300 µs + root delay 1.2 ms / 2.
    expect(o.maxErrorNs).toBeCloseTo(12_345 + 300_000 + 600_000, 3);
    expect(judgeObservation(o, POLICY)).toMatchObject({
      locked: true,
      offsetNs: 12_345,
      grandmaster: '192.168.0.1',
      portState: null,
    });
    // A tighter bound than chrony's error bound: not locked, though the offset is small.
    const tight = judgeObservation(o, { ...POLICY, maxOffsetNs: 100_000 });
    expect(tight.locked).toBe(false);
    expect(tight.detail).toContain('error bound 912345 ns');
  });

  it('a PHC reference clock: a slow clock (positive "System time") has a negative offset', () => {
    const o = observed('synchronised-phc-refclock.csv');
    expect(o.offsetNs).toBeCloseTo(-21, 6);
    expect(judgeObservation(o, POLICY)).toMatchObject({
      locked: true,
      offsetNs: -21,
      grandmaster: 'PHC0',
    });
  });

  it('a leap second announced is still synchronised', () => {
    const o = observed('leap-insert-second.csv');
    expect(o.leapStatus).toBe('Insert second');
    expect(judgeObservation(o, POLICY).locked).toBe(true);
  });

  it('"Not synchronised" (chronyd starting, or no source ever selected): not locked', () => {
    const o = observed('not-synchronised.csv');
    expect(o).toMatchObject({ referenceId: '00000000', referenceName: '', stratum: 0 });
    const judged = judgeObservation(o, POLICY);
    expect(judged).toMatchObject({ locked: false, grandmaster: null });
    expect(judged.detail).toContain('chrony: not synchronised');
  });

  it('the local directive (reference 7F7F0101) is not a time source', () => {
    const judged = judgeObservation(observed('local-reference.csv'), POLICY);
    expect(judged.locked).toBe(false);
    expect(judged.detail).toContain('local directive');
  });

  it('sources lost: leap status still Normal, the dispersion has grown beyond the bound', () => {
    const o = observed('sources-lost-dispersion.csv');
    expect(o.leapStatus).toBe('Normal');
    expect(Math.abs(o.offsetNs)).toBeLessThan(1000);
    expect(judgeObservation(o, POLICY).locked).toBe(false);
  });

  it('truncated or foreign output: no observation', () => {
    expect(parseChronyTracking(fixture('truncated.csv'))).toMatchObject({ ok: false });
    expect(parseChronyTracking('')).toEqual({ ok: false, error: 'no output from chronyc' });
    expect(parseChronyTracking('Reference ID    : C0A80001 (192.168.0.1)\n').ok).toBe(false);
    const badNumber = fixture('synchronised-ntp.csv').replace('-0.000012345', 'slow');
    expect(parseChronyTracking(badNumber)).toMatchObject({ ok: false });
  });
});

describe('chronyReader (injected exec)', () => {
  const result = (over: Partial<ExecResult>): ExecResult => ({
    stdout: '',
    stderr: '',
    code: 0,
    timedOut: false,
    error: null,
    ...over,
  });
  const fake = (r: ExecResult): { exec: Exec; calls: string[][] } => {
    const calls: string[][] = [];
    return {
      calls,
      exec: (file, args) => {
        calls.push([file, ...args]);
        return Promise.resolve(r);
      },
    };
  };

  it('runs chronyc -c tracking and reads its line', async () => {
    const { exec, calls } = fake(result({ stdout: fixture('synchronised-phc-refclock.csv') }));
    const probe = await chronyReader({ exec })();
    expect(calls).toEqual([['chronyc', ...CHRONYC_ARGS]]);
    expect(CHRONYC_ARGS).toEqual(['-c', 'tracking']);
    expect(probe.kind === 'observed' && probe.observation.source).toBe('chrony');
  });

  it('chronyd not running: unreachable with chronyc’s message', async () => {
    const { exec } = fake(result({ code: 1, stderr: fixture('cannot-talk-to-daemon.stderr') }));
    expect(await chronyReader({ exec })()).toEqual({
      kind: 'unreachable',
      source: 'chrony',
      error: 'chronyc exited with status 1: 506 Cannot talk to daemon',
    });
  });

  it('timed out, missing, unparseable: unreachable', async () => {
    const timedOut = await chronyReader({
      timeoutMs: 500,
      exec: fake(result({ code: null, timedOut: true })).exec,
    })();
    expect(timedOut).toMatchObject({ error: 'chronyc timed out after 500 ms' });
    const missing = await chronyReader({
      exec: fake(result({ code: null, error: 'chronyc: ENOENT' })).exec,
    })();
    expect(missing).toMatchObject({ error: 'chronyc could not run: chronyc: ENOENT' });
    const garbage = await chronyReader({
      exec: fake(result({ stdout: fixture('truncated.csv') })).exec,
    })();
    expect(garbage.kind).toBe('unreachable');
  });
});
