import { randomUUID } from 'node:crypto';
import { createConnection, createServer, type Server } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { MqttIntake } from '../../src/intake/mqtt.js';
import { mosquittoAvailable, TestClient, timed, until, useMqttSite } from '../helpers/mqtt-site.js';

/**
 * A QoS 0 command read off a connection the intake is dropping is claimed and run: QoS 0 is
 * never redelivered, and the drop was not the journal's doing. It was answered
 * JOURNAL_UNAVAILABLE ("the journal cannot be written; nothing was claimed or written") and
 * lost, whatever the drop was for.
 *
 * The drop comes from an error while handling the QoS 1 command before it: a double of the
 * pipeline's submit that throws once, for a bug, which no real part produces on demand. A proxy
 * between the intake and the broker hands the intake both messages in one read, so that the
 * QoS 0 one is handled after the drop began, on the same connection.
 */

const available = mosquittoAvailable();

describe.skipIf(!available)('MQTT intake: a QoS 0 command on a connection being dropped', () => {
  const GATEWAY = 'gwd';
  const PREFIX = `sluice/${GATEWAY}`;
  // No test here addresses `u1`: no OPC UA PLC (seconds of CPU to start and stop).
  const site = useMqttSite({}, { opcua: false });
  let intake: MqttIntake;
  let observer: TestClient;
  let proxy: Server;
  const hold = { keys: [] as string[], buffered: [] as Buffer[] };

  beforeAll(async () => {
    proxy = createServer((inbound) => {
      const outbound = createConnection({ host: '127.0.0.1', port: site.broker.port });
      const close = (): void => {
        inbound.destroy();
        outbound.destroy();
      };
      inbound.on('error', close).on('close', close);
      outbound.on('error', close).on('close', close);
      inbound.pipe(outbound);
      outbound.on('data', (chunk: Buffer) => {
        if (hold.keys.length === 0) {
          inbound.write(chunk);
          return;
        }
        // Held until every awaited key went by, then written as one chunk.
        hold.buffered.push(chunk);
        const all = Buffer.concat(hold.buffered);
        if (hold.keys.every((k) => all.includes(k))) {
          hold.keys = [];
          hold.buffered = [];
          inbound.write(all);
        }
      });
    });
    await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
    const address = proxy.address();
    const port = typeof address === 'object' && address !== null ? address.port : 0;
    site.cleanups.push(
      () =>
        new Promise<void>((resolve) => {
          proxy.close(() => {
            resolve();
          });
        }),
    );
    intake = await site.connect(
      site.intake({
        gatewayId: GATEWAY,
        config: { url: `mqtt://127.0.0.1:${port}`, protocolVersion: 5 },
        reconnect: { minMs: 200, maxMs: 400 },
      }),
    );
    site.cleanups.push(() => intake.stop());
    observer = await TestClient.connect(site.broker.url, { clientId: 'observer-d' });
    site.cleanups.push(() => observer.end());
    await observer.subscribe(`${PREFIX}/result/#`);
  }, 60_000);

  afterAll(() => {
    hold.keys = [];
  });

  it('claims, runs and answers it; the QoS 1 command that caused the drop is redelivered and runs once', async () => {
    const q1 = randomUUID();
    const q0 = randomUUID();
    const before = {
      v1: site.stack.plant.device('v1').counters.writesReceived,
      v2: site.stack.plant.device('v2').counters.writesReceived,
    };
    const move = (device: string): 'open' | 'close' =>
      site.stack.plant.device(device).published.state === 'CLOSED' ? 'open' : 'close';
    const pipeline = site.stack.pipeline;
    const submit = pipeline.submit.bind(pipeline);
    let thrown = 0;
    pipeline.submit = (submission) => {
      if (submission.key === q1 && thrown === 0) {
        thrown += 1;
        throw new Error('a bug while claiming');
      }
      return submit(submission);
    };
    try {
      hold.keys = [q1, q0];
      await observer.publish(`${PREFIX}/cmd/v2`, timed({ action: move('v2'), key: q1 }));
      await observer.publish(`${PREFIX}/cmd/v1`, timed({ action: move('v1'), key: q0 }), {
        qos: 0,
      });
      const result = await observer.waitFor((m) => m.json().key === q0, 15_000, 'answer of q0');
      expect(result.json()).toMatchObject({ key: q0, state: 'confirmed', replayed: false });
      expect(site.stack.journal.findByKey(q0)).toHaveLength(1);
      expect(site.stack.plant.device('v1').counters.writesReceived).toBe(before.v1 + 1);
      expect(thrown).toBe(1);
      const q1Result = await observer.waitFor((m) => m.json().key === q1, 15_000, 'q1');
      expect(q1Result.json()).toMatchObject({ state: 'confirmed' });
      expect(site.stack.plant.device('v2').counters.writesReceived).toBe(before.v2 + 1);
      await until(() => intake.connected() || undefined, 10_000, 'reconnected');
    } finally {
      pipeline.submit = submit;
    }
  });
});
