import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { stringify } from 'yaml';
import { afterAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { Daemon } from '../../src/daemon/daemon.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { startPlant, type Plant } from '../../simulators/plant.js';
import { tempDir } from '../helpers/fixtures.js';
import {
  TestClient,
  mosquittoAvailable,
  startMosquitto,
  until,
  type Mosquitto,
} from '../helpers/mosquitto.js';
import { inventoryFor } from '../helpers/plant-inventory.js';
import { slowFdatasync } from '../helpers/slow-fdatasync.js';

/**
 * A stop claimed just before SIGTERM (the graceful stop, Daemon.stop) is carried out within the
 * shutdown bound (SPEC §2: a stop is dispatched at once; §9: in-flight commands settle): the
 * real daemon on an MQTT-only gateway, the real Mosquitto, sluice-sim and the real journal. The
 * stop preempts the travelling open at its claim and waits in the valve's queue for the open's
 * worker, which waits for the stop's claim to be on disk; the graceful stop came meanwhile and
 * emptied the queues, so the stop, PUBACKed once its claim was on disk, was never written and
 * the valve ran to OPEN (after `systemctl stop`, for good). Ground truth: the simulator's write
 * log and position, and the journal read through a connection of its own.
 *
 * The one double: fs.fdatasync made slow (slow-fdatasync.ts), a gateway's worn flash that no
 * real part here produces, so that the stop's claim barrier lasts long enough for the test to
 * see the claim in the journal and send SIGTERM inside it, where on this machine's disk the
 * window is a millisecond and two turns of the event loop.
 */

const real = mosquittoAvailable();
let plant: Plant | undefined;
let broker: Mosquitto | undefined;
let cleanup: (() => void) | undefined;

afterAll(async () => {
  await broker?.close();
  await plant?.stop();
  cleanup?.();
});

describe.runIf(real)('a stop claimed just before SIGTERM', () => {
  it('is written within the shutdown bound: the valve stops, the open ends INTERRUPTED', async () => {
    const { dir, cleanup: done } = tempDir('sluice-stop-sigterm-');
    cleanup = done;
    plant = await startPlant(
      {
        control: { host: '127.0.0.1', port: 0 },
        plcs: {
          mb: {
            protocol: 'modbus',
            host: '127.0.0.1',
            port: 0,
            devices: { 'inlet-valve': { profile: 'valve', base: 0, travelMs: 10_000 } },
          },
        },
      },
      { ephemeralPorts: true, control: false },
    );
    broker = await startMosquitto();
    const inventory = inventoryFor(plant);
    const configPath = join(dir, 'sluice.yaml');
    writeFileSync(
      configPath,
      stringify({
        gatewayId: 'site',
        stateDir: 'state',
        mqtt: { url: broker.url, identity: 'scada', clientId: 'sluice-stop-sigterm-test' },
        identities: { scada: { devices: ['*'] } },
        admin: { enabled: false },
        plcs: inventory.plcs,
        devices: inventory.devices,
      }),
    );
    const daemon = await Daemon.start(loadConfig(configPath, { env: {} }), {
      logger: pino({ level: 'silent' }),
    });
    const valve = plant.device('inlet-valve');
    const client = await TestClient.connect(broker.url);
    const journal = SqliteJournal.open({
      path: join(dir, 'state', 'journal.db'),
      readonly: true,
    });
    try {
      await until(() => (daemon.readiness().checks.mqtt?.ok === true ? true : undefined), 20_000);
      await until(
        () => (daemon.readiness().checks['device:inlet-valve']?.ok === true ? true : undefined),
        20_000,
      );
      const topic = 'sluice/site/cmd/inlet-valve';
      const now = (): string => new Date().toISOString();
      await client.publish(topic, { key: 'open-1', action: 'open', issuedAt: now() });
      await until(() => (valve.snapshot().position >= 20 ? true : undefined), 10_000, '20 %');

      const disk = slowFdatasync(1_000);
      let stopping: Promise<void>;
      try {
        await client.publish(topic, { key: 'stop-1', action: 'stop', issuedAt: now() });
        // Claimed (committed, its fdatasync still to come): SIGTERM now.
        await until(
          () => (journal.get({ scope: 'scada', key: 'stop-1' }) === undefined ? undefined : true),
          10_000,
          'the stop claimed',
        );
        stopping = daemon.stop();
      } finally {
        disk.restore();
      }
      await stopping;

      const open = journal.get({ scope: 'scada', key: 'open-1' });
      const stop = journal.get({ scope: 'scada', key: 'stop-1' });
      expect({ state: stop?.state, code: stop?.code }).toEqual({ state: 'confirmed', code: 'OK' });
      expect({ state: open?.state, code: open?.code }).toEqual({
        state: 'failed',
        code: 'INTERRUPTED',
      });
      // Two writes: the open's, then the stop's; the valve rests where the stop caught it.
      expect(valve.writeLog.map((w) => w.seq)).toEqual([open?.seq, stop?.seq]);
      const { state, position } = valve.snapshot();
      expect(state).toBe('STOPPED');
      expect(position).toBeLessThan(100);
    } finally {
      journal.close();
      await client.end();
      await daemon.stop();
    }
  }, 90_000);
});
