import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { parseProfile } from '../../src/core/profile.js';
import { ROOT } from '../helpers/fixtures.js';

/**
 * timing.ackedWriteTakenWithinMs below the controller's scan: a controller takes a write it
 * received at its next scan, so one that arrives just after a scan is kept a whole scan. A
 * bound shorter than that is one no controller of that scan keeps: the next command after a
 * resolved write would be decided before the scan that takes it. Refused like a bound above the
 * confirm timeout, naming the field and both values.
 */
const valve = (): Record<string, unknown> & { timing: Record<string, unknown> } =>
  parse(readFileSync(join(ROOT, 'devices', 'profiles', 'valve.yaml'), 'utf8')) as Record<
    string,
    unknown
  > & { timing: Record<string, unknown> };

function errorOf(ms: number): string | null {
  const data = valve();
  data.timing.ackedWriteTakenWithinMs = ms;
  try {
    parseProfile(data, 'valve.yaml');
    return null;
  } catch (error) {
    return error instanceof Error ? error.message : String(error);
  }
}

describe("a profile's bound on an acknowledged write against its scan", () => {
  it('refuses one shorter than scanMs, naming the field and both values', () => {
    expect(valve().timing.scanMs).toBe(10);
    expect(errorOf(9)).toContain(
      'timing.ackedWriteTakenWithinMs: 9 ms is shorter than scanMs (10 ms): the controller takes a write it received at its next scan, up to a scan later; raise it to at least the scan, or leave it out (the confirm timeout)',
    );
  });

  it('accepts one of a scan or more', () => {
    expect(errorOf(10)).toBeNull();
    expect(errorOf(100)).toBeNull();
  });
});
