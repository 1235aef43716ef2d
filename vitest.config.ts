import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // The processes the tests start run from one compiled tree of the run (test/helpers/entry.ts).
    globalSetup: ['test/global-setup.ts'],
    // Run around every file: fails a file that leaves the shared process changed (see isolate).
    setupFiles: ['test/helpers/shared-process-guard.ts'],
    testTimeout: 30_000,
    hookTimeout: 30_000,
    pool: 'forks',
    // Three files at a time on two cores: most tests wait on real processes, sockets and
    // simulated travel. Measured on this project's 2-core runner: with two workers the suite
    // kept the cores busy about 60 % of the time (its files' CPU against their wall time), and
    // took 962 s where three took 765 s in the next run; four kept both cores 100 % busy, which
    // the timing-sensitive tests (simulated scans, guards, deadlines) must not have to survive.
    maxWorkers: 3,
    // The files of one worker share its process and module cache: measured on the 2-core runner,
    // a fresh process per file spent 228-278 s (summed over files) importing node-opcua,
    // fastify, mqtt and the sources again for each of some 180 files, where one process per
    // worker spends 26 s, and the suite took 432 s where it took 582-632 s, every case passing,
    // also with the files in shuffled order. It holds because no file leaves the process
    // changed (no environment variable set, no global or module stubbed, fake timers removed,
    // signal and error listeners removed: test/helpers/shared-process-guard.ts fails a file
    // that does), and each file stops the daemons, plants, brokers and servers it starts. A
    // file that cannot keep to that belongs in a project of its own with isolate: true.
    isolate: false,
    reporters: ['default'],
  },
});
