import type { ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sha256 } from '../../src/intake/identities.js';
import type { Plant } from '../../simulators/plant.js';
import { startModbusPlant } from '../helpers/daemon-site.js';
import { tempDir } from '../helpers/fixtures.js';
import { loopbackCertificate } from '../helpers/loopback-https.js';
import { mosquittoAvailable, startMosquitto, until, type Mosquitto } from '../helpers/mosquitto.js';
import { inventoryFor } from '../helpers/plant-inventory.js';
import { hasCommand } from '../helpers/real.js';
import {
  bindNotifySocket,
  spawnNotifiedSluiced,
  type Datagram,
  type NotifiedSluiced,
  type NotifySocket,
} from '../helpers/notify-socket.js';

/**
 * The STATUS= line `systemctl status` shows follows the MQTT intake after READY. READY does not
 * wait for the broker (docs/spec-notes.md, Operation: "`systemctl status` and `/readyz` say
 * whether MQTT is connected"), and the only line was the one sent with READY: "MQTT connecting"
 * for as long as the daemon ran once the broker had connected, "MQTT connected" while it was
 * down. The real `sluiced` process with NOTIFY_SOCKET bound by python3 (as in notify.test.ts),
 * real Mosquitto stopped and started again, sluice-sim.
 */

const real = mosquittoAvailable() && hasCommand('python3');

const CLIENT_ID = 'sluice-notify-status';

describe.runIf(real)('the STATUS= line after READY', () => {
  let plant: Plant;
  let broker: Mosquitto;
  let cleanup: () => void;
  let socket: NotifySocket;
  let sluiced: NotifiedSluiced;
  let daemon: ChildProcess;
  let datagrams: Datagram[] = [];

  beforeAll(async () => {
    let dir: string;
    ({ dir, cleanup } = tempDir('sluice-notify-status-'));
    plant = await startModbusPlant({ 'inlet-valve': { profile: 'valve', base: 0 } });
    broker = await startMosquitto();
    await loopbackCertificate(dir);
    const inventory = inventoryFor(plant);
    const configPath = join(dir, 'sluice.yaml');
    writeFileSync(
      configPath,
      stringify({
        gatewayId: 'notify-status',
        stateDir: 'state',
        https: { host: '127.0.0.1', port: 0, certFile: 'cert.pem', keyFile: 'key.pem' },
        mqtt: { url: broker.url, identity: 'scada', clientId: CLIENT_ID },
        identities: { scada: { tokenSha256: sha256('t').toString('hex'), devices: ['*'] } },
        plcs: inventory.plcs,
        devices: inventory.devices,
        admin: { enabled: false },
      }),
    );
    socket = await bindNotifySocket(join(dir, 'notify.sock'));
    datagrams = socket.datagrams;
    sluiced = spawnNotifiedSluiced(configPath, socket);
    daemon = sluiced.child;
  }, 60_000);

  afterAll(async () => {
    if (daemon.exitCode === null && daemon.signalCode === null) {
      const exited = new Promise((resolve) => daemon.once('exit', resolve));
      daemon.kill('SIGTERM');
      await exited;
    }
    socket.close();
    await broker.close();
    await plant.stop();
    cleanup();
  });

  /** The STATUS= text of the last datagram that carried one. */
  const lastStatus = (): string | undefined => {
    for (let i = datagrams.length - 1; i >= 0; i--) {
      const status = /(?:^|\n)STATUS=(.*)$/s.exec(datagrams[i]!.text);
      if (status !== null) return status[1];
    }
    return undefined;
  };
  const statusMatching = (pattern: RegExp, what: string): Promise<string> =>
    until(
      () => {
        const status = lastStatus();
        return status !== undefined && pattern.test(status) ? status : undefined;
      },
      20_000,
      `${what}; datagrams: ${JSON.stringify(datagrams.map((d) => d.text))}; daemon output:\n${sluiced.output()}`,
    );

  it('says whether MQTT is connected, as the broker goes away and comes back', async () => {
    await until(
      () => datagrams.find((d) => d.text.startsWith('READY=1')),
      45_000,
      `READY=1; daemon output:\n${sluiced.output()}`,
    );
    const connected = await statusMatching(/MQTT connected/, 'the status line: MQTT connected');
    expect(connected).toMatch(/^ready: HTTPS on 127\.0\.0\.1:\d+, MQTT connected; 0 recovered/);
    // Ground truth: the broker took the daemon's connection.
    expect(broker.connectionsOf(CLIENT_ID)).toBeGreaterThanOrEqual(1);

    await broker.stop();
    expect(broker.running()).toBe(false);
    const down = await statusMatching(/MQTT not connected/, 'the status line: MQTT not connected');
    expect(down).toMatch(/^ready: HTTPS on 127\.0\.0\.1:\d+, MQTT not connected \(.+\); 0 /);

    await broker.restart();
    await statusMatching(/MQTT connected/, 'the status line: MQTT connected again');
    expect(broker.connectionsOf(CLIENT_ID)).toBeGreaterThanOrEqual(1);
    // A line when what it says changes, not one per second.
    const statuses = datagrams.filter((d) => d.text.startsWith('STATUS='));
    expect(statuses.length).toBeLessThanOrEqual(6);
  }, 90_000);
});
