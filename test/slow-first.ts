import { BaseSequencer, type TestSpecification } from 'vitest/node';

/**
 * The files that take longest, slowest first, as measured in a CI run (2026-12-06, 3 workers on
 * 2 cores). Vitest's own order without a cache of earlier runs (a clean clone in CI) is by file
 * size, largest first: a slow file whose cases live in a helper (the invariants property, split
 * into two small files) started last, and the run ended some 30 s after the other workers had
 * run out of files (610 s of wall time for 1,738 s of files on three workers). Started first, the
 * long files overlap the many short ones. A file missing from the list keeps vitest's order
 * after those on it; a renamed or removed one is simply not matched.
 */
export const SLOW_FIRST = [
  'test/daemon/demo.test.ts',
  'test/reliability/crash-campaign.test.ts',
  'test/reliability/faults.test.ts',
  'test/core/invariants.property.test.ts',
  'test/bench/smoke.test.ts',
  'test/core/stop-withheld.test.ts',
  'test/systemd/install.test.ts',
  'test/daemon/stuck-stop-pause.test.ts',
  'test/intake/mqtt-identifiers-dropped.test.ts',
  'test/drivers/contract.test.ts',
  'test/daemon/https-slow-link.test.ts',
  'test/core/invariants-opcua.property.test.ts',
  'test/ui/ui-browser.test.ts',
  'test/core/write-not-sent.test.ts',
  'test/daemon/stop-guard-restart.test.ts',
  'test/core/recovery.test.ts',
  'test/reliability/fuzz.test.ts',
  'test/drivers/opcua-security.test.ts',
  'test/core/safety.test.ts',
  'test/core/late-echo.test.ts',
];

/** Vitest's sequencer, with the files of SLOW_FIRST moved to the front in that order. */
export class SlowFirstSequencer extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    const sorted = await super.sort(files);
    const rank = (file: TestSpecification): number => {
      const path = file.moduleId.replace(/\\/g, '/');
      const at = SLOW_FIRST.findIndex((slow) => path.endsWith(`/${slow}`));
      return at === -1 ? SLOW_FIRST.length : at;
    };
    // Array.prototype.sort is stable: the rest keep vitest's order.
    return [...sorted].sort((a, b) => rank(a) - rank(b));
  }
}
