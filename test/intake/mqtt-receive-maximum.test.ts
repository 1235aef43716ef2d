import { describe, expect, it } from 'vitest';
import type { CommandRecord } from '../../src/core/journal.js';
import type { MqttIntake } from '../../src/intake/mqtt.js';
import { mosquittoAvailable, TestClient, until, useMqttSite } from '../helpers/mqtt-site.js';
import { ReceiveMaximumProxy } from '../helpers/receive-maximum-proxy.js';

/**
 * The gateway keeps to the broker's Receive Maximum (MQTT 5 §3.3.4): no more QoS 1 results
 * unacknowledged at once than the broker's CONNACK allows. It handed every result to mqtt.js at
 * once (mqtt.js does not keep to the limit), so a burst of results — commands settling
 * together, or those held through a broker outage — went past it; a broker that enforces the
 * limit ends the connection (DISCONNECT 0x93), and mqtt.js sent them all again on the next
 * one: results not delivered, and commands not heard, for as long as it went on.
 *
 * Real Mosquitto (announcing Receive Maximum 5: max_inflight_messages), intake, SQLite journal
 * and sluice-sim; Mosquitto does not enforce the limit on what it receives, so a proxy in front
 * of it does, as a broker that does would (test/helpers/receive-maximum-proxy.ts). Ground
 * truth: what a subscriber receives from the broker, and the journal.
 */

const available = mosquittoAvailable();
const GATEWAY = 'gwrm';
const PREFIX = `sluice/${GATEWAY}`;

// 1: one QoS 1 publication unacknowledged at a time, the retained status (`online` at the
// SUBACK, `offline` at a stop) included: it shares the limit with the results.
describe.skipIf(!available).each([5, 1])(
  "MQTT intake: the broker's Receive Maximum %i",
  (LIMIT) => {
    const site = useMqttSite({ settings: [`max_inflight_messages ${LIMIT}`] }, { opcua: false });

    it('sends a burst of results, and the status with them, no faster than the broker acknowledges them; each arrives once', async () => {
      const proxy = await ReceiveMaximumProxy.open(site.broker.port, LIMIT);
      site.cleanups.push(() => proxy.close());
      const intake: MqttIntake = site.intake({
        gatewayId: GATEWAY,
        config: { url: proxy.url, protocolVersion: 5 },
        reconnect: { minMs: 100, maxMs: 400 },
      });
      site.cleanups.push(() => intake.stop());
      await site.connect(intake);
      // A persistent session: it misses nothing published while the broker restarts.
      const observer = await TestClient.connect(site.broker.url, {
        clientId: 'rm-observer',
        clean: false,
        properties: { sessionExpiryInterval: 600 },
      });
      site.cleanups.push(() => observer.end());
      await observer.subscribe(`${PREFIX}/result/#`);
      await observer.subscribe(`${PREFIX}/status`);
      const statuses = (): string[] =>
        observer.messages.filter((m) => m.topic === `${PREFIX}/status`).map((m) => m.text);
      const resultsOf = (records: readonly CommandRecord[]): string[] => {
        const keys = new Set(records.map((r) => r.key));
        return observer.messages
          .filter((m) => m.topic === `${PREFIX}/result/v1` && keys.has(m.json().key as string))
          .map((m) => m.text);
      };
      const stored = (records: readonly CommandRecord[]): string[] =>
        records.map((r) => site.stack.journal.get(r)?.response ?? '');

      // Thirty results in one turn.
      const burst = site.forbiddenResults(30);
      await until(
        () => (resultsOf(burst).length >= burst.length || proxy.exceeded > 0 ? true : undefined),
        15_000,
        'the burst delivered, or the connection ended for it',
      );
      expect(proxy.exceeded).toBe(0);
      expect(proxy.mostInFlight).toBeLessThanOrEqual(LIMIT);
      await until(() => (resultsOf(burst).length >= burst.length ? true : undefined), 10_000);
      expect(resultsOf(burst)).toEqual(stored(burst));

      // Thirty held while the broker is away, sent when it is back.
      const onlineBefore = statuses().filter((t) => t === 'online').length;
      await site.broker.stop();
      await until(() => (intake.connected() ? undefined : true), 5_000, 'the intake disconnected');
      const held = site.forbiddenResults(30);
      await site.stack.pipeline.durable();
      await site.broker.restart();
      await until(
        () => (resultsOf(held).length >= held.length || proxy.exceeded > 0 ? true : undefined),
        15_000,
        'the held results delivered, or the connection ended for them',
      );
      expect(proxy.exceeded).toBe(0);
      expect(proxy.mostInFlight).toBeLessThanOrEqual(LIMIT);
      await until(() => (resultsOf(held).length >= held.length ? true : undefined), 10_000);
      expect(resultsOf(held)).toEqual(stored(held));
      expect(intake.connected()).toBe(true);
      // The reconnection's `online`, within the limit with the results held.
      await until(
        () => (statuses().filter((t) => t === 'online').length > onlineBefore ? true : undefined),
        10_000,
        "the reconnection's `online`",
      );
      expect(proxy.exceeded).toBe(0);

      // `offline` once the intake takes no more commands, amid a burst of results: within the
      // limit with them, and none of them lost.
      const last = site.forbiddenResults(30);
      intake.stopTakingCommands();
      await until(
        () =>
          (statuses().at(-1) === 'offline' && resultsOf(last).length >= last.length) ||
          proxy.exceeded > 0
            ? true
            : undefined,
        15_000,
        '`offline` and the last results delivered, or the connection ended for them',
      );
      expect(proxy.exceeded).toBe(0);
      expect(proxy.mostInFlight).toBeLessThanOrEqual(LIMIT);
      expect(resultsOf(last)).toEqual(stored(last));
    }, 60_000);
  },
);
