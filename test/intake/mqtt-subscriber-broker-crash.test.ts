import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import type { MqttIntake } from '../../src/intake/mqtt.js';
import {
  mosquittoAvailable,
  TestClient,
  timed,
  until,
  useMqttSite,
  type MqttSite,
} from '../helpers/mqtt-site.js';

/**
 * What holds of a result queued for a plant system's persistent session while the plant
 * system is away, when the broker then crashes (SIGKILL: a power cut) and comes back from its
 * persistence file (docs/mqtt-api.md, sessions). Mosquitto saves that file at a clean stop and
 * every `autosave_interval` (1800 s by default): a result it took after the last save is gone
 * with the crash, though the gateway had the broker's PUBACK and does not send it again; one
 * taken before a save is delivered once at the plant system's return. The subscriber listens
 * from its CONNECT on (TestClient.connect), so that a queued message delivered right behind the
 * CONNACK is not missed. Ground truth: the broker's log (the result received from the gateway,
 * its saves), the CONNACK's Session Present, what the subscriber receives, and the journal.
 */

const available = mosquittoAvailable();

/** The saves Mosquitto logged so far. */
function saves(site: MqttSite): number {
  return site.broker
    .log()
    .split('\n')
    .filter((l) => l.includes('Saving in-memory database')).length;
}

/** The PUBLISHes on a result topic the broker received from `clientId` so far. */
function resultsReceived(site: MqttSite, clientId: string, prefix: string): number {
  return site.broker
    .log()
    .split('\n')
    .filter(
      (l) => l.includes(`Received PUBLISH from ${clientId} `) && l.includes(`'${prefix}/result/`),
    ).length;
}

/**
 * The gateway connected, and a plant system's persistent session subscribed to its results and
 * gone away; `save` puts that session in the broker's persistence file.
 */
async function planted(
  site: MqttSite,
  gatewayId: string,
  plantId: string,
  save: () => Promise<void>,
): Promise<{ readonly intake: MqttIntake; readonly prefix: string }> {
  const prefix = `sluice/${gatewayId}`;
  const intake = site.intake({
    gatewayId,
    config: { protocolVersion: 5, clientId: `sluice-${gatewayId}` },
    reconnect: { minMs: 100, maxMs: 500 },
  });
  site.cleanups.push(() => intake.stop());
  await site.connect(intake);
  const plant = await TestClient.connect(site.broker.url, {
    clientId: plantId,
    clean: false,
    properties: { sessionExpiryInterval: 600 },
  });
  await plant.subscribe(`${prefix}/result/#`);
  await plant.client.endAsync();
  await save();
  await until(() => (intake.connected() ? true : undefined), 10_000, 'the intake subscribed');
  return { intake, prefix };
}

/**
 * A command run while the plant system is away; resolves once the broker has its result, with
 * the key and the result as the journal has it.
 */
async function settledAway(
  site: MqttSite,
  gatewayId: string,
  prefix: string,
): Promise<{ readonly key: string; readonly response: string }> {
  const issuer = await TestClient.connect(site.broker.url);
  site.cleanups.push(() => issuer.end());
  const key = randomUUID();
  const received = resultsReceived(site, `sluice-${gatewayId}`, prefix);
  const device = site.stack.plant.device('v1');
  const action = device.published.state === 'CLOSED' ? 'open' : 'close';
  await issuer.publish(`${prefix}/cmd/v1`, timed({ key, action }));
  await until(
    () => (resultsReceived(site, `sluice-${gatewayId}`, prefix) > received ? true : undefined),
    10_000,
    'the result received by the broker',
  );
  const record = site.stack.pipeline.get({ scope: 'plant', key });
  expect(record?.state).toBe('confirmed');
  return { key, response: record?.response ?? '' };
}

/** The plant system back on its session: its CONNACK's Session Present, and what it receives. */
async function plantBack(
  site: MqttSite,
  plantId: string,
  prefix: string,
): Promise<{ readonly plant: TestClient; readonly sessionPresent: boolean }> {
  const plant = await TestClient.connect(site.broker.url, {
    clientId: plantId,
    clean: false,
    properties: { sessionExpiryInterval: 600 },
  });
  site.cleanups.push(() => plant.end());
  // A marker published now on the subscribed filter comes after anything queued for the
  // session (a session's queued messages are sent at its CONNACK, before new ones).
  const marker = await TestClient.connect(site.broker.url);
  site.cleanups.push(() => marker.end());
  await marker.publish(`${prefix}/result/marker`, 'marker');
  await plant.waitFor((m) => m.text === 'marker', 10_000, 'the marker');
  return { plant, sessionPresent: plant.sessionPresent };
}

describe.skipIf(!available)(
  'MQTT intake: a result queued for an absent plant system when the broker crashes',
  () => {
    describe('saved every second (autosave_interval 1)', () => {
      const site = useMqttSite(
        { settings: ['autosave_interval 1'] },
        { opcua: false, travelMs: 100 },
      );

      it('is delivered once when the plant system is back, if a save came between', async () => {
        const gatewayId = 'gwsubsaved';
        const plantId = 'plant-saved';
        const { prefix } = await planted(site, gatewayId, plantId, async () => {
          const before = saves(site);
          await until(() => (saves(site) > before + 1 ? true : undefined), 5_000, 'two autosaves');
        });
        const { key, response } = await settledAway(site, gatewayId, prefix);
        // Two saves begun since: the first has been written (Mosquitto logs a save as it begins
        // it, and a kill during it leaves the file before).
        const before = saves(site);
        await until(() => (saves(site) > before + 1 ? true : undefined), 5_000, 'two autosaves');
        await site.broker.kill();
        await site.broker.restart();

        const { plant, sessionPresent } = await plantBack(site, plantId, prefix);
        expect(sessionPresent).toBe(true);
        const copies = plant.messages.filter((m) => m.text !== 'marker');
        expect(copies.map((m) => m.text)).toEqual([response]);
        expect(copies[0]?.json()).toMatchObject({ key, state: 'confirmed', replayed: false });
      });
    });

    describe('saved at the default interval (1800 s)', () => {
      const site = useMqttSite({}, { opcua: false, travelMs: 100 });

      it('is lost with the crash when no save came between: the session is back without it', async () => {
        const gatewayId = 'gwsubunsaved';
        const plantId = 'plant-unsaved';
        const { prefix } = await planted(site, gatewayId, plantId, async () => {
          // A clean stop saves the session (subscribed, nothing queued).
          await site.broker.stop();
          await site.broker.restart();
        });
        const { key } = await settledAway(site, gatewayId, prefix);
        await site.broker.kill();
        await site.broker.restart();

        const { plant, sessionPresent } = await plantBack(site, plantId, prefix);
        expect(sessionPresent).toBe(true);
        expect(plant.messages.map((m) => m.text)).toEqual(['marker']);
        // The gateway does not send it again: the journal has it.
        expect(site.stack.journal.findByKey(key).map((r) => r.state)).toEqual(['confirmed']);
      });
    });
  },
);
