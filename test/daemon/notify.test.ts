import type { ChildProcess } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { serviceNotifier, watchdogIntervalMs } from '../../src/daemon/notify.js';
import { sha256 } from '../../src/intake/identities.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { startPlant, type Plant } from '../../simulators/plant.js';
import { tempDir } from '../helpers/fixtures.js';
import { loopbackCertificate } from '../helpers/loopback-https.js';
import { until } from '../helpers/mosquitto.js';
import { inventoryFor } from '../helpers/plant-inventory.js';
import { hasCommand, realComponent } from '../helpers/real.js';
import {
  bindNotifySocket,
  spawnNotifiedSluiced,
  type Datagram,
  type NotifiedSluiced,
  type NotifySocket,
} from '../helpers/notify-socket.js';
import { recordingLogger } from '../helpers/recording-logger.js';

/**
 * sd_notify as systemd sees it: the real `sluiced` process with NOTIFY_SOCKET pointing at a
 * Unix datagram socket bound by python3 (the receiving side as PID 1 has it, with the
 * sender's credentials from SCM_CREDENTIALS). READY comes once a command recovered from the
 * journal has settled (its settledAt precedes READY), WATCHDOG pings at half WATCHDOG_USEC
 * from the daemon's own PID, STOPPING at SIGTERM before the exit.
 */

const python = realComponent('python3', hasCommand('python3'), 'apt-get install python3');

const TOKEN = 'notify-token';
const WATCHDOG_USEC = 1_000_000;

describe('the notifier without a service manager', () => {
  it('is silent when NOTIFY_SOCKET is unset, watchdog or not', () => {
    const { logger, lines } = recordingLogger();
    const notifier = serviceNotifier({ WATCHDOG_USEC: '1000' }, logger);
    notifier.ready('ready');
    notifier.stopping('stopping');
    notifier.close();
    expect(lines).toEqual([]);
  });

  it('says why an abstract NOTIFY_SOCKET gets nothing', () => {
    const { logger, lines } = recordingLogger();
    serviceNotifier({ NOTIFY_SOCKET: '@sluice-abstract' }, logger).close();
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ level: 40, notifySocket: '@sluice-abstract' });
    expect(String(lines[0]?.msg)).toMatch(/abstract socket/);
  });

  it('pings at half of WATCHDOG_USEC, only for the PID that WATCHDOG_PID names', () => {
    expect(watchdogIntervalMs({ WATCHDOG_USEC: '30000000' }, 42)).toBe(15_000);
    expect(watchdogIntervalMs({ WATCHDOG_USEC: '30000000', WATCHDOG_PID: '42' }, 42)).toBe(15_000);
    expect(watchdogIntervalMs({ WATCHDOG_USEC: '30000000', WATCHDOG_PID: '7' }, 42)).toBeNull();
    expect(watchdogIntervalMs({}, 42)).toBeNull();
    expect(watchdogIntervalMs({ WATCHDOG_USEC: '0' }, 42)).toBeNull();
    expect(watchdogIntervalMs({ WATCHDOG_USEC: 'soon' }, 42)).toBeNull();
  });
});

describe.runIf(python)('sd_notify from the sluiced process', () => {
  let plant: Plant;
  let dir: string;
  let cleanup: () => void;
  let socket: NotifySocket;
  let datagrams: Datagram[] = [];
  let sluiced: NotifiedSluiced;
  let daemon: ChildProcess;
  let journalPath: string;

  beforeAll(async () => {
    ({ dir, cleanup } = tempDir('sluice-notify-'));
    plant = await startPlant(
      {
        control: { host: '127.0.0.1', port: 0 },
        plcs: {
          mb: {
            protocol: 'modbus',
            host: '127.0.0.1',
            port: 0,
            devices: { 'inlet-valve': { profile: 'valve', base: 0, travelMs: 1_500 } },
          },
        },
      },
      { ephemeralPorts: true, control: false },
    );
    await loopbackCertificate(dir);
    const inventory = inventoryFor(plant);
    const configPath = join(dir, 'sluice.yaml');
    writeFileSync(
      configPath,
      stringify({
        gatewayId: 'notify',
        stateDir: 'state',
        // An IPv6 listener: the STATUS= line brackets its address ([::1]:port), as an operator reads it.
        https: { host: '::1', port: 0, certFile: 'cert.pem', keyFile: 'key.pem' },
        identities: { scada: { tokenSha256: sha256(TOKEN).toString('hex'), devices: ['*'] } },
        plcs: inventory.plcs,
        devices: inventory.devices,
        admin: { enabled: false },
      }),
    );
    // An earlier life left a command accepted and never written: recovery takes it up.
    mkdirSync(join(dir, 'state'), { recursive: true, mode: 0o700 });
    journalPath = join(dir, 'state', 'journal.db');
    const seed = SqliteJournal.open({ path: journalPath });
    const now = Date.now();
    seed.claim({
      scope: 'scada',
      key: 'recovered-1',
      fingerprint: 'recovered-1',
      device: 'inlet-valve',
      action: 'open',
      position: null,
      issuedAt: now,
      issuedAtSource: 'issuer',
      ttlMs: 120_000,
      deadline: now + 120_000,
      intake: 'https',
      acceptedAt: now,
    });
    seed.close();

    socket = await bindNotifySocket(join(dir, 'notify.sock'));
    datagrams = socket.datagrams;
    // A bound that is not whole seconds: the STOPPING line says it as it is.
    sluiced = spawnNotifiedSluiced(configPath, socket, { WATCHDOG_USEC: String(WATCHDOG_USEC) }, [
      '--shutdown-bound',
      '1500',
    ]);
    daemon = sluiced.child;
  }, 60_000);

  afterAll(async () => {
    if (daemon.exitCode === null && daemon.signalCode === null) daemon.kill('SIGKILL');
    socket.close();
    await plant.stop();
    cleanup();
  });

  const texts = (): string[] => datagrams.map((d) => d.text);

  it('READY=1 comes once the command recovered from the journal has settled', async () => {
    const ready = await until(
      () => datagrams.find((d) => d.text.startsWith('READY=1')),
      45_000,
      `READY=1; datagrams: ${JSON.stringify(texts())}; daemon output:\n${sluiced.output()}`,
    );
    expect(ready.pid).toBe(daemon.pid);
    expect(ready.text).toMatch(/^READY=1\nSTATUS=ready: HTTPS on \[::1\]:\d+; 1 recovered/);
    expect(datagrams.filter((d) => d.text.startsWith('READY=1'))).toHaveLength(1);

    // Ground truth: the journal settled the command before READY was sent, and the valve
    // received exactly one write for it.
    const journal = SqliteJournal.open({ path: journalPath });
    try {
      const record = journal.get({ scope: 'scada', key: 'recovered-1' });
      expect(record).toMatchObject({ state: 'confirmed', code: 'OK' });
      expect(record!.settledAt).not.toBeNull();
      expect(record!.settledAt!).toBeLessThanOrEqual(ready.at);
      const valve = plant.device('inlet-valve');
      expect(valve.writesWithSeq(record!.seq!)).toBe(1);
      expect(valve.counters.writesReceived).toBe(1);
      expect(valve.snapshot().state).toBe('OPEN');
    } finally {
      journal.close();
    }
  }, 60_000);

  it('WATCHDOG=1 comes from the daemon at half of WATCHDOG_USEC', async () => {
    const readyAt = datagrams.find((d) => d.text.startsWith('READY=1'))!.at;
    const pings = await until(
      () => {
        const after = datagrams.filter((d) => d.text === 'WATCHDOG=1' && d.at > readyAt);
        return after.length >= 4 ? after : undefined;
      },
      10_000,
      'four watchdog pings after READY',
    );
    for (const ping of pings) expect(ping.pid).toBe(daemon.pid);
    const gaps = pings.slice(1).map((p, i) => p.at - pings[i]!.at);
    // Every half period (500 ms), never as late as the watchdog's own timeout.
    for (const gap of gaps) {
      expect(gap).toBeGreaterThan(300);
      expect(gap).toBeLessThan(WATCHDOG_USEC / 1000);
    }
  }, 20_000);

  it('STOPPING=1 at SIGTERM, before the process exits 0', async () => {
    const exited = new Promise<number | null>((resolve) => daemon.once('exit', resolve));
    daemon.kill('SIGTERM');
    expect(await exited).toBe(0);
    const stopping = await until(
      () => datagrams.find((d) => d.text.startsWith('STOPPING=1')),
      5_000,
      'STOPPING=1',
    );
    expect(stopping.pid).toBe(daemon.pid);
    // 1.5 s, not "2 s" (nor "0 s" for a bound of 300 ms): seconds were rounded.
    expect(stopping.text).toMatch(
      /^STOPPING=1\nSTATUS=stopping: intakes close, in-flight commands get 1\.5 s to settle$/,
    );
    // Extensions of the start (the recovered command's settling: notify-start.test.ts) come
    // only before READY.
    const order = texts().filter((t) => !t.startsWith('WATCHDOG'));
    const firsts = order.map((t) => t.split('\n')[0]);
    const ready = firsts.indexOf('READY=1');
    expect(firsts.slice(0, ready).every((t) => t?.startsWith('EXTEND_TIMEOUT_USEC='))).toBe(true);
    expect(firsts.slice(ready)).toEqual(['READY=1', 'STOPPING=1']);
  }, 30_000);
});
