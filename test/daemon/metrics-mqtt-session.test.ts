import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
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
import { StrippingProxy } from '../helpers/stripping-proxy.js';

/**
 * The MQTT session's metrics in a real daemon's /metrics, read over HTTPS as a scraper reads
 * them: `sluice_mqtt_subscription_identifiers_delivered` (the probe's verdict on each MQTT 5
 * connection, mqtt-identifier-probe.ts) and `sluice_mqtt_session_takeovers_suspected_total`
 * (closes taken for another client's takeover of the gateway's session, mqtt-takeover.ts). Real
 * Mosquitto and sluice-sim; the gateway reaches the broker through a TCP proxy that strips the
 * Subscription Identifier property when told to (test/helpers/stripping-proxy.ts: Mosquitto
 * cannot be made to drop them), the one double. The takeover: a stray `mosquitto_sub -i
 * <gateway's client id>` starting a clean session, as an operator might run it; ground truth
 * for it is the broker's log.
 */

const available = mosquittoAvailable();
const GATEWAY = 'gwmetricsmqtt';
const CLIENT_ID = `sluice-${GATEWAY}`;
const TOKEN = 'mqtt-session-metrics-token';

describe.skipIf(!available)('MQTT session metrics of a daemon', () => {
  let broker: Mosquitto;
  let plant: Plant;
  let proxy: StrippingProxy;
  let daemon: Daemon | null = null;
  let cert: string;
  let configPath: string;
  const cleanups: (() => Promise<void> | void)[] = [];

  beforeAll(async () => {
    broker = await startMosquitto();
    cleanups.push(() => broker.close());
    proxy = await StrippingProxy.open(broker.port);
    cleanups.push(() => proxy.close());
    plant = await startModbusPlant({ v1: { profile: 'valve', base: 0, travelMs: 200 } });
    cleanups.push(() => plant.stop());
    const temp = tempDir('sluice-metrics-mqtt-');
    cleanups.push(temp.cleanup);
    const site = await writeTokenSite(temp.dir, plant, { gatewayId: GATEWAY, token: TOKEN });
    cert = site.cert;
    configPath = site.configPath;
    const config = parse(readFileSync(configPath, 'utf8')) as Record<string, unknown>;
    config.mqtt = {
      url: `mqtt://127.0.0.1:${proxy.port}`,
      identity: 'scada',
      protocolVersion: 5,
    };
    writeFileSync(configPath, stringify(config));
  }, 60_000);

  afterAll(async () => {
    await daemon?.stop();
    for (const cleanup of cleanups.reverse()) await cleanup();
  });

  /** The value of the sample `name{labels}` in /metrics; undefined when the scrape has none. */
  async function sample(name: string, labels = ''): Promise<number | undefined> {
    const port = daemon?.https?.port ?? 0;
    const scrape = await httpsRequest({ port, ca: cert, token: '' }, 'GET', '/metrics');
    expect(scrape.status).toBe(200);
    const head = labels === '' ? `${name} ` : `${name}{${labels}} `;
    const line = scrape.body.split('\n').find((l) => l.startsWith(head));
    return line === undefined ? undefined : Number(line.slice(head.length));
  }

  async function sampleIs(name: string, labels: string, want: (v: number) => boolean) {
    let last: number | undefined;
    await until(
      async () => {
        last = await sample(name, labels);
        return last !== undefined && want(last) ? true : undefined;
      },
      15_000,
      `${name}{${labels}} (last ${String(last)})`,
    );
    return last;
  }

  it('says whether the broker delivers Subscription Identifiers, and counts a takeover by a clean-session client', async () => {
    proxy.strip = false;
    daemon = await Daemon.start(loadConfig(configPath, { env: {} }), {
      logger: pino({ level: 'silent' }),
      monitorIntervalMs: 200,
    });
    const identifiers = 'sluice_mqtt_subscription_identifiers_delivered';
    const takeovers = 'sluice_mqtt_session_takeovers_suspected_total';
    // Delivered on a path that keeps them.
    await sampleIs(identifiers, '', (v) => v === 1);
    for (const evidence of ['disconnect', 'clean_session', 'pattern']) {
      expect(await sample(takeovers, `evidence="${evidence}"`)).toBe(0);
    }
    // The path drops them from the next connection on: 0 once that connection's probe says so.
    proxy.down();
    proxy.strip = true;
    proxy.up();
    await sampleIs(identifiers, '', (v) => v === 0);
    expect(proxy.stripped).toBeGreaterThan(0);

    // A stray client on the gateway's client id, clean session, straight to the broker.
    const stray: ChildProcess = spawn(
      'mosquitto_sub',
      [
        ...['-h', '127.0.0.1', '-p', String(broker.port), '-V', 'mqttv5'],
        ...['-i', CLIENT_ID, '-q', '1', '-t', 'tools/debug'],
      ],
      { stdio: 'ignore' },
    );
    const strayExited = new Promise<void>((resolve) => {
      stray.once('exit', () => {
        resolve();
      });
    });
    cleanups.push(async () => {
      if (stray.exitCode === null && stray.signalCode === null) stray.kill('SIGTERM');
      await strayExited;
    });
    await sampleIs(takeovers, 'evidence="clean_session"', (v) => v >= 1);
    expect(broker.log()).toContain(`Client ${CLIENT_ID} already connected, closing old`);
    stray.kill('SIGTERM');
    await strayExited;
    await daemon.stop();
    daemon = null;
  }, 60_000);
});
