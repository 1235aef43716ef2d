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
    // Four files at a time on two cores: most tests wait on real processes, sockets and
    // simulated travel. Measured on this project's 2-core machine (the suite as of December
    // 2026, 1,707 cases): with three workers the run took 610-690 s, its CPU (user and system
    // time of every process it started) 991 s, the cores 74 % busy, every worker busy with a
    // file nearly all the run (the files' waits bound it, not the CPU); with four, 509-523 s, the
    // cores 78-82 % busy. Two workers kept them about 60 % busy (962 s where three took 765 s,
    // an earlier suite). The timing-sensitive tests (simulated scans, guards, deadlines) are
    // to pass on a machine this busy: the cases that did not were fixed, not given a worker.
    maxWorkers: 4,
    // The files of one worker share its process and module cache: measured on the 2-core runner,
    // a fresh process per file spent 228-278 s (summed over files) importing node-opcua,
    // fastify, mqtt and the sources again for each of some 180 files, where one process per
    // worker spends 26 s, and the suite took 432 s where it took 582-632 s, every case passing,
    // also with the files in shuffled order. It holds because no file leaves the process
    // changed (no environment variable set, no global or module stubbed, fake timers removed,
    // signal and error listeners removed: test/helpers/shared-process-guard.ts fails a file
    // that does, and checks every function of node:fs and node:fs/promises and the clocks and
    // timers a file may replace with a double; a stub of anything else is for each file to undo), and each file stops the daemons, plants, brokers and servers it starts. A
    // file that cannot keep to that belongs in a project of its own with isolate: true.
    isolate: false,
    reporters: ['default'],
  },
});
