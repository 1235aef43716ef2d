import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { Daemon } from '../../src/daemon/daemon.js';
import type { Plant } from '../../simulators/plant.js';
import { startSluiced } from '../config/sluiced.js';
import { startModbusPlant, writeDaemonSite } from '../helpers/daemon-site.js';
import { tempDir } from '../helpers/fixtures.js';

/**
 * One daemon per journal (src/journal/writer-lock.ts). Two on one journal would each take up
 * the other's open commands, and the sweep of one could write a command the other was about to
 * write (I1). A second sluiced started by mistake beside the service must refuse before it
 * connects to anything, and leave the running one as it was; a killed daemon's lock must not
 * outlive it. On real sluiced processes and a real daemon against sluice-sim; ground truth:
 * the simulator's writes, and what the second process printed.
 */

let plant: Plant;
let dir: string;
let cleanup: () => void;
let configPath: string;
const quiet = pino({ level: 'silent' });

beforeAll(async () => {
  ({ dir, cleanup } = tempDir('sluice-single-'));
  plant = await startModbusPlant({ 'inlet-valve': { profile: 'valve', base: 0, travelMs: 0 } });
  configPath = await writeDaemonSite(dir, plant, 'single');
}, 30_000);

afterAll(async () => {
  await plant.stop();
  cleanup();
});

/** A command through the daemon's pipeline, confirmed, and written once (the simulator's log). */
async function commandWorks(daemon: Daemon, key: string): Promise<void> {
  const valve = plant.device('inlet-valve');
  const action = valve.state === 'OPEN' ? 'close' : 'open';
  const claim = daemon.pipeline.submit({
    key,
    identity: { scope: 'ops', devices: 'all' },
    intake: 'test',
    request: { device: 'inlet-valve', action, position: null, issuedAt: null, ttlMs: 30_000 },
  });
  const settled = await daemon.pipeline.waitForSettled(claim.record, 10_000);
  expect(settled).toMatchObject({ state: 'confirmed', code: 'OK' });
  expect(valve.writesWithSeq(settled?.seq ?? -1)).toBe(1);
}

describe('one daemon per journal', () => {
  it('a second sluiced on the same journal refuses to start, before it connects to anything', async () => {
    const first = await Daemon.start(loadConfig(configPath, { env: {} }), { logger: quiet });
    try {
      await commandWorks(first, 'single-before');
      const plc = plant.plc('mb');
      const connections = plc.connectionsAccepted;
      const written = plant.device('inlet-valve').counters.writesReceived;
      const second = startSluiced(['--config', configPath]);
      try {
        // Whichever comes first: its exit, or (the failure this test is for) its start.
        const outcome = await Promise.race([
          second.exited.then((code) => `exited ${String(code)}`),
          second
            .line((l) => l.includes('"msg":"sluiced started"'), 30_000)
            .then(
              () => 'started',
              () => 'neither',
            ),
        ]);
        expect(outcome).toBe('exited 1');
      } finally {
        await second.kill();
      }
      const refused = second.lines.find((l) => l.includes('"msg":"sluiced could not start"'));
      expect(refused).toMatch(/in use by another sluiced/);
      expect(refused).toContain(join(dir, 'state', 'journal.db'));
      // It stopped before the drivers, the intakes, recovery: nothing of it reached the PLC
      // (ground truth: the PLC accepted no connection while it ran, and took no write).
      expect(plc.connectionsAccepted).toBe(connections);
      expect(plant.device('inlet-valve').counters.writesReceived).toBe(written);
      // The running daemon goes on as before.
      await commandWorks(first, 'single-after');
    } finally {
      await first.stop();
    }
  }, 60_000);

  it('the lock goes with the daemon: after a stop, and after a kill', async () => {
    // The daemon of the first test has stopped: a new one starts.
    const killed = startSluiced(['--config', configPath]);
    await killed.line((l) => l.includes('"msg":"sluiced started"'), 30_000);
    // SIGKILL: no handler runs, nothing is released by the daemon itself.
    expect(await killed.kill()).toBeNull();
    const connections = plant.plc('mb').connectionsAccepted;
    const next = await Daemon.start(loadConfig(configPath, { env: {} }), { logger: quiet });
    try {
      await commandWorks(next, 'single-after-kill');
      // The count the first test relies on sees a daemon's connections.
      expect(plant.plc('mb').connectionsAccepted).toBeGreaterThan(connections);
    } finally {
      await next.stop();
    }
  }, 60_000);
});
