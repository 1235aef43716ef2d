import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { stringify } from 'yaml';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { Daemon } from '../../src/daemon/daemon.js';
import { IMAGE_FROZEN_MS } from '../../src/core/device-monitor.js';
import type { DeviceDocument } from '../../src/intake/device-view.js';
import { sha256 } from '../../src/intake/identities.js';
import { startPlant, type Plant } from '../../simulators/plant.js';
import { tempDir } from '../helpers/fixtures.js';
import { httpsRequest, loopbackCertificate, type HttpsAnswer } from '../helpers/loopback-https.js';
import { sluicectl } from '../cli/helpers.js';
import { until } from '../helpers/mosquitto.js';
import { inventoryFor } from '../helpers/plant-inventory.js';

/**
 * A controller that answers reads but has stopped publishing its image (a PLC in STOP, a
 * halted program: sluice-sim's `frozen` fault) looked healthy: every read arrived, so /readyz
 * said "readback 40 ms ago" while the mirror showed a state the valve had long left. Through
 * the whole daemon on a real sluice-sim plant: /v1/devices says how long the same scan has
 * been returned, and /readyz names the device once that passes IMAGE_FROZEN_MS — and is ready
 * again once the controller publishes.
 */

const TOKEN = 'image-frozen-token';

let plant: Plant;
let daemon: Daemon;
let cleanup: () => void;
let cert: string;
let configPath: string;

function https(path: string): Promise<HttpsAnswer> {
  return httpsRequest({ port: daemon.https!.port, ca: cert, token: TOKEN }, 'GET', path);
}

async function device(id: string): Promise<DeviceDocument> {
  const answer = await https(`/v1/devices/${id}`);
  expect(answer.status).toBe(200);
  return answer.json() as unknown as DeviceDocument;
}

async function deviceCheck(id: string): Promise<{ status: number; ok: boolean; detail: string }> {
  const answer = await https('/readyz');
  const checks = answer.json().checks as Record<string, { ok: boolean; detail: string }>;
  return { status: answer.status, ...checks[`device:${id}`]! };
}

beforeAll(async () => {
  const { dir, cleanup: done } = tempDir('sluice-image-frozen-');
  cleanup = done;
  plant = await startPlant(
    {
      control: { host: '127.0.0.1', port: 0 },
      plcs: {
        mb: {
          protocol: 'modbus',
          host: '127.0.0.1',
          port: 0,
          devices: { 'inlet-valve': { profile: 'valve', base: 0, travelMs: 200 } },
        },
      },
    },
    { ephemeralPorts: true, control: false },
  );
  cert = await loopbackCertificate(dir);
  const inventory = inventoryFor(plant);
  configPath = join(dir, 'sluice.yaml');
  writeFileSync(
    configPath,
    stringify({
      gatewayId: 'imagefrozen',
      stateDir: 'state',
      https: {
        host: '127.0.0.1',
        port: 0,
        certFile: 'cert.pem',
        keyFile: 'key.pem',
        rateLimit: { perSecond: 1_000, burst: 1_000 },
      },
      identities: { ops: { tokenSha256: sha256(TOKEN).toString('hex'), devices: ['*'] } },
      plcs: inventory.plcs,
      devices: inventory.devices,
    }),
  );
  daemon = await Daemon.start(loadConfig(configPath, { env: {} }), {
    logger: pino({ level: 'silent' }),
    monitorIntervalMs: 100,
  });
}, 60_000);

afterAll(async () => {
  await daemon.stop();
  await plant.stop();
  cleanup();
}, 30_000);

it('a frozen image is named in /readyz and /v1/devices, and ready again once it is published', async () => {
  const valve = plant.device('inlet-valve');
  // Publishing: each read returns a newer scan.
  const live = await until(
    async () => {
      const check = await deviceCheck('inlet-valve');
      return check.status === 200 ? check : undefined;
    },
    15_000,
    'the daemon ready',
  );
  expect(live.detail).toMatch(/^readback \d+ ms ago$/);
  const fresh = await device('inlet-valve');
  expect(fresh.imageUnchangedMs).not.toBeNull();
  expect(fresh.imageUnchangedMs!).toBeLessThan(1_000);

  valve.setFault({ kind: 'frozen' });
  const frozenScan = valve.published.scanTime;
  // /v1/devices: the same scan returned for longer and longer while reads arrive.
  const growing = await until(
    async () => {
      const doc = await device('inlet-valve');
      return doc.imageUnchangedMs !== null && doc.imageUnchangedMs >= 2_000 ? doc : undefined;
    },
    10_000,
    'the same scan for two seconds',
  );
  expect(growing.readbackAgeMs!).toBeLessThan(2_000);
  expect(Date.parse(growing.mirror!.sourceTime!)).toBe(frozenScan);

  // /readyz: not ready once the same scan has stood for IMAGE_FROZEN_MS, naming why.
  const frozen = await until(
    async () => {
      const check = await deviceCheck('inlet-valve');
      return check.ok ? undefined : check;
    },
    IMAGE_FROZEN_MS + 10_000,
    'the device named frozen',
  );
  expect(frozen.status).toBe(503);
  expect(frozen.detail).toMatch(
    new RegExp(
      `^readback \\d+ ms ago, but the controller's image has shown the same scan \\(${new Date(frozenScan).toISOString().replace(/\./g, '\\.')}, controller clock\\) for \\d+ ms: the controller has stopped publishing it \\(a PLC in STOP, a halted program\\); the mirror is not what the device does, and commands on it are not confirmed$`,
    ),
  );
  // Ground truth: the simulator's image really has not been published since.
  expect(valve.published.scanTime).toBe(frozenScan);
  // /metrics: the same, for an alert.
  const metrics = (await https('/metrics')).body;
  const line = /^sluice_device_image_unchanged_seconds\{device="inlet-valve"\} (\S+)$/m.exec(
    metrics,
  );
  expect(Number(line?.[1])).toBeGreaterThanOrEqual(IMAGE_FROZEN_MS / 1000);
  // sluicectl devices: the readback column says so.
  const devices = await sluicectl(['--config', configPath, 'devices']);
  expect(devices.code, devices.stderr).toBe(0);
  expect(devices.stdout).toMatch(/^inlet-valve\s.*\d+(ms|s) ago, image frozen \d+s\s/m);

  // Published again: ready, and the count starts over.
  valve.clearFault('frozen');
  const back = await until(
    async () => {
      const check = await deviceCheck('inlet-valve');
      return check.status === 200 ? check : undefined;
    },
    10_000,
    'ready again',
  );
  expect(back.detail).toMatch(/^readback \d+ ms ago$/);
  expect((await device('inlet-valve')).imageUnchangedMs!).toBeLessThan(1_000);
}, 60_000);
