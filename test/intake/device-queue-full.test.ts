import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { mosquittoAvailable, TestClient, timed, useMqttSite } from '../helpers/mqtt-site.js';
import { TOKENS } from '../helpers/stack.js';
import { call, makePki, startIntake, until } from './https-client.js';

/**
 * A device's queue of commands not yet dispatched is bounded at the door
 * (commands.maxQueuedPerDevice, 2 here): past it a new command is refused before it is
 * journaled, over HTTPS `429 DEVICE_QUEUE_FULL` with `Retry-After` (one confirm timeout of the
 * device), over MQTT acknowledged and answered `DEVICE_QUEUE_FULL` on the result topic, as a
 * command for an unknown device is; neither is in the journal. A stop is always taken, and
 * supersedes what was queued. Against the real HTTPS and MQTT intakes, a real Mosquitto, the
 * SQLite journal and sluice-sim (a slow valve, so that its open stays in flight).
 */

const available = mosquittoAvailable();
const GATEWAY = 'gwq';
const PREFIX = `sluice/${GATEWAY}`;

describe.skipIf(!available)('a device whose queue is full', () => {
  const site = useMqttSite({}, { opcua: false, travelMs: 30_000, maxQueuedPerDevice: 2 });

  it('refuses what would queue past the bound on both intakes, unjournaled; a stop is taken', async () => {
    const pki = await makePki();
    site.cleanups.push(() => {
      pki.cleanup();
    });
    const api = await startIntake(site.stack, pki);
    site.cleanups.push(() => api.stop());
    const intake = site.intake({ gatewayId: GATEWAY, config: { protocolVersion: 5 } });
    site.cleanups.push(() => intake.stop());
    await site.connect(intake);
    const observer = await TestClient.connect(site.broker.url, { clientId: 'queue-observer' });
    site.cleanups.push(() => observer.end());
    await observer.subscribe(`${PREFIX}/result/#`);
    const issuer = await TestClient.connect(site.broker.url, { clientId: 'queue-issuer' });
    site.cleanups.push(() => issuer.end());

    const post = (key: string, action: string): ReturnType<typeof call> =>
      call(api, 'POST', '/v1/commands', {
        token: TOKENS.plant,
        json: { device: 'v1', action },
        headers: { 'idempotency-key': key, prefer: 'respond-async' },
      });
    const opened = await post(`open-${randomUUID()}`, 'open');
    expect(opened.status).toBe(202);
    await until(() => site.stack.plant.device('v1').published.state === 'OPENING', 10_000);
    const queued = [`q1-${randomUUID()}`, `q2-${randomUUID()}`];
    expect((await post(queued[0]!, 'close')).status).toBe(202);
    expect((await post(queued[1]!, 'open')).status).toBe(202);

    const httpsKey = `full-${randomUUID()}`;
    const full = await post(httpsKey, 'close');
    expect(full.status, full.text).toBe(429);
    expect(full.json).toMatchObject({ code: 'DEVICE_QUEUE_FULL', device: 'v1' });
    // FAST_TIMING's confirm timeout, 3 s.
    expect(full.headers['retry-after']).toBe('3');
    expect(site.stack.journal.findByKey(httpsKey)).toEqual([]);

    const mqttKey = `full-${randomUUID()}`;
    await issuer.publish(`${PREFIX}/cmd/v1`, timed({ action: 'close', key: mqttKey }), {});
    const answer = await observer.waitFor(
      (m) => m.topic === `${PREFIX}/result/v1` && m.json().key === mqttKey,
      10_000,
      'the MQTT refusal',
    );
    expect(answer.json()).toMatchObject({ key: mqttKey, code: 'DEVICE_QUEUE_FULL' });
    expect(site.stack.journal.findByKey(mqttKey)).toEqual([]);

    const stopKey = `stop-${randomUUID()}`;
    const stop = await post(stopKey, 'stop');
    expect(stop.status, stop.text).toBe(202);
    const stopped = await site.stack.pipeline.waitForSettled(
      { scope: 'plant', key: stopKey },
      20_000,
    );
    expect(stopped?.state).toBe('confirmed');
    for (const key of queued) {
      expect(site.stack.journal.findByKey(key)).toMatchObject([
        { state: 'rejected', code: 'SUPERSEDED' },
      ]);
    }
  }, 60_000);
});
