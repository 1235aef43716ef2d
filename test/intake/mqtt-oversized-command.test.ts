import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/core/logger.js';
import { MqttIntake } from '../../src/intake/mqtt.js';
import { startAedes } from '../helpers/aedes.js';
import { intakeConfig } from '../helpers/mosquitto.js';
import { mosquittoAvailable, TestClient, timed, until, useMqttSite } from '../helpers/mqtt-site.js';

/**
 * An oversized command over MQTT 3.1.1, which has no Maximum Packet Size (over MQTT 5 the
 * gateway tells the broker 2 MiB, and the broker drops a larger message): the whole payload
 * reaches the gateway, which parses none past 16 KiB. It was acknowledged and logged, but
 * answered nowhere — MQTT 3.1.1 has no user property and the payload was not read, so no key —
 * and its issuer waited for a result that never came. It is answered INVALID_COMMAND with the
 * key read from the payload's start; the commands behind it run. Against Mosquitto and aedes
 * (the demo's broker, 3.1.1 only); the real intake, the simulated plant. Ground truth: the
 * journal, the simulator's write count, what reached the result topic, and Mosquitto's log (no
 * redelivery).
 */

const available = mosquittoAvailable();

describe.skipIf(!available)('MQTT intake: an oversized command over MQTT 3.1.1', () => {
  const site = useMqttSite({}, { opcua: false });

  for (const broker of ['mosquitto', 'aedes'] as const) {
    it(`${broker}: is answered INVALID_COMMAND with its key; the command behind it runs`, async () => {
      const gateway = `gwbig${broker}`;
      const prefix = `sluice/${gateway}`;
      const topic = `${prefix}/cmd/v1`;
      let url = site.broker.url;
      if (broker === 'aedes') {
        const aedes = await startAedes();
        site.cleanups.push(() => aedes.close());
        url = aedes.url;
      }
      const intake = new MqttIntake({
        config: intakeConfig(url, { protocolVersion: 4 }),
        gatewayId: gateway,
        pipeline: site.stack.pipeline,
        identities: site.stack.identities,
        metrics: site.stack.metrics,
        logger: silentLogger,
        retentionHours: 48,
      });
      site.cleanups.push(() => intake.stop());
      await site.connect(intake);
      const plant = await TestClient.connect(url, { protocolVersion: 4 });
      site.cleanups.push(() => plant.end());
      await plant.subscribe(`${prefix}/result/#`);
      const writes = (): number => site.stack.plant.device('v1').counters.writesReceived;
      const before = writes();

      const big = randomUUID();
      const payload = JSON.stringify({
        key: big,
        action: 'open',
        issuedAt: new Date().toISOString(),
        note: 'x'.repeat(4 * 1024 * 1024),
      });
      await plant.publish(topic, payload);
      const next = randomUUID();
      const action = site.stack.plant.device('v1').published.state === 'CLOSED' ? 'open' : 'close';
      await plant.publish(topic, timed({ key: next, action, ttlMs: 60_000 }));

      const result = await plant.waitFor((m) => m.json().key === next, 15_000, 'its result');
      expect(result.json()).toMatchObject({ state: 'confirmed' });
      expect(writes()).toBe(before + 1);
      // Answered before the command behind it (one connection, one topic: in order).
      const answers = plant.messages.filter((m) => m.json().key === big).map((m) => m.json());
      expect(answers).toEqual([
        expect.objectContaining({
          key: big,
          device: 'v1',
          code: 'INVALID_COMMAND',
          detail: `(body): ${Buffer.byteLength(payload)} bytes; a command is at most 16384 bytes; nothing was written`,
        }),
      ]);
      expect(site.stack.pipeline.get({ scope: 'plant', key: big })).toBeUndefined();
      if (broker === 'mosquitto') {
        // Acknowledged at once: delivered once, never again.
        await until(
          () => (site.broker.pubacksFrom(`sluice-${gateway}`) >= 2 ? true : undefined),
          5_000,
          'both acknowledged',
        );
        expect(site.broker.deliveriesTo(`sluice-${gateway}`, topic).map((d) => d.dup)).toEqual([
          false,
          false,
        ]);
      }
      await intake.stop();
    }, 60_000);
  }
  it('mosquitto: a 96 MB command is read off the connection without being held', async () => {
    const gateway = 'gwhuge';
    const prefix = `sluice/${gateway}`;
    const topic = `${prefix}/cmd/v1`;
    const intake = new MqttIntake({
      config: intakeConfig(site.broker.url, { protocolVersion: 4 }),
      gatewayId: gateway,
      pipeline: site.stack.pipeline,
      identities: site.stack.identities,
      metrics: site.stack.metrics,
      logger: silentLogger,
      retentionHours: 48,
    });
    site.cleanups.push(() => intake.stop());
    await site.connect(intake);
    const plant = await TestClient.connect(site.broker.url, { protocolVersion: 4 });
    site.cleanups.push(() => plant.end());
    await plant.subscribe(`${prefix}/result/#`);
    // Published by another process, so that this one (the gateway's) holds none of it.
    const big = randomUUID();
    const file = join(site.broker.dir, 'huge-command.json');
    const head = `{"key":"${big}","action":"open","issuedAt":"${new Date().toISOString()}","note":"`;
    const size = 96 * 1024 * 1024;
    writeFileSync(file, head + 'x'.repeat(size - head.length - 2) + '"}');
    // The memory the gateway's process holds in buffers (where a socket's bytes go), at its
    // highest while the command comes: sampled until it is answered.
    const base = process.memoryUsage().arrayBuffers;
    let peak = base;
    const sampler = setInterval(() => {
      peak = Math.max(peak, process.memoryUsage().arrayBuffers);
    }, 5);
    try {
      const pub = spawn(
        'mosquitto_pub',
        ['-h', '127.0.0.1', '-p', String(site.broker.port), '-q', '1', '-t', topic, '-f', file],
        { stdio: 'ignore' },
      );
      const answer = await plant.waitFor((m) => m.json().key === big, 40_000, 'its answer');
      expect(answer.json()).toMatchObject({
        code: 'INVALID_COMMAND',
        detail: `(body): ${size} bytes; a command is at most 16384 bytes; nothing was written`,
      });
      await new Promise<void>((resolve) => {
        if (pub.exitCode !== null) resolve();
        else
          pub.once('exit', () => {
            resolve();
          });
      });
    } finally {
      clearInterval(sampler);
    }
    expect(site.stack.pipeline.get({ scope: 'plant', key: big })).toBeUndefined();
    // Read and dropped as it came: far below the command's size (it was held whole, twice:
    // 176 MB). What the gateway dropped still counts until the garbage collector runs, which
    // the external memory's growth, not time, sets off: 2.5 MB in a quiet run, 26 MB in a CI
    // run with four test files at once. Held whole, even once, it is the command's 96 MB.
    expect(peak - base).toBeLessThan(size / 2);
    await intake.stop();
  }, 90_000);
});
