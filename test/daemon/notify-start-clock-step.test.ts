import type { ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sha256 } from '../../src/intake/identities.js';
import type { Plant } from '../../simulators/plant.js';
import { startModbusPlant } from '../helpers/daemon-site.js';
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
 * A step of the start longer than one EXTEND_TIMEOUT_USEC=. Past TimeoutStartSec=, systemd ends
 * a start as soon as its last extension runs out; each step between the journal check and READY
 * had one extension (WatchdogSec=) to itself, sent as the step before it ended. The first check
 * of the gateway clock runs chronyc, killed at `clock.chrony.timeoutMs` (up to 60 s): a chronyd
 * slow to answer, with a timeout above WatchdogSec=, broke the chain there, and systemd ended a
 * start that was making progress and began it again. The start is now extended every period
 * while that check runs, up to its bound.
 *
 * Here the real `sluiced`, the notification socket as systemd has it (python3,
 * test/helpers/notify-socket.ts), sluice-sim's Modbus valve, and as `chronyc` a script that says
 * it was asked and then hangs, killed by the daemon at its timeout of 9 s: a first check of the
 * clock longer than two extensions. With WatchdogSec= of 4 s (looks every 2 s, each extension
 * 4 s), every gap of the chain as the socket received it, from the first extension to READY=1,
 * is at most three quarters of an extension (the last quarter a margin for delivery and a late
 * timer on a loaded machine); the gap across the clock's check was its 9 s. The extensions
 * during the check say so, and none comes later than its bound.
 */

const python = realComponent('python3', hasCommand('python3'), 'apt-get install python3');

/** WatchdogSec= of 4 s: the start is looked at every 2 s, each extension 4 s. */
const WATCHDOG_USEC = 4_000_000;
const EXTENSION_MS = WATCHDOG_USEC / 1_000;
/** chronyc's timeout: the first check of the gateway clock ends when it is killed. */
const CLOCK_TIMEOUT_MS = 9_000;

describe.runIf(python)('a first check of the gateway clock longer than an extension', () => {
  let plant: Plant;
  let cleanup: () => void;
  let socket: NotifySocket;
  let datagrams: Datagram[] = [];
  let sluiced: NotifiedSluiced;
  let daemon: ChildProcess;
  let asked: string;

  beforeAll(async () => {
    let dir: string;
    ({ dir, cleanup } = tempDir('sluice-notify-clock-step-'));
    plant = await startModbusPlant({ 'inlet-valve': { profile: 'valve', base: 0, travelMs: 0 } });
    await loopbackCertificate(dir);
    asked = join(dir, 'chronyc-asked');
    const chronyc = join(dir, 'chronyc');
    // exec: the sleep is the process the daemon kills at the timeout.
    writeFileSync(chronyc, `#!/bin/sh\ntouch '${asked}'\nexec sleep 120\n`);
    chmodSync(chronyc, 0o755);
    const configPath = join(dir, 'sluice.yaml');
    writeFileSync(
      configPath,
      stringify({
        gatewayId: 'clock-step',
        stateDir: 'state',
        https: { host: '127.0.0.1', port: 0, certFile: 'cert.pem', keyFile: 'key.pem' },
        // Unsynced (chronyc never answers): the start goes on all the same. Polled again only
        // long after READY.
        clock: {
          source: 'chrony',
          onUnsynced: 'warn',
          pollIntervalMs: 60_000,
          holdoverMs: 120_000,
          chrony: { chronyc, timeoutMs: CLOCK_TIMEOUT_MS },
        },
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
    if (daemon.exitCode === null && daemon.signalCode === null) {
      daemon.kill('SIGKILL');
      await new Promise((resolve) => daemon.once('exit', resolve));
    }
    socket.close();
    await plant.stop();
    cleanup();
  });

  it('the start is extended every period while the check runs, up to its bound, in an unbroken chain to READY', async () => {
    const ready = await until(
      () => datagrams.find((d) => d.text.startsWith('READY=1')),
      60_000,
      `READY=1; datagrams: ${JSON.stringify(datagrams.map((d) => d.text))}; daemon output:\n${sluiced.output()}`,
    );
    const extensions = datagrams.filter(
      (d) => d.at <= ready.at && d.text.startsWith('EXTEND_TIMEOUT_USEC='),
    );
    const chain = [...extensions, ready].map((d) => ({
      at: d.at,
      text: d.text.split('\n').find((l) => l.startsWith('STATUS=') || l === 'READY=1') ?? d.text,
    }));
    const gaps = chain.slice(1).map((d, i) => ({
      gapMs: Math.round(d.at - chain[i]!.at),
      after: chain[i]!.text,
      before: d.text,
    }));
    const explain = `the chain's gaps: ${JSON.stringify(gaps, null, 1)}\ndaemon output:\n${sluiced.output()}`;
    expect(existsSync(asked), 'chronyc was run').toBe(true);
    for (const e of extensions) {
      expect(e.pid, explain).toBe(daemon.pid);
      expect(e.text, explain).toMatch(new RegExp(`^EXTEND_TIMEOUT_USEC=${WATCHDOG_USEC}\\n`));
    }

    // The check, framed by the extensions sent as it began and as it ended: as long as
    // chronyc's timeout, longer than two extensions.
    const began = chain.findIndex((d) =>
      d.text.endsWith('PLC drivers loaded; checking the gateway clock'),
    );
    const ended = chain.findIndex((d) => d.text.includes('starting: gateway clock checked'));
    expect(began, explain).toBeGreaterThanOrEqual(0);
    expect(ended, explain).toBeGreaterThan(began);
    const beganAt = chain[began]!.at;
    expect(chain[ended]!.at - beganAt, explain).toBeGreaterThanOrEqual(CLOCK_TIMEOUT_MS - 500);
    // Between them, the extensions of the check itself, each sent within its bound (a margin
    // for delivery).
    const during = chain.slice(began + 1, ended);
    expect(during.length, explain).toBeGreaterThanOrEqual(2);
    for (const d of during) {
      expect(d.text, explain).toMatch(
        new RegExp(
          `^STATUS=starting: checking the gateway clock \\(chrony\\): \\d+ s so far, ${CLOCK_TIMEOUT_MS / 1_000} s at most$`,
        ),
      );
      expect(d.at - beganAt, explain).toBeLessThan(CLOCK_TIMEOUT_MS + 500);
    }

    // The chain: no gap past three quarters of the extension before it.
    for (const g of gaps) {
      expect(g.gapMs, explain).toBeLessThanOrEqual((EXTENSION_MS * 3) / 4);
    }
  }, 90_000);
});
