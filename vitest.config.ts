import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 30_000,
    hookTimeout: 30_000,
    pool: 'forks',
    // Two files at a time: most tests wait on real processes, sockets and simulated travel,
    // not on the CPU, so two workers fit two cores (the default would be one).
    maxWorkers: 2,
    reporters: ['default'],
  },
});
