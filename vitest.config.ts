import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // The processes the tests start run from one compiled tree of the run (test/helpers/entry.ts).
    globalSetup: ['test/global-setup.ts'],
    testTimeout: 30_000,
    hookTimeout: 30_000,
    pool: 'forks',
    // Three files at a time on two cores: most tests wait on real processes, sockets and
    // simulated travel. Measured on this project's 2-core runner: with two workers the suite
    // kept the cores busy about 60 % of the time (its files' CPU against their wall time), and
    // took 962 s where three took 765 s in the next run; four kept both cores 100 % busy, which
    // the timing-sensitive tests (simulated scans, guards, deadlines) must not have to survive.
    maxWorkers: 3,
    reporters: ['default'],
  },
});
