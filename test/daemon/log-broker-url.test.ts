import { writeFileSync } from 'node:fs';
import { createServer, type AddressInfo, type Server } from 'node:net';
import { join } from 'node:path';
import { Aedes } from 'aedes';
import { stringify } from 'yaml';
import { expect, it } from 'vitest';
import { loadConfig, type SluiceConfig } from '../../src/config/config.js';
import { preflight } from '../../src/config/preflight.js';
import { checkSummary } from '../../src/daemon/check-summary.js';
import { Daemon } from '../../src/daemon/daemon.js';
import { startPlant } from '../../simulators/plant.js';
import { tempDir } from '../helpers/fixtures.js';
import { until } from '../helpers/mosquitto.js';
import { inventoryFor } from '../helpers/plant-inventory.js';
import { recordingLogger } from '../helpers/recording-logger.js';

/**
 * The MQTT broker's URL is in the daemon's log at its start, at every connection error and at
 * the fall back to MQTT 3.1.1, and in `sluiced --check`'s summary. The configuration refuses a
 * URL that carries a password (config.ts), so none reaches these from a site file; but a
 * configuration built otherwise (code that embeds the daemon, as the demo does, or a check that
 * one day lets one through) had the password written out in every one of those lines. Shown as
 * the configuration's own errors show it: `user:***@`. The URL with a password is set here on
 * a loaded configuration, past the schema, for that reason. A real daemon, a real broker (the
 * demo's aedes: it refuses MQTT 5, so the fall back is logged too), the daemon's own log lines.
 */

const SECRET = 'pw-in-the-url-7f3a';

it('logs and shows the broker URL with its password as ***, never the password', async () => {
  const aedes = await Aedes.createBroker();
  const server: Server = createServer(aedes.handle);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  let brokerOpen = true;
  const closeBroker = async (): Promise<void> => {
    if (!brokerOpen) return;
    brokerOpen = false;
    await new Promise<void>((resolve) => {
      aedes.close(() => {
        resolve();
      });
    });
    await new Promise<void>((resolve) => {
      server.close(() => {
        resolve();
      });
    });
  };
  const plant = await startPlant(
    {
      control: { host: '127.0.0.1', port: 0 },
      plcs: {
        mb: {
          protocol: 'modbus',
          host: '127.0.0.1',
          port: 0,
          devices: { v1: { profile: 'valve', base: 0, travelMs: 200 } },
        },
      },
    },
    { ephemeralPorts: true, control: false },
  );
  const { dir, cleanup } = tempDir('sluice-log-broker-url-');
  let daemon: Daemon | undefined;
  try {
    const inventory = inventoryFor(plant);
    const configPath = join(dir, 'sluice.yaml');
    writeFileSync(
      configPath,
      stringify({
        gatewayId: 'url',
        stateDir: 'state',
        mqtt: { url: `mqtt://127.0.0.1:${port}`, identity: 'scada' },
        identities: { scada: { devices: ['*'] } },
        plcs: inventory.plcs,
        devices: inventory.devices,
      }),
    );
    const loaded = loadConfig(configPath, { env: {} });
    const shown = `mqtt://op:***@127.0.0.1:${port}`;
    const config: SluiceConfig = {
      ...loaded,
      mqtt: { ...loaded.mqtt!, url: `mqtt://op:${SECRET}@127.0.0.1:${port}` },
    };

    // sluiced --check's summary of the same configuration.
    const summary = checkSummary(config, preflight(config, configPath), new Date());
    const mqttLine = summary.find((l) => l.trimStart().startsWith('MQTT'));
    expect(mqttLine).toContain(`${shown}, topics sluice/url/#`);
    expect(summary.join('\n')).not.toContain(SECRET);

    const { logger, lines } = recordingLogger();
    daemon = await Daemon.start(config, { logger, monitorIntervalMs: 200 });
    const started = lines.find((l) => l.msg === 'sluiced started');
    expect(started?.mqtt).toBe(shown);
    // aedes refuses MQTT 5: the fall back is logged with the broker, then the intake connects.
    await until(
      () => (daemon!.readiness().checks.mqtt?.ok === true ? true : undefined),
      10_000,
      'MQTT connected',
    );
    const fallback = lines.find((l) => String(l.msg).includes('refused MQTT 5'));
    expect(fallback?.url).toBe(shown);
    // The broker goes away: the connection error names it.
    await closeBroker();
    const failed = await until(
      () => lines.find((l) => l.msg === 'MQTT connection error'),
      15_000,
      'a connection error logged',
    );
    expect(failed.url).toBe(shown);
    // Nowhere in the log, in any field.
    expect(lines.filter((l) => JSON.stringify(l).includes(SECRET))).toEqual([]);
  } finally {
    await daemon?.stop();
    await closeBroker();
    await plant.stop();
    cleanup();
  }
}, 60_000);
