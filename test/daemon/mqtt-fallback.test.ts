import { randomUUID } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { silentLogger } from '../../src/core/logger.js';
import { Daemon } from '../../src/daemon/daemon.js';
import { MqttIntake } from '../../src/intake/mqtt.js';
import { startPlant, type Plant } from '../../simulators/plant.js';
import { startAedes, type AedesBroker } from '../helpers/aedes.js';
import { tempDir } from '../helpers/fixtures.js';
import { intakeConfig, TestClient, timed, until } from '../helpers/mosquitto.js';
import { inventoryFor } from '../helpers/plant-inventory.js';
import { startStack, type Stack } from '../helpers/stack.js';
import { recordingLogger } from '../helpers/recording-logger.js';

/**
 * SPEC §5, protocol version: MQTT 5 is preferred; against a broker that refuses it — the
 * demo's embedded aedes, which speaks MQTT 3.1.1 only and answers an MQTT 5 CONNECT with
 * "unacceptable protocol version" — the intake falls back to 3.1.1, says so once in the log
 * and in /readyz, and takes commands. `protocolVersion: 5` keeps MQTT 5 and does not connect.
 */

describe('MQTT protocol version against a broker that refuses MQTT 5 (aedes)', () => {
  let broker: AedesBroker;
  let plant: Plant;
  let dir: string;
  const cleanups: (() => Promise<void> | void)[] = [];

  beforeAll(async () => {
    broker = await startAedes();
    cleanups.push(() => broker.close());
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
    cleanups.push(() => plant.stop());
    const temp = tempDir('sluice-mqtt-fallback-');
    dir = temp.dir;
    cleanups.push(temp.cleanup);
  }, 60_000);

  afterAll(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup();
  });

  it('falls back to MQTT 3.1.1, warns once, reports it in readiness (/readyz), and executes a command', async () => {
    const inventory = inventoryFor(plant);
    const configPath = join(dir, 'sluice.yaml');
    writeFileSync(
      configPath,
      stringify({
        gatewayId: 'fb',
        stateDir: 'state',
        // protocolVersion left to its default: auto.
        mqtt: { url: broker.url, identity: 'scada' },
        identities: { scada: { devices: ['*'] } },
        plcs: inventory.plcs,
        devices: inventory.devices,
      }),
    );
    const { logger, lines } = recordingLogger();
    const daemon = await Daemon.start(loadConfig(configPath, { env: {} }), {
      logger,
      monitorIntervalMs: 200,
    });
    const client = await TestClient.connect(broker.url, { protocolVersion: 4 });
    try {
      const mqtt = await until(
        () => {
          const check = daemon.readiness().checks.mqtt;
          return check?.ok === true ? check : undefined;
        },
        10_000,
        'MQTT connected',
      );
      expect(mqtt.detail).toBe(
        'connected (MQTT 3.1.1: the broker refused MQTT 5; response topics and message expiry unavailable)',
      );
      const fallbacks = (): Record<string, unknown>[] =>
        lines.filter((l) => String(l.msg).includes('refused MQTT 5'));
      expect(fallbacks()).toHaveLength(1);
      expect(fallbacks()[0]).toMatchObject({ level: 40 });
      // Untimed commands are refused by default: without message expiry they need issuedAt.
      expect(String(fallbacks()[0]?.msg)).toContain('commands must carry issuedAt');

      // The MQTT path works on 3.1.1: a timed command is executed once.
      await client.subscribe('sluice/fb/result/#');
      const device = plant.device('inlet-valve');
      const before = device.counters.writesReceived;
      const key = randomUUID();
      const action = device.published.state === 'CLOSED' ? 'open' : 'close';
      await client.publish('sluice/fb/cmd/inlet-valve', timed({ key, action }));
      const result = await client.waitFor(
        (m) => m.topic === 'sluice/fb/result/inlet-valve' && m.json().key === key,
        15_000,
        'result',
      );
      expect(result.json()).toMatchObject({ state: 'confirmed', replayed: false });
      expect(device.counters.writesReceived).toBe(before + 1);

      // A dropped connection comes back on 3.1.1 directly: no second refusal, no second warning.
      const connections = (): number =>
        lines.filter((l) => l.msg === 'connected to the MQTT broker').length;
      const seen = connections();
      const clients = (broker.aedes as unknown as { clients: Record<string, { close(): void }> })
        .clients;
      clients['sluice-fb']?.close();
      await until(() => (connections() > seen ? true : undefined), 10_000, 'reconnection');
      await until(() => (daemon.readiness().checks.mqtt?.ok === true ? true : undefined));
      expect(fallbacks()).toHaveLength(1);
      expect(
        lines.filter((l) => l.msg === 'connected to the MQTT broker').map((l) => l.protocol),
      ).toEqual(
        Array(connections()).fill(
          'MQTT 3.1.1: the broker refused MQTT 5; response topics and message expiry unavailable',
        ),
      );
    } finally {
      await client.end();
      await daemon.stop();
    }
  }, 60_000);

  describe('an intake', () => {
    let stack: Stack;
    beforeAll(async () => {
      // No test here addresses `u1`: no OPC UA PLC (seconds of CPU to start and stop).
      stack = await startStack({ opcua: false });
    }, 60_000);
    afterAll(async () => {
      await stack.stop();
    });

    it('configured for MQTT 5 only does not fall back, and says why it is not connected', async () => {
      const { logger, lines } = recordingLogger();
      const intake = new MqttIntake({
        config: intakeConfig(broker.url, { protocolVersion: 5, clientId: 'sluice-strict' }),
        gatewayId: 'strict',
        pipeline: stack.pipeline,
        identities: stack.identities,
        metrics: stack.metrics,
        logger,
        reconnect: { minMs: 100, maxMs: 200 },
      });
      try {
        intake.start();
        // Refused on every attempt, and every attempt is MQTT 5 again.
        await until(
          () =>
            lines.filter((l) => l.msg === 'MQTT connection error').length >= 3 ? true : undefined,
          10_000,
          'three refused attempts',
        );
        const error = intake.health().lastError;
        expect(error).toContain('Unacceptable protocol version');
        expect(error).toContain('mqtt.protocolVersion 5');
        expect(lines.filter((l) => String(l.msg).includes('refused MQTT 5'))).toEqual([]);
        expect(intake.connected()).toBe(false);
        expect(intake.protocol()).toMatchObject({ version: 5, fallback: false });
      } finally {
        await intake.stop();
      }
    });

    it('with mqtt.acceptUntimedCommands, falls back saying untimed commands are still taken, and runs one', async () => {
      const { logger, lines } = recordingLogger();
      const intake = new MqttIntake({
        config: intakeConfig(broker.url, {
          clientId: 'sluice-untimed',
          acceptUntimedCommands: true,
        }),
        gatewayId: 'untimed',
        pipeline: stack.pipeline,
        identities: stack.identities,
        metrics: stack.metrics,
        logger,
      });
      const client = await TestClient.connect(broker.url, { protocolVersion: 4 });
      try {
        intake.start();
        await until(() => intake.connected() || undefined, 10_000, 'connected');
        expect(intake.protocol()).toMatchObject({ version: 4, fallback: true });
        const fallbacks = lines.filter((l) => String(l.msg).includes('refused MQTT 5'));
        expect(fallbacks).toHaveLength(1);
        const said = String(fallbacks[0]?.msg);
        expect(said).not.toContain('must carry issuedAt');
        expect(said).toContain(
          'commands without issuedAt are still taken, timed from their receipt',
        );

        // What the line says is what happens: an untimed command over 3.1.1 runs, once.
        await client.subscribe('sluice/untimed/result/#');
        const device = stack.plant.device('v1');
        const before = device.counters.writesReceived;
        const key = randomUUID();
        const action = device.published.state === 'CLOSED' ? 'open' : 'close';
        await client.publish('sluice/untimed/cmd/v1', { key, action });
        const result = await client.waitFor(
          (m) => m.topic === 'sluice/untimed/result/v1' && m.json().key === key,
          15_000,
          'result',
        );
        expect(result.json()).toMatchObject({ state: 'confirmed', issuedAtSource: 'gateway' });
        expect(device.counters.writesReceived).toBe(before + 1);
      } finally {
        await client.end();
        await intake.stop();
      }
    });

    it('configured for MQTT 3.1.1 connects on 3.1.1 without a refusal', async () => {
      const intake = new MqttIntake({
        config: intakeConfig(broker.url, { protocolVersion: 4, clientId: 'sluice-v4' }),
        gatewayId: 'v4',
        pipeline: stack.pipeline,
        identities: stack.identities,
        metrics: stack.metrics,
        logger: silentLogger,
      });
      try {
        intake.start();
        await until(() => intake.connected() || undefined, 10_000, 'connected');
        expect(intake.protocol()).toEqual({
          version: 4,
          fallback: false,
          summary:
            'MQTT 3.1.1 (mqtt.protocolVersion 4): response topics and message expiry unavailable',
        });
        expect(intake.health().lastError).toBeNull();
      } finally {
        await intake.stop();
      }
    });
  });
});
