import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MqttIntake } from '../../src/intake/mqtt.js';
import { tempDir } from '../helpers/fixtures.js';
import { intakeConfig } from '../helpers/mosquitto.js';
import { recordingLogger } from '../helpers/recording-logger.js';
import { startStack, type Stack } from '../helpers/stack.js';

/**
 * TLS material MQTT.js cannot use (a client key and certificate that do not parse) makes its
 * connect() throw before any connection exists. The start's check (src/config/preflight.ts)
 * refuses such files in a site, but an intake built from code is not checked there, and files
 * may change after it: the intake's start threw (ending the daemon's start) and its stop threw
 * again (mqtt.js's end() on a client without a stream). No broker is needed: the failure comes
 * before anything reaches the network, and nothing may.
 */

let stack: Stack;
let dir: string;
let cleanup: () => void;

beforeAll(async () => {
  ({ dir, cleanup } = tempDir('sluice-mqtt-unusable-tls-'));
  stack = await startStack({ opcua: false });
}, 30_000);

afterAll(async () => {
  await stack.stop();
  cleanup();
});

describe('an MQTT intake whose TLS key and certificate do not parse', () => {
  it('starts without a connection, says why, and stops', async () => {
    const certFile = join(dir, 'client.pem');
    const keyFile = join(dir, 'client.key');
    writeFileSync(certFile, 'not a certificate\n');
    writeFileSync(keyFile, 'not a key\n');
    const { logger, lines } = recordingLogger();
    const intake = new MqttIntake({
      config: intakeConfig('mqtts://127.0.0.1:1', { certFile, keyFile, clientId: 'sluice-tls' }),
      gatewayId: 'tls',
      pipeline: stack.pipeline,
      identities: stack.identities,
      metrics: stack.metrics,
      logger,
    });
    expect(() => {
      intake.start();
    }).not.toThrow();
    expect(intake.connected()).toBe(false);
    expect(intake.health().lastError).toMatch(/PEM|key|certificate/i);
    expect(lines.filter((l) => l.msg === 'MQTT connection error')).toHaveLength(1);
    await expect(intake.stop()).resolves.not.toThrow();
  });
});
