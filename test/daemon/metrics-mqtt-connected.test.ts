import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { parse, stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { Daemon } from '../../src/daemon/daemon.js';
import type { Plant } from '../../simulators/plant.js';
import { startModbusPlant, writeTokenSite } from '../helpers/daemon-site.js';
import { tempDir } from '../helpers/fixtures.js';
import { httpsRequest } from '../helpers/loopback-https.js';
import { mosquittoAvailable, startMosquitto, until, type Mosquitto } from '../helpers/mosquitto.js';

/**
 * `sluice_mqtt_connected` in a real daemon's /metrics, read over HTTPS as a scraper reads it: 1
 * while the gateway is connected with its command subscription granted, 0 once the broker
 * refuses its CONNECT (the password rotated on the broker and not on the gateway), with /readyz
 * saying why. No metric said it before: a scraper saw a daemon that heard no command as it saw
 * a healthy one. Real Mosquitto with a password file (mosquitto_passwd) and sluice-sim; ground
 * truth for the refusal is the broker's log.
 */

const available = mosquittoAvailable();
const GATEWAY = 'gwmqttconnected';
const CLIENT_ID = `sluice-${GATEWAY}`;
const TOKEN = 'mqtt-connected-metrics-token';
const OLD = 'mqtt-connected-password-old';
const NEW = 'mqtt-connected-password-new';

describe.skipIf(!available)('sluice_mqtt_connected of a daemon', () => {
  let broker: Mosquitto;
  let plant: Plant;
  let daemon: Daemon | null = null;
  let cert: string;
  let configPath: string;
  let brokerPasswords: string;
  const cleanups: (() => Promise<void> | void)[] = [];

  beforeAll(async () => {
    const temp = tempDir('sluice-mqtt-connected-');
    cleanups.push(temp.cleanup);
    brokerPasswords = join(temp.dir, 'broker.passwd');
    execFileSync('mosquitto_passwd', ['-c', '-b', brokerPasswords, 'gw', OLD]);
    broker = await startMosquitto({ settings: [`password_file ${brokerPasswords}`] });
    cleanups.push(() => broker.close());
    plant = await startModbusPlant({ v1: { profile: 'valve', base: 0, travelMs: 200 } });
    cleanups.push(() => plant.stop());
    const site = await writeTokenSite(temp.dir, plant, { gatewayId: GATEWAY, token: TOKEN });
    cert = site.cert;
    configPath = site.configPath;
    const passwordFile = join(temp.dir, 'gateway.password');
    writeFileSync(passwordFile, `${OLD}\n`, { mode: 0o600 });
    const config = parse(readFileSync(configPath, 'utf8')) as Record<string, unknown>;
    config.mqtt = { url: broker.url, identity: 'scada', username: 'gw', passwordFile };
    writeFileSync(configPath, stringify(config));
  }, 60_000);

  afterAll(async () => {
    await daemon?.stop();
    for (const cleanup of cleanups.reverse()) await cleanup();
  });

  async function get(path: string): Promise<{ status: number; body: string }> {
    const port = daemon?.https?.port ?? 0;
    return httpsRequest({ port, ca: cert, token: path === '/metrics' ? '' : TOKEN }, 'GET', path);
  }

  /** The value of `sluice_mqtt_connected` in /metrics once `want` holds of it. */
  async function connectedIs(want: number): Promise<void> {
    let last: number | undefined;
    await until(
      async () => {
        const scrape = await get('/metrics');
        expect(scrape.status).toBe(200);
        const line = scrape.body.split('\n').find((l) => l.startsWith('sluice_mqtt_connected '));
        last = line === undefined ? undefined : Number(line.slice('sluice_mqtt_connected '.length));
        return last === want ? true : undefined;
      },
      15_000,
      `sluice_mqtt_connected ${want} (last ${String(last)})`,
    );
  }

  it('is 1 while connected and subscribed, 0 once the broker refuses the CONNECT; /readyz says why', async () => {
    daemon = await Daemon.start(loadConfig(configPath, { env: {} }), {
      logger: pino({ level: 'silent' }),
      monitorIntervalMs: 200,
    });
    await connectedIs(1);
    expect(broker.connectionsOf(CLIENT_ID)).toBe(1);

    // The broker takes another password from its restart on; the gateway still sends the old.
    await broker.stop();
    execFileSync('mosquitto_passwd', ['-b', brokerPasswords, 'gw', NEW]);
    const logged = broker.log().length;
    await broker.restart();
    await until(
      () =>
        // Mosquitto names no client id it has not authenticated; the gateway is its only client.
        broker.log().slice(logged).includes('Client <unknown> disconnected, not authorised.')
          ? true
          : undefined,
      15_000,
      "the broker's refusal of the gateway",
    );
    await connectedIs(0);
    const ready = await get('/readyz');
    expect(ready.status).toBe(503);
    expect((JSON.parse(ready.body) as { checks: { mqtt: unknown } }).checks.mqtt).toEqual({
      ok: false,
      detail: 'not connected to the broker: Connection refused: Not authorized',
    });
    await daemon.stop();
    daemon = null;
  }, 60_000);
});
