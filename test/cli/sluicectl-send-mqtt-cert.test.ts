import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Plant } from '../../simulators/plant.js';
import { startSluiced, type Running } from '../config/sluiced.js';
import { startModbusPlant } from '../helpers/daemon-site.js';
import { tempDir } from '../helpers/fixtures.js';
import { mosquittoAvailable, startMosquitto, type Mosquitto } from '../helpers/mosquitto.js';
import { inventoryFor } from '../helpers/plant-inventory.js';
import { requireReal } from '../helpers/real.js';
import { makePki, type Pki } from '../intake/https-client.js';
import { sluicectl } from './helpers.js';

/**
 * `sluicectl send --via mqtt` to a broker that takes TLS with a client certificate only, as a
 * site's may: the operator's own certificate goes with --mqtt-cert and --mqtt-key (it sent none
 * before, and could not reach such a broker at all). Real parts: Mosquitto requiring a
 * certificate, sluiced connected to it with the gateway's, sluice-sim's Modbus PLC; the
 * binary as an operator runs it. Ground truth: the simulator's write log.
 */

const real = mosquittoAvailable();
if (!real) {
  if (requireReal) throw new Error('SLUICE_REQUIRE_REAL=1 but mosquitto is not installed');
  console.warn('sluicectl send with a client certificate is skipped: no mosquitto');
}

describe.runIf(real)('sluicectl send --via mqtt with a client certificate', () => {
  let dir: string;
  let cleanup: () => void;
  let pki: Pki;
  let broker: Mosquitto;
  let plant: Plant;
  let daemon: Running;
  let config: string;

  beforeAll(async () => {
    ({ dir, cleanup } = tempDir('sluice-send-cert-'));
    pki = await makePki();
    broker = await startMosquitto({
      settings: [
        `cafile ${pki.clientCaFile}`,
        `certfile ${pki.certFile}`,
        `keyfile ${pki.keyFile}`,
        'require_certificate true',
      ],
    });
    const gateway = await pki.client('gateway-g1');
    writeFileSync(join(dir, 'gateway.pem'), gateway.cert);
    writeFileSync(join(dir, 'gateway.key'), gateway.key, { mode: 0o600 });
    const operator = await pki.client('operator-ana');
    writeFileSync(join(dir, 'operator.pem'), operator.cert);
    writeFileSync(join(dir, 'operator.key'), operator.key, { mode: 0o600 });
    writeFileSync(join(dir, 'ca.pem'), pki.serverCa.cert);
    plant = await startModbusPlant({ v1: { profile: 'valve', base: 0 } });
    const inventory = inventoryFor(plant);
    config = join(dir, 'sluice.yaml');
    writeFileSync(
      config,
      stringify({
        gatewayId: 'g1',
        stateDir: 'state',
        mqtt: {
          url: `mqtts://127.0.0.1:${broker.port}`,
          identity: 'plant',
          caFile: 'ca.pem',
          certFile: 'gateway.pem',
          keyFile: 'gateway.key',
        },
        identities: { plant: { devices: ['*'] } },
        plcs: inventory.plcs,
        devices: inventory.devices,
      }),
    );
    daemon = startSluiced(['--config', config]);
    await daemon.line((l) => l.includes('subscribed to the command topics'), 30_000);
  }, 60_000);

  afterAll(async () => {
    await daemon.stop();
    await plant.stop();
    await broker.close();
    pki.cleanup();
    cleanup();
  });

  const send = (...args: string[]) =>
    sluicectl(['--config', config, 'send', 'v1', ...args, '--via', 'mqtt', '--json']);

  it('is refused by the broker without one, reaches it with one, and the valve moves once', async () => {
    const valve = plant.device('v1');
    // Without a certificate the broker refuses the TLS handshake: nothing is published.
    const refused = await send('open', '--key', 'no-cert', '--wait', '5s');
    expect(refused.code, refused.stderr).toBe(1);
    expect(refused.stderr).toContain('cannot connect to the MQTT broker');

    const sent = await send(
      'open',
      '--key',
      'with-cert',
      '--mqtt-cert',
      join(dir, 'operator.pem'),
      '--mqtt-key',
      join(dir, 'operator.key'),
    );
    expect(sent.code, sent.stderr).toBe(0);
    expect(sent.json()).toMatchObject({
      via: 'mqtt',
      key: 'with-cert',
      settled: true,
      result: { state: 'confirmed', code: 'OK' },
    });
    // Ground truth: one write, the certificate's command's; the refused run reached nothing.
    expect(valve.writeLog.map((w) => w.code)).toEqual([1]);
    expect(broker.connectionsOf('sluice-g1')).toBe(1);
  });

  it('takes both or neither, with --via mqtt and a TLS url only', async () => {
    const cert = join(dir, 'operator.pem');
    const key = join(dir, 'operator.key');
    const alone = await send('close', '--mqtt-cert', cert);
    expect(alone.code, alone.stderr).toBe(2);
    expect(alone.stderr).toContain('--mqtt-cert and --mqtt-key go together: give both, or neither');

    const https = await sluicectl([
      '--config',
      config,
      'send',
      'v1',
      'close',
      '--mqtt-cert',
      cert,
      '--mqtt-key',
      key,
    ]);
    expect(https.code, https.stderr).toBe(2);
    expect(https.stderr).toContain('--mqtt-cert and --mqtt-key need --via mqtt');

    const plain = join(dir, 'plain.yaml');
    writeFileSync(
      plain,
      stringify({
        gatewayId: 'g1',
        stateDir: 'state',
        mqtt: { url: `mqtt://127.0.0.1:${broker.port}`, identity: 'plant' },
        identities: { plant: { devices: ['*'] } },
        plcs: inventoryFor(plant).plcs,
        devices: inventoryFor(plant).devices,
      }),
    );
    const clear = await sluicectl([
      '--config',
      plain,
      'send',
      'v1',
      'close',
      '--via',
      'mqtt',
      '--mqtt-cert',
      cert,
      '--mqtt-key',
      key,
    ]);
    expect(clear.code, clear.stderr).toBe(2);
    expect(clear.stderr).toContain(
      `--mqtt-cert: a client certificate needs TLS, and the configuration's mqtt.url mqtt://127.0.0.1:${broker.port} is not TLS (mqtts:// or wss://)`,
    );
    // None of the three was sent: the valve has still only its one write.
    expect(plant.device('v1').writeLog).toHaveLength(1);
  });
});
