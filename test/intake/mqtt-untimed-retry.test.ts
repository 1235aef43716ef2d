import { randomUUID } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import type { MqttIntake } from '../../src/intake/mqtt.js';
import { mosquittoAvailable, TestClient, useMqttSite } from '../helpers/mqtt-site.js';

/**
 * An untimed retry of a command the journal holds is answered as a retry (a replay), not
 * refused INVALID_COMMAND "nothing was written": here the command ran over MQTT 5, timed by
 * its Message Expiry Interval, and its retry came after the gateway spoke MQTT 3.1.1 (a
 * fallback, or protocolVersion 4), where no message carries an expiry. The untimed rule keeps
 * a command queued while the gateway was away from running late; a key already journaled can
 * start nothing. A new untimed command is still refused.
 */

const available = mosquittoAvailable();

describe.skipIf(!available)('MQTT intake: an untimed retry of a journaled command', () => {
  const GATEWAY = 'gwu';
  const PREFIX = `sluice/${GATEWAY}`;
  // No test here addresses `u1`: no OPC UA PLC (seconds of CPU to start and stop).
  const site = useMqttSite({}, { opcua: false });
  let observer: TestClient;
  let intake: MqttIntake | null = null;

  const writes = (device: string): number =>
    site.stack.plant.device(device).counters.writesReceived;
  const moveOf = (device: string): 'open' | 'close' =>
    site.stack.plant.device(device).published.state === 'CLOSED' ? 'open' : 'close';
  const connect = async (protocolVersion: 4 | 5): Promise<MqttIntake> => {
    await intake?.stop();
    intake = await site.connect(site.intake({ gatewayId: GATEWAY, config: { protocolVersion } }));
    return intake;
  };

  beforeAll(async () => {
    observer = await TestClient.connect(site.broker.url, { clientId: 'observer-u' });
    site.cleanups.push(() => observer.end());
    site.cleanups.push(() => intake?.stop());
    await observer.subscribe(`${PREFIX}/result/#`);
  }, 60_000);

  it('replays it over MQTT 3.1.1 and writes nothing; a new untimed command is still refused', async () => {
    await connect(5);
    const key = randomUUID();
    const command = { action: moveOf('v1'), key };
    const before = writes('v1');
    await observer.publish(`${PREFIX}/cmd/v1`, command, {
      properties: { messageExpiryInterval: 60 },
    });
    const result = await observer.waitFor(
      (m) => m.json().key === key && m.json().state === 'confirmed',
      15_000,
      'result',
    );
    expect(result.json()).toMatchObject({ replayed: false, issuedAtSource: 'gateway' });
    expect(writes('v1')).toBe(before + 1);

    await connect(4);
    expect(intake?.protocol().version).toBe(4);
    const answers = observer.messages.filter((m) => m.json().key === key).length;
    await observer.publish(`${PREFIX}/cmd/v1`, command);
    const replay = await observer.waitFor(
      (m) => m.json().key === key && observer.messages.indexOf(m) >= answers,
      10_000,
      'replay',
    );
    expect(replay.json()).toMatchObject({ key, state: 'confirmed', replayed: true });
    expect(writes('v1')).toBe(before + 1);
    expect(site.stack.journal.findByKey(key)).toHaveLength(1);

    const fresh = randomUUID();
    await observer.publish(`${PREFIX}/cmd/v1`, { action: moveOf('v1'), key: fresh });
    const refused = await observer.waitFor((m) => m.json().key === fresh, 10_000, 'refusal');
    expect(refused.json()).toMatchObject({ key: fresh, code: 'INVALID_COMMAND' });
    expect(String(refused.json().detail)).toContain('issuedAt: required over MQTT');
    expect(site.stack.journal.findByKey(fresh)).toHaveLength(0);
    expect(writes('v1')).toBe(before + 1);
  });
});
