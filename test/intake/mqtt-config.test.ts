import { describe, expect, it } from 'vitest';
import { configSchema, mqttConfigSchema } from '../../src/config/config.js';

/** The `mqtt` section of the configuration: defaults and errors of the keys issue 9 added. */

const base = { url: 'mqtt://127.0.0.1:1883', identity: 'plant' };

function errorsOf(mqtt: Record<string, unknown>): string[] {
  const parsed = configSchema.safeParse({
    gatewayId: 'g1',
    stateDir: 'state',
    mqtt: { ...base, ...mqtt },
    identities: { plant: { devices: ['*'] } },
    plcs: {},
    devices: {},
  });
  return parsed.success ? [] : parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`);
}

describe('mqtt configuration', () => {
  it('defaults: MQTT 5 with fallback, root sluice, untimed commands refused, replies/# allowed', () => {
    expect(mqttConfigSchema.parse(base)).toMatchObject({
      protocolVersion: 'auto',
      topicRoot: 'sluice',
      acceptUntimedCommands: false,
      responseTopics: ['replies/#', '+/replies/#'],
    });
  });

  it('keeps files written before `auto`: 4 and 5 still mean that version', () => {
    expect(mqttConfigSchema.parse({ ...base, protocolVersion: 4 }).protocolVersion).toBe(4);
    expect(mqttConfigSchema.parse({ ...base, protocolVersion: 5 }).protocolVersion).toBe(5);
    expect(errorsOf({ protocolVersion: 3 })).toEqual([
      expect.stringMatching(/^mqtt.protocolVersion: /),
    ]);
  });

  it('reports a bad topic root and bad response topic filters with their paths, all at once', () => {
    expect(errorsOf({ topicRoot: 'plants/+', responseTopics: ['ok/#', 'a/#/b', 'x+'] })).toEqual([
      'mqtt.topicRoot: must be one or more plain MQTT topic levels: has a wildcard or NUL',
      'mqtt.responseTopics.1: is not an MQTT topic filter: "#" must be a whole level, the last one',
      'mqtt.responseTopics.2: is not an MQTT topic filter: "+" must be a whole level',
    ]);
    expect(
      errorsOf({ topicRoot: 'plant/a', responseTopics: [], acceptUntimedCommands: true }),
    ).toEqual([]);
  });
});
