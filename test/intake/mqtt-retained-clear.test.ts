import { describe, expect, it } from 'vitest';
import { mosquittoAvailable, TestClient, until, useMqttSite } from '../helpers/mqtt-site.js';
import { recordingLogger } from '../helpers/recording-logger.js';

/**
 * Clearing a retained command as docs/mqtt-api.md says to (an empty retained message on the
 * command topic). The broker passes the clearing on to the gateway, subscribed there: over
 * MQTT 5 with its retain flag (retain as published), over 3.1.1 without. It is no command and
 * has no one to answer: acknowledged, and said at info, not warned of as a malformed command
 * message, which is what an operator following the documentation got (and an alert on warnings
 * with it). The real intake and Mosquitto; ground truth: the broker's log (the gateway's PUBACK)
 * and the intake's log.
 */

const available = mosquittoAvailable();

describe.skipIf(!available)('MQTT intake: the clearing of a retained command', () => {
  const site = useMqttSite({}, { opcua: false });

  for (const version of [5, 4] as const) {
    it(`MQTT ${version === 5 ? '5' : '3.1.1'}: is acknowledged and said at info, not warned of as malformed`, async () => {
      const gateway = `gwclear${version}`;
      const clientId = `sluice-${gateway}`;
      const { logger, lines } = recordingLogger();
      const intake = site.intake({
        gatewayId: gateway,
        config: { protocolVersion: version },
        logger,
      });
      site.cleanups.push(() => intake.stop());
      await site.connect(intake);
      const operator = await TestClient.connect(site.broker.url, { protocolVersion: version });
      site.cleanups.push(() => operator.end());
      const pubacks = site.broker.pubacksFrom(clientId);
      await operator.publish(`sluice/${gateway}/cmd/v1`, '', { retain: true });
      await until(
        () => (site.broker.pubacksFrom(clientId) > pubacks ? true : undefined),
        10_000,
        "the gateway's PUBACK",
      );
      const said = lines.filter((l) => l.device === 'v1');
      expect(said.map((l) => [l.level, l.msg])).toEqual([
        [
          30,
          'empty message on a command topic (the clearing of a retained command): acknowledged, nothing to do',
        ],
      ]);
      await intake.stop();
    });
  }
});
