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
  }
});
