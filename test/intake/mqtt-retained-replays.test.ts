import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { mosquittoAvailable, TestClient, timed, until, useMqttSite } from '../helpers/mqtt-site.js';
import { recordingLogger } from '../helpers/recording-logger.js';
import { TcpLink } from '../helpers/tcp-link.js';

/**
 * A command left retained on a command topic, over MQTT 3.1.1: the broker sends it again at
 * every SUBSCRIBE of the command filter (MQTT 3.1.1 §3.8.4), which the gateway makes at every
 * connection. It is never run from the retained store; it was refused, warned of and answered
 * INVALID_COMMAND at each reconnection — on a flapping link, a flood on the result topic, after
 * the command's own result. It is said and answered once, with how to clear it. The real
 * intake, Mosquitto, the simulated plant; the gateway reaches the broker through a TCP link the
 * test cuts. Ground truth: the broker's log (each replay delivered to the gateway and
 * acknowledged), what reached the result topic, and the simulator's write count.
 */

const available = mosquittoAvailable();

describe.skipIf(!available)('MQTT intake: a retained command over MQTT 3.1.1', () => {
  const site = useMqttSite({}, { opcua: false });

  it('is refused and answered once, however often the gateway reconnects', async () => {
    const gateway = 'gwretained';
    const prefix = `sluice/${gateway}`;
    const clientId = `sluice-${gateway}`;
    const topic = `${prefix}/cmd/v1`;
    const link = await TcpLink.open({ host: '127.0.0.1', port: site.broker.port });
    site.cleanups.push(() => link.close());
    const { logger, lines } = recordingLogger();
    const intake = site.intake({
      gatewayId: gateway,
      config: { protocolVersion: 4, url: `mqtt://${link.address}` },
      logger,
      reconnect: { minMs: 100, maxMs: 400 },
    });
    site.cleanups.push(() => intake.stop());
    await site.connect(intake);
    const plant = await TestClient.connect(site.broker.url, { protocolVersion: 4 });
    site.cleanups.push(() => plant.end());
    // Cleared at the end, so that the broker does not keep it for the file's other runs.
    site.cleanups.push(() => plant.publish(topic, '', { retain: true }));
    await plant.subscribe(`${prefix}/result/v1`);
    const moveOf = (): 'open' | 'close' =>
      site.stack.plant.device('v1').published.state === 'CLOSED' ? 'open' : 'close';
    // Distinct documents: an answer whose PUBACK the link cut off is sent again by the gateway
    // on its next connection (QoS 1, at least once), the same document; each refusal is a new
    // one (its receivedAt).
    const answers = (key: string): Record<string, unknown>[] =>
      [...new Set(plant.on(`${prefix}/result/v1`).map((m) => m.text))]
        .map((text) => JSON.parse(text) as Record<string, unknown>)
        .filter((a) => a.key === key);

    // Published retained while the gateway listens: over 3.1.1 it arrives without the flag and
    // runs, once.
    const key = randomUUID();
    const before = site.stack.plant.device('v1').counters.writesReceived;
    await plant.publish(topic, timed({ action: moveOf(), key, ttlMs: 60_000 }), { retain: true });
    await until(() => (answers(key).length === 1 ? true : undefined), 10_000, 'its result');
    expect(answers(key)[0]).toMatchObject({ state: 'confirmed' });

    // The link flaps three times: at each connection the broker replays it, flagged retained.
    for (let round = 1; round <= 3; round++) {
      const pubacks = site.broker.pubacksFrom(clientId);
      link.down();
      await until(() => (intake.connected() ? undefined : true), 5_000, 'the link down');
      link.up();
      await until(
        () => (site.broker.deliveriesTo(clientId, topic).length === 1 + round ? true : undefined),
        10_000,
        `replay ${round}`,
      );
      // The gateway acknowledged it (it is not redelivered).
      await until(
        () => (site.broker.pubacksFrom(clientId) > pubacks ? true : undefined),
        10_000,
        `replay ${round} acknowledged`,
      );
      await until(() => intake.connected() || undefined, 10_000, 'reconnected');
      if (round === 1) {
        await until(() => (answers(key).length === 2 ? true : undefined), 10_000, 'the answer');
      }
    }
    // A command behind the last replay, on the same topic: its result comes after whatever the
    // gateway answered to the replays.
    const marker = randomUUID();
    await plant.publish(topic, timed({ action: moveOf(), key: marker, ttlMs: 60_000 }));
    await until(() => (answers(marker).length === 1 ? true : undefined), 10_000, 'the marker');

    // The command ran once; its replays were answered once, saying how to clear it.
    expect(site.stack.plant.device('v1').counters.writesReceived).toBe(before + 2);
    expect(answers(key)).toHaveLength(2);
    expect(answers(key)[1]).toMatchObject({ code: 'INVALID_COMMAND' });
    expect(String(answers(key)[1]?.detail)).toContain(`mosquitto_pub -r -n -q 1 -t '${topic}'`);
    const warned = lines.filter(
      (l) => l.level === 40 && String(l.msg).startsWith('retained command refused'),
    );
    expect(warned).toHaveLength(1);
  }, 60_000);
});
