import type { ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OPCUA_LOAD_BOUND_MS } from '../../src/daemon/start-progress.js';
import { sha256 } from '../../src/intake/identities.js';
import { startPlant, type Plant } from '../../simulators/plant.js';
import { tempDir } from '../helpers/fixtures.js';
import { loopbackCertificate } from '../helpers/loopback-https.js';
import { until } from '../helpers/mosquitto.js';
import {
  bindNotifySocket,
  spawnNotifiedSluiced,
  type Datagram,
  type NotifiedSluiced,
  type NotifySocket,
} from '../helpers/notify-socket.js';
import { inventoryFor } from '../helpers/plant-inventory.js';
import { hasCommand, realComponent } from '../helpers/real.js';

/**
 * node-opcua's load, for an OPC UA PLC, holds the daemon's event loop for all of it (about 1,500
 * CommonJS modules in one synchronous call: 1.5 s of CPU on this 2-core machine, seconds more
 * with other work beside it): no WATCHDOG=1 and no extension can go out meanwhile. The step
 * before it sent one extension of WatchdogSec=, so a load longer than that (a gateway's ARM core,
 * a cold page cache at boot) had systemd's watchdog end the start, within TimeoutStartSec= or
 * past it, at every restart. systemd moves both the start's deadline and the watchdog's to the
 * end of each EXTEND_TIMEOUT_USEC= it receives (service_extend_timeout), so the extension sent as
 * the load begins must cover it, and be no longer than the load's bound.
 *
 * Here the real `sluiced` with sluice-sim's OPC UA PLC, the notification socket as systemd has
 * it (python3, test/helpers/notify-socket.ts), and WatchdogSec= of 100 ms (pings every 50 ms,
 * each extension 100 ms), shorter than the load (the premise, checked). From the extension sent
 * as the drivers begin to load up to the first datagram after the load (the first more than
 * WatchdogSec= after the one before it), every datagram the socket received comes before both
 * deadlines as systemd keeps them: the start's (the latest extension's end) and the watchdog's
 * (WatchdogSec= from the last ping, which sets it; an extension only moves it later). So no ping
 * may come between the load's extension and the load: one in the turns before node-opcua's
 * synchronous require (seen 19 ms after the extension) set the watchdog back to WatchdogSec=.
 * The load's extension is its bound (OPCUA_LOAD_BOUND_MS), never open-ended. The rest of the
 * chain to READY is notify-start-chain.test.ts's.
 */

const python = realComponent('python3', hasCommand('python3'), 'apt-get install python3');

const WATCHDOG_USEC = 100_000;
const WATCHDOG_MS = WATCHDOG_USEC / 1_000;

describe.runIf(python)('the start of a gateway with an OPC UA PLC, as systemd sees it', () => {
  let plant: Plant;
  let cleanup: () => void;
  let socket: NotifySocket;
  let datagrams: Datagram[] = [];
  let sluiced: NotifiedSluiced;
  let daemon: ChildProcess;

  beforeAll(async () => {
    let dir: string;
    ({ dir, cleanup } = tempDir('sluice-notify-opcua-load-'));
    plant = await startPlant(
      {
        control: { host: '127.0.0.1', port: 0 },
        plcs: {
          ua: {
            protocol: 'opcua',
            host: '127.0.0.1',
            port: 0,
            devices: { 'outlet-valve': { profile: 'valve', travelMs: 0 } },
          },
        },
      },
      { ephemeralPorts: true, control: false },
    );
    await loopbackCertificate(dir);
    const configPath = join(dir, 'sluice.yaml');
    writeFileSync(
      configPath,
      stringify({
        gatewayId: 'opcua-load',
        stateDir: 'state',
        https: { host: '127.0.0.1', port: 0, certFile: 'cert.pem', keyFile: 'key.pem' },
        opcua: { acceptUnknownCertificates: true },
        identities: { plant: { tokenSha256: sha256('t').toString('hex'), devices: ['*'] } },
        admin: { enabled: false },
        ...inventoryFor(plant),
      }),
    );
    socket = await bindNotifySocket(join(dir, 'notify.sock'));
    datagrams = socket.datagrams;
    sluiced = spawnNotifiedSluiced(configPath, socket, { WATCHDOG_USEC: String(WATCHDOG_USEC) });
    daemon = sluiced.child;
  }, 60_000);

  afterAll(async () => {
    if (daemon.exitCode === null && daemon.signalCode === null) daemon.kill('SIGKILL');
    socket.close();
    await plant.stop();
    cleanup();
  });

  it("the extension sent as node-opcua loads covers the load, systemd's watchdog included, and is bounded", async () => {
    const ready = await until(
      () => datagrams.find((d) => d.text.startsWith('READY=1')),
      60_000,
      `READY=1; datagrams: ${JSON.stringify(datagrams.map((d) => d.text))}; daemon output:\n${sluiced.output()}`,
    );
    const t0 = datagrams[0]!.at;
    const shown = datagrams
      .filter((d) => d.at <= ready.at)
      .map((d) => `${Math.round(d.at - t0)} ms ${d.text.replace(/\n/g, ' | ')}`);
    const explain = `datagrams up to READY:\n${shown.join('\n')}`;
    for (const d of datagrams.filter((d) => d.at <= ready.at)) {
      expect(d.pid, explain).toBe(daemon.pid);
    }

    const loading = datagrams.findIndex((d) =>
      d.text.includes('\nSTATUS=starting: journal opened; loading the PLC drivers'),
    );
    expect(loading, explain).toBeGreaterThanOrEqual(0);
    const load = datagrams[loading]!;
    const usec = (d: Datagram): number | null => {
      const m = /^EXTEND_TIMEOUT_USEC=(\d+)\n/.exec(d.text);
      return m === null ? null : Number(m[1]);
    };

    // systemd's two deadlines, as it keeps them from what it receives, from the load's
    // extension on: each datagram must come before both, up to the first after the load (one
    // more than WatchdogSec= after the datagram before it: the event loop was held).
    const lastPing = datagrams.slice(0, loading).findLast((d) => d.text === 'WATCHDOG=1');
    expect(lastPing, explain).toBeDefined();
    let startDeadline = load.at + usec(load)! / 1_000;
    let watchdogDeadline = Math.max(lastPing!.at + WATCHDOG_MS, startDeadline);
    let held = false;
    for (let i = loading + 1; !held && i < datagrams.length && datagrams[i]!.at <= ready.at; i++) {
      const d = datagrams[i]!;
      held = d.at - datagrams[i - 1]!.at > WATCHDOG_MS;
      const at = `${Math.round(d.at - t0)} ms ${d.text.split('\n').join(' | ')}`;
      expect(d.at, `start deadline missed by ${at}\n${explain}`).toBeLessThan(startDeadline);
      expect(d.at, `watchdog deadline missed by ${at}\n${explain}`).toBeLessThan(watchdogDeadline);
      const extended = usec(d);
      if (extended !== null) {
        startDeadline = Math.max(startDeadline, d.at + extended / 1_000);
        watchdogDeadline = Math.max(watchdogDeadline, d.at + extended / 1_000);
      }
      // A ping sets the watchdog's deadline, earlier than an extension's end as well
      // (service_reset_watchdog); an extension only moves it later.
      if (d.text === 'WATCHDOG=1') watchdogDeadline = d.at + WATCHDOG_MS;
    }
    // The premise: node-opcua's load held the event loop longer than WatchdogSec=.
    expect(held, explain).toBe(true);
    // The load's extension is its bound: enough for the load, and no more (a start held there
    // is still ended).
    expect(usec(load), explain).toBe(OPCUA_LOAD_BOUND_MS * 1_000);
  }, 120_000);
});
