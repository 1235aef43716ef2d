import { execFileSync } from 'node:child_process';

/**
 * Tests that need a real component (mosquitto, mbpoll, ptp4l) skip with a clear message when
 * it is missing, except under SLUICE_REQUIRE_REAL=1 (CI), where a missing component fails.
 */
export const requireReal = process.env.SLUICE_REQUIRE_REAL === '1';

export function hasCommand(command: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${command}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/**
 * Returns true when the component is present. When it is missing: throws under
 * SLUICE_REQUIRE_REAL=1, otherwise prints why the dependent tests are skipped.
 */
export function realComponent(what: string, present: boolean, install: string): boolean {
  if (present) return true;
  const message = `${what} is not available (${install}); its tests are skipped`;
  if (requireReal)
    throw new Error(`SLUICE_REQUIRE_REAL=1 but ${message.replace('; its tests are skipped', '')}`);
  console.warn(message);
  return false;
}

export const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;
