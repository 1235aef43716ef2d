import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { mosquittoAvailable, TestClient, timed, until, useMqttSite } from '../helpers/mqtt-site.js';

/**
 * The status topic during a graceful stop. Once the intake stops taking commands (the daemon's
 * stop, before the shutdown bound in which the commands in flight settle), a command published
 * is left with the broker until the next start: the status must say `offline` then, not at the
 * end of the bound. It said `online` until the end, and a plant system that sends its commands
 * where the status says `online` (a failover to another gateway on `offline`) sent them to a
 * gateway that would not run them before its restart. The results of the commands still
 * settling are published all the same. The real intake, Mosquitto, the simulated plant; ground
 * truth: what a subscriber of the status and result topics receives, the journal, the
 * simulator's write count.
 */

const available = mosquittoAvailable();

describe.skipIf(!available)('MQTT intake: status during a graceful stop', () => {
  const site = useMqttSite({}, { opcua: false });

  for (const version of [5, 4] as const) {
    it(`MQTT ${version === 5 ? '5' : '3.1.1'}: says offline once it stops taking commands, and still publishes the results of those in flight`, async () => {
      const gateway = `gwstopping${version}`;
      const prefix = `sluice/${gateway}`;
      const intake = site.intake({ gatewayId: gateway, config: { protocolVersion: version } });
      site.cleanups.push(() => intake.stop());
      const observer = await TestClient.connect(site.broker.url);
      site.cleanups.push(() => observer.end());
      await observer.subscribe(`${prefix}/status`);
      await observer.subscribe(`${prefix}/result/#`);
      await site.connect(intake);
      await observer.waitFor((m) => m.text === 'online', 5_000, '`online`');

      // A command in flight: claimed and written, its valve travelling.
      const key = randomUUID();
      const before = site.stack.plant.device('v1').counters.writesReceived;
      const action = site.stack.plant.device('v1').published.state === 'CLOSED' ? 'open' : 'close';
      await observer.publish(`${prefix}/cmd/v1`, timed({ action, key, ttlMs: 60_000 }));
      await until(
        () =>
          site.stack.pipeline.get({ scope: 'plant', key })?.state === 'dispatched'
            ? true
            : undefined,
        10_000,
        'the command dispatched',
      );

      intake.stopTakingCommands();
      const offline = await observer.waitFor(
        (m) => m.topic === `${prefix}/status` && m.text === 'offline',
        5_000,
        '`offline` once commands are no longer taken',
      );
      const result = await observer.waitFor(
        (m) => m.topic === `${prefix}/result/v1` && m.json().key === key,
        10_000,
        'the result of the command in flight',
      );
      expect(result.json()).toMatchObject({ state: 'confirmed' });
      expect(site.stack.plant.device('v1').counters.writesReceived).toBe(before + 1);
      // Said while the command was still settling, before its result.
      expect(observer.messages.indexOf(offline)).toBeLessThan(observer.messages.indexOf(result));
      // Retained: a subscriber arriving now is told so.
      const late = await TestClient.connect(site.broker.url);
      site.cleanups.push(() => late.end());
      await late.subscribe(`${prefix}/status`);
      const retained = await late.waitFor((m) => m.topic === `${prefix}/status`, 5_000, 'status');
      expect(retained.text).toBe('offline');
      await intake.stop();
    }, 30_000);
  }
});
