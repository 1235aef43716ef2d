import { describe, expect, it } from 'vitest';
import { mosquittoAvailable, until, useMqttSite } from '../helpers/mqtt-site.js';
import { recordingLogger } from '../helpers/recording-logger.js';

/**
 * A broker restarted several times in a row (an operator editing mosquitto.conf, a broker in a
 * restart loop): each restart closes the gateway's connection soon after it was accepted,
 * without a reason (Mosquitto 2.0.11 sends no DISCONNECT as it stops, over MQTT 5 either), as
 * another client with the gateway's client id does. A broker that was away long enough for a
 * connection attempt to fail meanwhile was not held by another client: it must not be said to
 * be one. The real intake, a real Mosquitto stopped and started again on its port.
 */

const available = mosquittoAvailable();

describe.skipIf(!available)('MQTT intake: a broker restarted again and again', () => {
  const site = useMqttSite({}, { opcua: false });

  for (const protocolVersion of [5, 4] as const) {
    it(`MQTT ${protocolVersion === 5 ? '5' : '3.1.1'}: is not taken for another client on the client id`, async () => {
      const gateway = `gwrestart${protocolVersion}`;
      const { logger, lines } = recordingLogger();
      const intake = site.intake({
        gatewayId: gateway,
        config: { protocolVersion },
        logger,
        reconnect: { minMs: 100, maxMs: 400 },
      });
      site.cleanups.push(() => intake.stop());
      await site.connect(intake);
      const failedAttempts = (): number =>
        lines.filter((l) => l.msg === 'MQTT connection attempt failed').length;
      for (let i = 0; i < 4; i++) {
        const failed = failedAttempts();
        await site.broker.stop();
        // Away until the gateway has found it so (an attempt refused).
        await until(() => (failedAttempts() > failed ? true : undefined), 10_000, 'attempt failed');
        await site.broker.restart();
        // Connected again to the restarted broker, with its subscription (its SUBACK).
        await until(() => (intake.connected() ? true : undefined), 10_000, 'reconnected');
      }
      const said = lines.filter((l) => String(l.msg).includes('another client connect'));
      expect(said).toEqual([]);
      expect(intake.health().lastError ?? '').not.toContain('another client');
      await intake.stop();
    }, 60_000);

    // Back before the gateway tried again: no attempt fails between, and the pattern alone is
    // a takeover's. The broker published the gateway's Will as it stopped (`offline`, kept on
    // disk: persistence true), which a takeover does not: read back at each reconnection.
    it(`MQTT ${protocolVersion === 5 ? '5' : '3.1.1'}: restarted faster than the reconnection delay, is not taken for another client`, async () => {
      const gateway = `gwquick${protocolVersion}`;
      const clientId = `sluice-${gateway}`;
      const { logger, lines } = recordingLogger();
      const intake = site.intake({
        gatewayId: gateway,
        config: { protocolVersion },
        logger,
        // Drawn from 0.5–1 s: a restart of Mosquitto here takes 100–200 ms.
        reconnect: { minMs: 1_000, maxMs: 1_000 },
      });
      site.cleanups.push(() => intake.stop());
      await site.connect(intake);
      for (let i = 0; i < 5; i++) {
        const connections = site.broker.connectionsOf(clientId);
        await site.broker.stop();
        await site.broker.restart();
        await until(
          () => (site.broker.connectionsOf(clientId) > connections ? true : undefined),
          10_000,
          'reconnected',
        );
        await until(() => (intake.connected() ? true : undefined), 10_000, 'subscribed');
      }
      // The scenario (judged below): at least three closes without a reason or an error, each
      // followed by a connection with no failed attempt between (a restart may also reset the
      // connection, an error, or outlast the delay on a loaded machine: counted neither way),
      // judged once back, before the command subscription's SUBACK.
      const said = lines.filter((l) => String(l.msg).includes('another client connect'));
      expect(said).toEqual([]);
      expect(intake.health().lastError ?? '').not.toContain('another client');
      const judged = lines.filter((l) => String(l.msg).startsWith('the MQTT broker was restarted'));
      expect(judged.length).toBeGreaterThanOrEqual(3);
      await intake.stop();
    }, 60_000);
  }
});
