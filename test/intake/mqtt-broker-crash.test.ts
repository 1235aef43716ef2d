import { randomUUID } from 'node:crypto';
import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { MqttIntake } from '../../src/intake/mqtt.js';
import { mosquittoAvailable, TestClient, timed, until, useMqttSite } from '../helpers/mqtt-site.js';

/**
 * The plant's broker dies (SIGKILL: a crash, a power cut) while a command it delivered is
 * acknowledged and travelling, and comes back on the same port from its last autosave. The
 * result, settled while the broker was away, is held by the gateway and sent on the
 * reconnection; the subscriber, whose persistent session the autosave kept, receives it. Ground
 * truth: the simulator's write log (one write), the journal (confirmed), what the subscriber
 * receives and the broker's log. The existing restarts stop the broker cleanly (SIGTERM), when
 * it writes its whole state.
 */

const available = mosquittoAvailable();
const GATEWAY = 'gwcrash';
const PREFIX = `sluice/${GATEWAY}`;
const CLIENT_ID = `sluice-${GATEWAY}`;

describe.skipIf(!available)(
  'MQTT intake: the broker is killed between a PUBACK and its result',
  () => {
    // Travel long enough to kill the broker while the valve moves; an autosave every second.
    const site = useMqttSite(
      { settings: ['autosave_interval 1'] },
      { opcua: false, travelMs: 800 },
    );

    const saves = (): number =>
      site.broker
        .log()
        .split('\n')
        .filter((l) => l.includes('Saving in-memory database')).length;

    it('delivers the result after the broker is back, from one write', async () => {
      const intake: MqttIntake = site.intake({
        gatewayId: GATEWAY,
        config: { protocolVersion: 5, clientId: CLIENT_ID },
        reconnect: { minMs: 100, maxMs: 500 },
      });
      site.cleanups.push(() => intake.stop());
      await site.connect(intake);
      const observer = await TestClient.connect(site.broker.url, {
        clientId: 'crash-observer',
        clean: false,
        properties: { sessionExpiryInterval: 600 },
      });
      site.cleanups.push(() => observer.end());
      await observer.subscribe(`${PREFIX}/result/#`);
      const issuer = await TestClient.connect(site.broker.url);
      site.cleanups.push(() => issuer.end());
      // Both sessions (the gateway's and the observer's subscription) are in a save.
      const saved = saves();
      await until(() => (saves() > saved ? true : undefined), 5_000, 'an autosave');

      const key = randomUUID();
      const device = site.stack.plant.device('v1');
      const before = device.counters.writesReceived;
      const pubacks = site.broker.pubacksFrom(CLIENT_ID);
      const action = device.published.state === 'CLOSED' ? 'open' : 'close';
      await issuer.publish(`${PREFIX}/cmd/v1`, timed({ key, action }));
      // The gateway's PUBACK reached the broker, and the valve is on its way.
      await until(
        () =>
          site.broker.pubacksFrom(CLIENT_ID) > pubacks &&
          site.stack.pipeline.get({ scope: 'plant', key })?.state === 'dispatched'
            ? true
            : undefined,
        5_000,
        'PUBACK and dispatch',
      );
      await site.broker.kill();
      await until(
        () =>
          site.stack.pipeline.get({ scope: 'plant', key })?.state === 'confirmed'
            ? true
            : undefined,
        10_000,
        'confirmed while the broker is away',
      );
      expect(observer.messages.filter((m) => m.json().key === key)).toEqual([]);

      await site.broker.restart();
      const result = await observer.waitFor((m) => m.json().key === key, 10_000, 'the result');
      expect(result.json()).toMatchObject({ state: 'confirmed', replayed: false, device: 'v1' });
      expect(result.text).toBe(site.stack.pipeline.get({ scope: 'plant', key })?.response);
      expect(device.counters.writesReceived).toBe(before + 1);
      expect(site.stack.journal.findByKey(key).map((r) => r.state)).toEqual(['confirmed']);
      await until(() => (intake.connected() ? true : undefined), 5_000, 'the intake subscribed');
    });

    it('replays, never writes again, the commands an older save still has queued for the gateway', async () => {
      // Mosquitto saves every autosave_interval (30 min by default): after a crash it comes
      // back with the messages it had queued for the gateway at the last save, though the
      // gateway took and acknowledged them since. They are redelivered; their keys are in the
      // journal.
      const gatewayId = 'gwsave';
      const clientId = `sluice-${gatewayId}`;
      const newIntake = (): MqttIntake =>
        site.intake({
          gatewayId,
          config: { protocolVersion: 5, clientId },
          reconnect: { minMs: 100, maxMs: 500 },
        });
      let intake = newIntake();
      await site.connect(intake);
      await intake.stop();
      // A persistent session, in the save too: the replays wait for it if it reconnects late.
      const issuer = await TestClient.connect(site.broker.url, {
        clientId: 'save-issuer',
        clean: false,
        properties: { sessionExpiryInterval: 600 },
      });
      site.cleanups.push(() => issuer.end());
      await issuer.subscribe(`sluice/${gatewayId}/result/#`);
      const device = site.stack.plant.device('v2');
      const before = device.counters.writesReceived;
      const timedKey = randomUUID();
      const expiryKey = randomUUID();
      const first = device.published.state === 'CLOSED' ? 'open' : 'close';
      const cmdTopic = `sluice/${gatewayId}/cmd/v2`;
      // Queued in the gateway's session while it is away: one stamped, one timed by its expiry.
      await issuer.publish(cmdTopic, timed({ key: timedKey, action: first }));
      await issuer.publish(
        cmdTopic,
        { key: expiryKey, action: first === 'open' ? 'close' : 'open' },
        { properties: { messageExpiryInterval: 600 } },
      );
      // The save the crash will go back to: both commands queued.
      await site.broker.stop();
      const save = join(site.broker.dir, 'mosquitto.db');
      copyFileSync(save, `${save}.old`);
      await site.broker.restart();

      intake = newIntake();
      site.cleanups.push(() => intake.stop());
      await site.connect(intake);
      const result = (key: string, replayed: boolean): Promise<unknown> =>
        issuer.waitFor(
          (m) => m.json().key === key && m.json().replayed === replayed,
          10_000,
          `${replayed ? 'replay' : 'result'} of ${key}`,
        );
      await result(timedKey, false);
      await result(expiryKey, false);
      expect(device.counters.writesReceived).toBe(before + 2);

      // The crash, and the old save back in place.
      await site.broker.kill();
      copyFileSync(`${save}.old`, save);
      await site.broker.restart();
      await result(timedKey, true);
      await result(expiryKey, true);
      expect(site.broker.deliveriesTo(clientId, cmdTopic)).toHaveLength(4);
      expect(device.counters.writesReceived).toBe(before + 2);
      for (const key of [timedKey, expiryKey]) {
        expect(site.stack.journal.findByKey(key).map((r) => r.state)).toEqual(['confirmed']);
      }
    });
  },
);
