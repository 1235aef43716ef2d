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
import { httpsRequest, loopbackCertificate, RawJson } from '../helpers/loopback-https.js';
import {
  mosquittoAvailable,
  startMosquitto,
  TestClient,
  until,
  type Mosquitto,
} from '../helpers/mosquitto.js';
import { inventoryFor } from '../helpers/plant-inventory.js';

/**
 * `"position": -0` is JSON for the number 0 (RFC 8259 §6 has no signed zero for an issuer to
 * mean), and a move to it is a move to 0 %: through the daemon's HTTPS and MQTT intakes, to a
 * Modbus positioner whose float32 setpoint would carry the sign bit (0x80000000) and an OPC UA
 * actuator whose Double setpoint would, the controller receives 0, and a retry spelling `0`
 * is the same command (a replay, not a key reuse). Ground truth: the simulator's write log.
 */

const real = mosquittoAvailable();
const TOKEN = 'zero-token';

describe.runIf(real)('a move to position -0', () => {
  let broker: Mosquitto;
  let plant: Plant;
  let daemon: Daemon;
  let cert: string;
  let issuer: TestClient;
  const cleanups: (() => Promise<void> | void)[] = [];

  /** A POST with the body exactly as written (JSON.stringify would turn -0 into 0). */
  const post = async (
    key: string,
    body: string,
  ): Promise<{ status: number; json: Record<string, unknown> }> => {
    const answer = await httpsRequest(
      { port: daemon.https!.port, ca: cert, token: TOKEN },
      'POST',
      '/v1/commands',
      { 'idempotency-key': key, prefer: 'wait=15' },
      new RawJson(body),
    );
    return { status: answer.status, json: answer.json() };
  };

  beforeAll(async () => {
    broker = await startMosquitto();
    cleanups.push(() => broker.close());
    plant = await startPlant(
      {
        control: { host: '127.0.0.1', port: 0 },
        plcs: {
          mb: {
            protocol: 'modbus',
            host: '127.0.0.1',
            port: 0,
            devices: {
              fcv: { profile: 'actuator', layout: 'float', base: 0, travelMs: 200 },
            },
          },
          ua: {
            protocol: 'opcua',
            host: '127.0.0.1',
            port: 0,
            devices: { act: { profile: 'actuator', travelMs: 200 } },
          },
        },
      },
      { ephemeralPorts: true, control: false },
    );
    cleanups.push(() => plant.stop());
    const { dir, cleanup } = tempDir('sluice-zero-');
    cleanups.push(cleanup);
    cert = await loopbackCertificate(dir);
    const inventory = inventoryFor(plant);
    const path = join(dir, 'sluice.yaml');
    writeFileSync(
      path,
      stringify({
        gatewayId: 'gw',
        stateDir: 'state',
        https: { host: '127.0.0.1', port: 0, certFile: 'cert.pem', keyFile: 'key.pem' },
        mqtt: { url: broker.url, identity: 'plant' },
        identities: { plant: { tokenSha256: sha256(TOKEN).toString('hex'), devices: ['*'] } },
        opcua: { acceptUnknownCertificates: true },
        plcs: inventory.plcs,
        devices: {
          fcv: { ...inventory.devices.fcv, profile: 'float-positioner' },
          act: inventory.devices.act,
        },
      }),
    );
    daemon = await Daemon.start(loadConfig(path, { env: {} }), {
      logger: pino({ level: 'silent' }),
    });
    cleanups.push(() => daemon.stop());
    for (const check of ['mqtt', 'device:fcv', 'device:act']) {
      await until(
        () => (daemon.readiness().checks[check]?.ok === true ? true : undefined),
        20_000,
        `${check} ready`,
      );
    }
    issuer = await TestClient.connect(broker.url);
    cleanups.push(() => issuer.end());
    await issuer.subscribe('sluice/gw/result/#');
  }, 90_000);

  afterAll(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup();
  });

  for (const device of ['fcv', 'act']) {
    it(`HTTPS: ${device} is written 0, and a retry with 0 is a replay`, async () => {
      const sim = plant.device(device);
      const key = `https-zero-${device}`;
      const before = sim.writeLog.length;
      const r = await post(key, `{"device":"${device}","action":"move","position":-0}`);
      expect(r.status).toBe(200);
      expect(r.json).toMatchObject({ state: 'confirmed', position: 0 });
      const writes = sim.writeLog.slice(before);
      expect(writes).toHaveLength(1);
      // toBe is Object.is: -0 fails it.
      expect(writes[0]!.setpoint).toBe(0);

      const retry = await post(key, `{"device":"${device}","action":"move","position":0}`);
      expect(retry.status).toBe(200);
      expect(retry.json).toMatchObject({ state: 'confirmed' });
      const again = await post(key, `{"device":"${device}","action":"move","position":-0.0}`);
      expect(again.status).toBe(200);
      expect(sim.writeLog.length).toBe(before + 1);
    });

    it(`MQTT: ${device} is written 0, and a retry with 0 is a replay`, async () => {
      const sim = plant.device(device);
      const key = `mqtt-zero-${device}`;
      const before = sim.writeLog.length;
      // Away from 0 first, so that the move to 0 is a write, not a no-op.
      const away = await post(
        `away-${device}`,
        `{"device":"${device}","action":"move","position":20}`,
      );
      expect(away.json).toMatchObject({ state: 'confirmed' });
      const issuedAt = new Date().toISOString();
      const payload = (position: string): string =>
        `{"key":"${key}","action":"move","position":${position},"issuedAt":"${issuedAt}"}`;
      await issuer.publish(`sluice/gw/cmd/${device}`, payload('-0'));
      const result = await issuer.waitFor(
        (m) => m.topic === `sluice/gw/result/${device}` && m.json().key === key,
        15_000,
        'the result of the move to -0',
      );
      expect(result.json()).toMatchObject({ state: 'confirmed', position: 0 });
      const writes = sim.writeLog.slice(before);
      expect(writes).toHaveLength(2);
      expect(writes[1]!.setpoint).toBe(0);

      await issuer.publish(`sluice/gw/cmd/${device}`, payload('0'));
      const replay = await issuer.waitFor(
        (m) =>
          m.topic === `sluice/gw/result/${device}` &&
          m.json().key === key &&
          m.json().replayed === true,
        15_000,
        'the replay of the retry with 0',
      );
      expect(replay.json()).toMatchObject({ state: 'confirmed', code: 'OK' });
      expect(sim.writeLog.length).toBe(before + 2);
    });
  }
});
