import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { Logger } from '../../src/core/logger.js';
import { MqttIntake, type MqttConfig } from '../../src/intake/mqtt.js';
import { tempDir } from '../helpers/fixtures.js';
import { intakeConfig } from '../helpers/mosquitto.js';
import { mosquittoAvailable, until, useMqttSite } from '../helpers/mqtt-site.js';

/**
 * A CONNECT that never gets an answer must be said: the intake stayed unconnected with nothing
 * in the log above debug and /readyz saying only "not connected to the broker" when Mosquitto
 * closed the connection on a CONNECT it found malformed (no CONNACK, no socket error), or when
 * MQTT.js refused to write the CONNECT (an error without a code, which MQTT.js swallows).
 *
 * The configurations here are built past the schema, which now refuses both (a user name with
 * a control character, a password without a user name: test/config/mqtt-connect.test.ts):
 * they stand for any CONNECT a broker drops unanswered or MQTT.js will not send.
 */

const available = mosquittoAvailable();

interface Line {
  readonly level: string;
  readonly fields: Record<string, unknown>;
  readonly message: string;
}

function recordingLogger(lines: Line[]): Logger {
  const at =
    (level: string) =>
    (fields: object, message = ''): void => {
      lines.push({ level, fields: fields as Record<string, unknown>, message });
    };
  const logger: Logger = {
    debug: at('debug'),
    info: at('info'),
    warn: at('warn'),
    error: at('error'),
    child: () => logger,
  };
  return logger;
}

describe.skipIf(!available)('MQTT intake: a CONNECT refused without an answer', () => {
  // No test here addresses `u1`: no OPC UA PLC (seconds of CPU to start and stop).
  const site = useMqttSite({}, { opcua: false });
  let intake: MqttIntake | null = null;
  const dirs: (() => void)[] = [];

  afterEach(async () => {
    await intake?.stop();
    intake = null;
    for (const cleanup of dirs.splice(0)) cleanup();
  });

  const start = (config: MqttConfig, lines: Line[]): MqttIntake => {
    const made = new MqttIntake({
      config,
      gatewayId: 'gw-refused',
      pipeline: site.stack.pipeline,
      identities: site.stack.identities,
      metrics: site.stack.metrics,
      logger: recordingLogger(lines),
      reconnect: { minMs: 100, maxMs: 400 },
      retentionHours: 48,
    });
    intake = made;
    made.start();
    return made;
  };

  it('says why when the broker closes the connection on the CONNECT: log (warn) and health', async () => {
    const lines: Line[] = [];
    const refusals = (): number =>
      site.broker
        .log()
        .split('\n')
        .filter((l) => l.includes('disconnected due to protocol error')).length;
    const before = refusals();
    const running = start({ ...intakeConfig(site.broker.url), username: 'plant\tgateway' }, lines);

    // Ground truth: the broker refused the CONNECT (its log), more than once (reconnections).
    await until(() => (refusals() >= before + 2 ? true : undefined), 10_000, 'refused CONNECTs');
    await until(() => running.health().lastError ?? undefined, 5_000, 'a reason');
    expect(running.connected()).toBe(false);
    expect(running.health().lastError).toContain(
      'the broker closed the connection without answering the CONNECT',
    );
    const warned = lines.filter((l) => l.level === 'warn' && l.message === 'MQTT connection error');
    // Once for the streak, not at every reconnection.
    expect(warned).toHaveLength(1);
    expect((warned[0]?.fields.err as Error).message).toContain('without answering the CONNECT');
  });

  it('says why when MQTT.js refuses to send the CONNECT', async () => {
    const lines: Line[] = [];
    const { dir, cleanup } = tempDir('sluice-mqtt-refused-');
    dirs.push(cleanup);
    const passwordFile = join(dir, 'password');
    writeFileSync(passwordFile, 'secret\n');
    const connections = site.broker.connectionsOf('sluice-gw-refused');
    const running = start({ ...intakeConfig(site.broker.url), passwordFile }, lines);

    await until(() => running.health().lastError ?? undefined, 10_000, 'a reason');
    expect(running.health().lastError).toBe(
      'MQTT client refused to send a packet: Username is required to use password',
    );
    expect(
      lines.filter((l) => l.level === 'warn' && l.message === 'MQTT connection error'),
    ).toHaveLength(1);
    expect(running.connected()).toBe(false);
    // Ground truth: no CONNECT reached the broker.
    expect(site.broker.connectionsOf('sluice-gw-refused')).toBe(connections);
  });
});
