import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { Daemon } from '../../src/daemon/daemon.js';
import type { Plant } from '../../simulators/plant.js';
import { startSluiced } from '../config/sluiced.js';
import { startModbusPlant, writeDaemonSite } from '../helpers/daemon-site.js';
import { journalWithDamagedKeyIndex } from '../helpers/damaged-journal.js';
import { tempDir } from '../helpers/fixtures.js';

/**
 * A journal whose header is intact but one of whose pages is damaged (a torn write on a power
 * cut, a failing SD card) opened without an error: SQLite meets a damaged page only when a
 * statement reads it. sluiced started on it, and the keys and open commands on that page were
 * lost to it (I1, I5) while every other command went on. It must refuse to start, naming the
 * file, what is wrong and what to do, before it connects to anything, and leave the file as it
 * is. The journal is made by a real daemon and the journal's own code; the damage is garbage
 * written into one page of the file; ground truth: the file's bytes and the PLC's connections.
 */

let plant: Plant;
let dir: string;
let cleanup: () => void;
let configPath: string;

beforeAll(async () => {
  ({ dir, cleanup } = tempDir('sluice-damaged-'));
  plant = await startModbusPlant({ 'inlet-valve': { profile: 'valve', base: 0, travelMs: 0 } });
  configPath = await writeDaemonSite(dir, plant, 'damaged');
}, 30_000);

afterAll(async () => {
  await plant.stop();
  cleanup();
});

describe('a journal with a damaged page', () => {
  it('sluiced refuses to start on it, says which file, what is wrong and what to do, and leaves it as it is', async () => {
    const path = join(dir, 'state', 'journal.db');
    const daemon = await Daemon.start(loadConfig(configPath, { env: {} }), {
      logger: pino({ level: 'silent' }),
    });
    try {
      const claim = daemon.pipeline.submit({
        key: 'before-damage',
        identity: { scope: 'ops', devices: 'all' },
        intake: 'test',
        request: {
          device: 'inlet-valve',
          action: 'open',
          position: null,
          issuedAt: null,
          ttlMs: 30_000,
        },
      });
      expect(await daemon.pipeline.waitForSettled(claim.record, 10_000)).toMatchObject({
        state: 'confirmed',
      });
    } finally {
      await daemon.stop();
    }
    journalWithDamagedKeyIndex(path);
    const damaged = readFileSync(path);
    const connections = plant.plc('mb').connectionsAccepted;

    const sluiced = startSluiced(['--config', configPath]);
    try {
      const outcome = await Promise.race([
        sluiced.exited.then((code) => `exited ${String(code)}`),
        sluiced
          .line((l) => l.includes('"msg":"sluiced started"'), 30_000)
          .then(
            () => 'started',
            () => 'neither',
          ),
      ]);
      // 3: the unit does not restart on it (RestartPreventExitStatus): no restart mends it.
      expect(outcome).toBe('exited 3');
    } finally {
      await sluiced.kill();
    }
    const refused = sluiced.lines.find((l) =>
      l.includes(
        '"msg":"sluiced could not start, and a restart cannot mend it: an operator must act"',
      ),
    );
    expect(refused).toContain(`${path} is damaged`);
    expect(refused).toMatch(/Restore the journal from a backup, or move it aside/);
    // Nothing of it reached the PLC, and the file is as it was.
    expect(plant.plc('mb').connectionsAccepted).toBe(connections);
    expect(readFileSync(path).equals(damaged)).toBe(true);
  }, 60_000);
});
