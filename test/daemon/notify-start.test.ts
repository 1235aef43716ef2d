import type { ChildProcess } from 'node:child_process';
import { mkdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { stringify } from 'yaml';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import type { NewCommand } from '../../src/core/journal.js';
import type { ServiceNotifier } from '../../src/daemon/notify.js';
import {
  boundedStepPhase,
  extendWhile,
  journalCheckPhase,
  startProgressIntervalMs,
  type StartPhase,
} from '../../src/daemon/start-progress.js';
import { sha256 } from '../../src/intake/identities.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { startPlant, type Plant } from '../../simulators/plant.js';
import { writeSettledJournal } from '../helpers/settled-journal.js';
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
import { recordingLogger } from '../helpers/recording-logger.js';

/**
 * A start longer than TimeoutStartSec=. systemd kills a Type=notify service that has not sent
 * READY=1 within it (WATCHDOG=1 does not move it), and Restart=on-failure starts it
 * again from the beginning: a gateway whose journal check (SQLite quick_check of every page)
 * outlasted the unit's 90 s never came up. The start now sends EXTEND_TIMEOUT_USEC= while a
 * long phase shows progress (src/daemon/start-progress.ts): the check while its thread reads the
 * file, the settling READY waits for while its bound is ahead. Here the real `sluiced`, a
 * journal of 100,000 commands (a check long enough to be looked at several times at the test's
 * watchdog period) and a command left open for recovery, and the notification socket as systemd
 * has it (python3, test/helpers/notify-socket.ts): the extensions come during the check and
 * the settling, before READY, each covering the next look with a whole period to spare.
 */

const python = realComponent('python3', hasCommand('python3'), 'apt-get install python3');

/** WatchdogSec= of 200 ms: the start is looked at every 100 ms, each extension 200 ms. */
const WATCHDOG_USEC = 200_000;
const LOOK_MS = WATCHDOG_USEC / 2_000;

function recordingNotifier(): { notifier: ServiceNotifier; extended: [number, string][] } {
  const extended: [number, string][] = [];
  return {
    extended,
    notifier: {
      ready: () => undefined,
      status: () => undefined,
      reloading: () => undefined,
      stopping: () => undefined,
      holdPings: () => () => undefined,
      close: () => undefined,
      extendStart: (ms, status) => {
        extended.push([ms, status]);
      },
    },
  };
}

describe('extending the start (fake time)', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('extends only at looks that find progress, each for two periods, and stops with the phase', async () => {
    vi.useFakeTimers();
    const { notifier, extended } = recordingNotifier();
    const { logger, lines } = recordingLogger();
    let read: number | null = null;
    const phase = journalCheckPhase(() => read, 900_000_000);
    let finish = (): void => undefined;
    const work = new Promise<void>((resolve) => {
      finish = resolve;
    });
    const running = extendWhile(phase, work, {
      notifier,
      logger,
      intervalMs: 1_000,
      thenExtend: 'journal checked',
    });
    // The thread's reads cannot be seen yet: nothing proves progress, nothing is sent.
    await vi.advanceTimersByTimeAsync(1_000);
    expect(extended).toEqual([]);
    read = 100_000_000;
    await vi.advanceTimersByTimeAsync(1_000);
    read = 250_000_000;
    await vi.advanceTimersByTimeAsync(1_000);
    expect(extended).toEqual([
      [2_000, 'starting: checking the journal (900 MB): 100 MB read so far'],
      [2_000, 'starting: checking the journal (900 MB): 250 MB read so far'],
    ]);
    // A check held in a read (a dead disk) reads nothing more: no extension, one warning.
    await vi.advanceTimersByTimeAsync(3_000);
    expect(extended).toHaveLength(2);
    const warnings = lines.filter((l) => l.level === 40);
    expect(warnings.map((l) => l.msg)).toEqual([
      expect.stringMatching(/cannot be seen/),
      expect.stringMatching(/has read nothing since the last look.*not extended/),
    ]);
    read = 260_000_000;
    await vi.advanceTimersByTimeAsync(1_000);
    expect(extended).toHaveLength(3);
    finish();
    await running;
    expect(extended.at(-1)).toEqual([2_000, 'starting: journal checked']);
    // Nothing after the phase.
    await vi.advanceTimersByTimeAsync(10_000);
    expect(extended).toHaveLength(4);
  });

  it('a step with a bound of its own is extended every period while its bound is ahead, and no more past it', async () => {
    // The first check of the gateway clock, a step of this kind, cannot outlast its bound in
    // sluiced (its tool is killed at the source's timeout; test/daemon/notify-start-clock-step
    // shows the extensions up to it): a step held past its bound is made here, a promise that
    // never settles, on fake time.
    vi.useFakeTimers({ toFake: ['setInterval', 'clearInterval', 'performance'] });
    const { notifier, extended } = recordingNotifier();
    const { logger, lines } = recordingLogger();
    const phase = boundedStepPhase(
      'gateway clock check',
      'checking the gateway clock (chrony)',
      4_500,
    );
    void extendWhile(phase, new Promise<void>(() => undefined), {
      notifier,
      logger,
      intervalMs: 1_000,
    });
    await vi.advanceTimersByTimeAsync(10_000);
    expect(extended).toEqual(
      [1, 2, 3, 4].map((s) => [
        2_000,
        `starting: checking the gateway clock (chrony): ${s} s so far, 5 s at most`,
      ]),
    );
    // Past its bound: no extension (systemd ends the start when the last runs out), one warning.
    const warnings = lines.filter((l) => l.level === 40);
    expect(warnings.map((l) => l.msg)).toEqual([
      expect.stringMatching(/gateway clock check has run past its bound of 4500 ms.*not extended/),
    ]);
  });

  it('looks every half WatchdogSec=, at most every 10 s (the first look must come before TimeoutStartSec=)', () => {
    expect(startProgressIntervalMs({ WATCHDOG_USEC: '20000000' })).toBe(10_000);
    expect(startProgressIntervalMs({ WATCHDOG_USEC: '200000' })).toBe(100);
    expect(startProgressIntervalMs({ WATCHDOG_USEC: '600000000' })).toBe(10_000);
    expect(startProgressIntervalMs({})).toBe(10_000);
  });

  it('a phase that fails is not extended at its end', async () => {
    vi.useFakeTimers();
    const { notifier, extended } = recordingNotifier();
    const phase: StartPhase = {
      name: 'test',
      look: () => ({ advanced: true, status: 'working', fields: {} }),
    };
    const failing = Promise.reject(new Error('damaged'));
    await expect(
      extendWhile(phase, failing, {
        notifier,
        logger: pino({ level: 'silent' }),
        intervalMs: 1_000,
        thenExtend: 'done',
      }),
    ).rejects.toThrow('damaged');
    expect(extended).toEqual([]);
  });
});

describe.runIf(python)('a long start, as systemd sees it', () => {
  let plant: Plant;
  let dir: string;
  let cleanup: () => void;
  let socket: NotifySocket;
  let datagrams: Datagram[] = [];
  let sluiced: NotifiedSluiced;
  let daemon: ChildProcess;
  let journalPath: string;
  /** The journal's size when sluiced starts, as its status lines say it. */
  let journalMb: number;

  const command = (key: string, at: number): NewCommand => ({
    scope: 'scada',
    key,
    fingerprint: key,
    device: 'inlet-valve',
    action: 'open',
    position: null,
    issuedAt: at,
    issuedAtSource: 'issuer',
    ttlMs: 120_000,
    deadline: at + 120_000,
    intake: 'https',
    acceptedAt: at,
  });

  beforeAll(async () => {
    ({ dir, cleanup } = tempDir('sluice-notify-start-'));
    plant = await startPlant(
      {
        control: { host: '127.0.0.1', port: 0 },
        plcs: {
          mb: {
            protocol: 'modbus',
            host: '127.0.0.1',
            port: 0,
            devices: { 'inlet-valve': { profile: 'valve', base: 0, travelMs: 1_000 } },
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
        gatewayId: 'start',
        stateDir: 'state',
        https: { host: '127.0.0.1', port: 0, certFile: 'cert.pem', keyFile: 'key.pem' },
        identities: { scada: { tokenSha256: sha256('t').toString('hex'), devices: ['*'] } },
        plcs: inventory.plcs,
        devices: inventory.devices,
        admin: { enabled: false },
      }),
    );
    mkdirSync(join(dir, 'state'), { recursive: true, mode: 0o700 });
    journalPath = join(dir, 'state', 'journal.db');
    // A journal retaining 100,000 settled commands: 200 written by the journal's own code
    // (no-ops, confirmed without a write), copied by SQLite under new keys (bench/journal-fill.ts).
    writeSettledJournal(journalPath, 100_000);
    // And an earlier life left a command accepted, never written: READY waits for it to settle.
    const again = SqliteJournal.open({ path: journalPath });
    again.claim(command('recovered-1', Date.now()));
    again.close();
    journalMb = Math.round(statSync(journalPath).size / 1_000_000);

    socket = await bindNotifySocket(join(dir, 'notify.sock'));
    datagrams = socket.datagrams;
    sluiced = spawnNotifiedSluiced(configPath, socket, { WATCHDOG_USEC: String(WATCHDOG_USEC) });
    daemon = sluiced.child;
  }, 120_000);

  afterAll(async () => {
    if (daemon.exitCode === null && daemon.signalCode === null) daemon.kill('SIGKILL');
    socket.close();
    await plant.stop();
    cleanup();
  });

  it('EXTEND_TIMEOUT_USEC comes while the journal is checked and while READY waits for recovery, each covering the next look', async () => {
    const ready = await until(
      () => datagrams.find((d) => d.text.startsWith('READY=1')),
      60_000,
      `READY=1; datagrams: ${JSON.stringify(datagrams.map((d) => d.text))}; daemon output:\n${sluiced.output()}`,
    );
    const before = datagrams.filter((d) => d.at <= ready.at && d.text !== 'WATCHDOG=1');
    const extensions = before.filter((d) => d.text.startsWith('EXTEND_TIMEOUT_USEC='));
    const explain = `datagrams before READY: ${JSON.stringify(before.map((d) => d.text))}`;
    for (const e of extensions) {
      expect(e.pid, explain).toBe(daemon.pid);
      // Each extension is two look periods: it covers the next look with a whole period to
      // spare (a look that finds no progress sends nothing, and the start is not extended).
      expect(e.text, explain).toMatch(
        new RegExp(`^EXTEND_TIMEOUT_USEC=${WATCHDOG_USEC}\\nSTATUS=starting: `),
      );
    }

    // While the check ran: the MB its thread had read, growing from look to look (each look
    // extends only when it read more bytes; less than half a MB more, on a loaded machine,
    // shows the same whole MB).
    const checking = extensions.filter((e) => e.text.includes('checking the journal ('));
    expect(checking.length, explain).toBeGreaterThanOrEqual(2);
    const readMb = checking.map((e) => Number(/\): (\d+) MB read so far/.exec(e.text)?.[1]));
    for (let i = 1; i < readMb.length; i++) {
      expect(readMb[i]!, explain).toBeGreaterThanOrEqual(readMb[i - 1]!);
    }
    expect(readMb.at(-1)!, explain).toBeGreaterThan(readMb[0]!);
    expect(checking[0]!.text).toContain(`checking the journal (${journalMb} MB): `);
    // Periodic, at the look period: most gaps are about one period (a late timer under load
    // may stretch one), far below the extension each message gives.
    const gaps = checking.slice(1).map((e, i) => e.at - checking[i]!.at);
    const median = [...gaps].sort((a, b) => a - b)[Math.floor(gaps.length / 2)] ?? 0;
    expect(median, explain).toBeLessThan(WATCHDOG_USEC / 1000);
    expect(median, explain).toBeGreaterThan(LOOK_MS / 2);

    // Its end, then the settling READY waits for, extended while its bound is ahead.
    const checked = extensions.findIndex((e) => e.text.includes('journal checked'));
    expect(checked, explain).toBeGreaterThan(extensions.indexOf(checking.at(-1)!));
    const settling = extensions.filter((e) =>
      e.text.includes('settling the commands the journal held open: 1 of 1 still open'),
    );
    expect(settling.length, explain).toBeGreaterThanOrEqual(1);
    expect(extensions.indexOf(settling[0]!), explain).toBeGreaterThan(checked);

    // Ground truth: the check ran as long as the extensions say (the daemon's log of it), and
    // the recovered command was settled, by one write, before READY.
    const log = sluiced
      .output()
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as { msg?: string; ms?: number });
    const checkMs = log.find((l) => l.msg === 'journal checked (SQLite quick_check)')?.ms;
    expect(checkMs, sluiced.output()).toBeGreaterThan(LOOK_MS * 2);
    const journal = SqliteJournal.open({ path: journalPath, readonly: true });
    try {
      const record = journal.get({ scope: 'scada', key: 'recovered-1' });
      expect(record).toMatchObject({ state: 'confirmed', code: 'OK' });
      expect(record!.settledAt!).toBeLessThanOrEqual(ready.at);
      expect(plant.device('inlet-valve').writesWithSeq(record!.seq!)).toBe(1);
    } finally {
      journal.close();
    }
    // None after READY: the start is over.
    daemon.kill('SIGTERM');
    await new Promise((resolve) => daemon.once('exit', resolve));
    expect(
      datagrams.filter((d) => d.at > ready.at && d.text.startsWith('EXTEND_TIMEOUT_USEC=')),
    ).toEqual([]);
  }, 90_000);
});
