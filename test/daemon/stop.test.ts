import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { Daemon } from '../../src/daemon/daemon.js';
import { sha256 } from '../../src/intake/identities.js';
import { startPlant, type Plant } from '../../simulators/plant.js';
import { tempDir } from '../helpers/fixtures.js';
import {
  TestClient,
  mosquittoAvailable,
  startMosquitto,
  until,
  type Mosquitto,
} from '../helpers/mosquitto.js';
import { loopbackCertificate, httpsRequest } from '../helpers/loopback-https.js';
import { inventoryFor } from '../helpers/plant-inventory.js';

/**
 * SPEC §2's stop through the whole daemon, on both intakes and both simulators: an open sent
 * over HTTPS, a stop over MQTT while the valve travels. The valve stops near 40 %, the open
 * ends INTERRUPTED and is never written again, and both results are there on both intakes —
 * published on MQTT, answered and replayed over HTTPS. Ground truth: the simulator.
 */

const TOKEN = 'stop-token';
const real = mosquittoAvailable();
let plant: Plant;
let broker: Mosquitto;
let daemon: Daemon;
let cleanup: () => void;
let cert: string;

function https(
  method: string,
  path: string,
  headers: Record<string, string> = {},
  body?: unknown,
): Promise<{ status: number; headers: Record<string, unknown>; json: Record<string, unknown> }> {
  const target = { port: daemon.https!.port, ca: cert, token: TOKEN };
  return httpsRequest(target, method, path, headers, body).then((a) => ({
    status: a.status,
    headers: a.headers,
    json: a.json(),
  }));
}

beforeAll(async () => {
  if (!real) return;
  const { dir, cleanup: done } = tempDir('sluice-stop-');
  cleanup = done;
  plant = await startPlant(
    {
      control: { host: '127.0.0.1', port: 0 },
      plcs: {
        mb: {
          protocol: 'modbus',
          host: '127.0.0.1',
          port: 0,
          devices: { 'inlet-valve': { profile: 'valve', base: 0, travelMs: 2_000 } },
        },
        ua: {
          protocol: 'opcua',
          host: '127.0.0.1',
          port: 0,
          devices: { 'outlet-valve': { profile: 'valve', travelMs: 2_000 } },
        },
      },
    },
    { ephemeralPorts: true, control: false },
  );
  broker = await startMosquitto();
  cert = await loopbackCertificate(dir);
  const inventory = inventoryFor(plant);
  const configPath = join(dir, 'sluice.yaml');
  writeFileSync(
    configPath,
    stringify({
      gatewayId: 'stopsite',
      stateDir: 'state',
      https: { host: '127.0.0.1', port: 0, certFile: 'cert.pem', keyFile: 'key.pem' },
      mqtt: { url: broker.url, identity: 'scada', clientId: 'sluice-stop-test' },
      opcua: { acceptUnknownCertificates: true },
      identities: { scada: { tokenSha256: sha256(TOKEN).toString('hex'), devices: ['*'] } },
      plcs: inventory.plcs,
      devices: inventory.devices,
    }),
  );
  daemon = await Daemon.start(loadConfig(configPath, { env: {} }), {
    logger: pino({ level: 'silent' }),
  });
}, 60_000);

afterAll(async () => {
  if (!real) return;
  await daemon.stop();
  await broker.close();
  await plant.stop();
  cleanup();
});

describe.runIf(real)('stop through the daemon, on both intakes', () => {
  for (const device of ['inlet-valve', 'outlet-valve']) {
    it(`${device}: open over HTTPS, stop over MQTT near 40 %`, async () => {
      const valve = plant.device(device);
      const client = await TestClient.connect(broker.url);
      try {
        await client.subscribe('sluice/stopsite/result/#');
        await until(
          () => (daemon.readiness().checks.mqtt?.ok === true ? true : undefined),
          20_000,
          'the MQTT intake connected',
        );
        await until(
          () => (daemon.readiness().checks[`device:${device}`]?.ok === true ? true : undefined),
          20_000,
          `${device} reachable`,
        );
        const openKey = `open-${device}`;
        const stopKey = `stop-${device}`;
        const openBody = { device, action: 'open' };
        const accepted = await https(
          'POST',
          '/v1/commands',
          { 'idempotency-key': openKey, prefer: 'respond-async' },
          openBody,
        );
        expect(accepted.status).toBe(202);
        await until(
          () => (valve.snapshot().position >= 40 ? true : undefined),
          10_000,
          `${device} at 40 %`,
        );
        const stopPayload = { key: stopKey, action: 'stop', issuedAt: new Date().toISOString() };
        await client.publish(`sluice/stopsite/cmd/${device}`, stopPayload);

        // MQTT: both outcomes are published.
        const stopResult = await client.waitFor(
          (m) => m.topic === `sluice/stopsite/result/${device}` && m.json().key === stopKey,
          15_000,
          'the stop result',
        );
        const openResult = await client.waitFor(
          (m) => m.topic === `sluice/stopsite/result/${device}` && m.json().key === openKey,
          15_000,
          'the open result',
        );
        expect(stopResult.json()).toMatchObject({ state: 'confirmed', code: 'OK' });
        expect(openResult.json()).toMatchObject({ state: 'failed', code: 'INTERRUPTED' });
        expect(String(openResult.json().detail)).toMatch(new RegExp(`^stopped by ${stopKey} at`));

        // HTTPS: the open replays its outcome; the stop, sent over MQTT by the same identity,
        // is the same command over HTTPS.
        const replay = await https(
          'POST',
          '/v1/commands',
          { 'idempotency-key': openKey },
          openBody,
        );
        expect(replay.status).toBe(502);
        expect(replay.headers['idempotent-replayed']).toBe('true');
        expect(replay.json).toMatchObject({ code: 'INTERRUPTED', state: 'failed' });
        const stopOverHttps = await https('GET', `/v1/commands/${stopKey}`);
        expect(stopOverHttps.status).toBe(200);
        expect(stopOverHttps.json).toMatchObject({ state: 'confirmed', action: 'stop' });

        // Ground truth: stopped near 40 %, each key written once, the open never again.
        const live = valve.snapshot();
        expect(live.state).toBe('STOPPED');
        expect(live.position).toBeGreaterThan(35);
        expect(live.position).toBeLessThan(70);
        const openSeq = Number(openResult.json().seq);
        const stopSeq = Number(stopResult.json().seq);
        expect(valve.writesWithSeq(openSeq)).toBe(1);
        expect(valve.writesWithSeq(stopSeq)).toBe(1);
        expect(valve.writeLog.map((w) => w.seq)).toEqual([openSeq, stopSeq]);
      } finally {
        await client.end();
      }
    }, 60_000);
  }
});
