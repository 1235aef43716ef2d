import type { ChildProcess } from 'node:child_process';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { afterAll, describe, expect, it } from 'vitest';
import type { Plant } from '../../simulators/plant.js';
import { startModbusPlant, writeDaemonSite } from '../helpers/daemon-site.js';
import { tempDir } from '../helpers/fixtures.js';
import { writeV1Journal } from '../helpers/v1-journal.js';
import { until } from '../helpers/mosquitto.js';
import {
  bindNotifySocket,
  spawnNotifiedSluiced,
  type NotifiedSluiced,
  type NotifySocket,
} from '../helpers/notify-socket.js';
import { hasCommand, realComponent } from '../helpers/real.js';

/**
 * The upgrade of an older journal at start. It ran in the journal's open, on the event loop:
 * the copy of every command (3.4 s for 100,000 on a developer's machine, proportionally more on
 * a gateway's eMMC and at a million) sent no WATCHDOG=1 and no EXTEND_TIMEOUT_USEC meanwhile,
 * and one longer than WatchdogSec= (20 s in the unit) was killed by systemd, its transaction
 * rolled back, and made again at every restart: the gateway never came up. It now runs on a
 * thread of its own. Here the real `sluiced` on a version 1 journal large enough that its
 * upgrade takes over a second, the notification socket as systemd has it (python3), and a
 * WatchdogSec= of 400 ms (pings every 200 ms): the pings keep coming through the upgrade, the
 * start is extended while it goes on, READY follows, and the file is at version 3 with every
 * command and event. The extension at the check's end says that the upgrade follows (it said
 * "opening it", which stayed the status line for the upgrade's first period).
 */

const python = realComponent('python3', hasCommand('python3'), 'apt-get install python3');

/** Commands in the version 1 journal: an upgrade of 1–3 s on a developer's machine. */
const COMMANDS = 150_000;
const WATCHDOG_USEC = 400_000;
const PING_MS = WATCHDOG_USEC / 2_000;

describe.runIf(python)('an older journal upgraded at start, as systemd sees it', () => {
  let plant: Plant | undefined;
  let socket: NotifySocket | undefined;
  let sluiced: NotifiedSluiced | undefined;
  let cleanup: (() => void) | undefined;

  afterAll(async () => {
    const daemon: ChildProcess | undefined = sluiced?.child;
    if (daemon !== undefined && daemon.exitCode === null && daemon.signalCode === null) {
      daemon.kill('SIGKILL');
      await new Promise((resolve) => daemon.once('exit', resolve));
    }
    socket?.close();
    await plant?.stop();
    cleanup?.();
  });

  it('WATCHDOG=1 and EXTEND_TIMEOUT_USEC keep coming while the journal is upgraded, then READY; every command is at version 3', async () => {
    const made = tempDir('sluice-notify-upgrade-');
    cleanup = made.cleanup;
    const dir = made.dir;
    plant = await startModbusPlant({ 'inlet-valve': { profile: 'valve', base: 0, travelMs: 0 } });
    const configPath = await writeDaemonSite(dir, plant, 'upgrade');
    mkdirSync(join(dir, 'state'), { mode: 0o700 });
    const journalPath = join(dir, 'state', 'journal.db');
    writeV1Journal(journalPath, COMMANDS);

    const stdoutPath = join(dir, 'stdout.log');
    socket = await bindNotifySocket(join(dir, 'notify.sock'), stdoutPath);
    const datagrams = socket.datagrams;
    sluiced = spawnNotifiedSluiced(
      configPath,
      socket,
      { WATCHDOG_USEC: String(WATCHDOG_USEC) },
      [],
      stdoutPath,
    );
    const daemon = sluiced.child;
    const run = sluiced;
    const output = (): string => run.output();
    const ready = await until(
      () => datagrams.find((d) => d.text.startsWith('READY=1')),
      60_000,
      `READY=1; datagrams: ${JSON.stringify(datagrams.map((d) => d.text))}; daemon output:\n${output()}`,
    );
    const before = datagrams.filter((d) => d.at <= ready.at);
    // The line that times the upgrade was written before READY was sent: the daemon writes a
    // turn's log lines at the turn's end, and the start can go from the upgrade's end to READY
    // in one turn, so journald showed the upgrade's line after "Started" until the lines logged
    // so far were written before each notification.
    const beforeReady = readFileSync(stdoutPath).subarray(0, ready.watchedBytes!).toString('utf8');
    expect(beforeReady, `daemon output:\n${output()}`).toContain(
      '"msg":"journal upgraded from schema version 1 to 3"',
    );
    const explain = `datagrams before READY: ${JSON.stringify(before.map((d) => [Math.round(d.at), d.text]))}\ndaemon output:\n${output()}`;

    // The check's end says what follows it: the upgrade, not the journal's opening.
    const checked = before.filter((d) => d.text.includes('\nSTATUS=starting: journal checked'));
    expect(
      checked.map((d) => d.text.split('\n')[1]),
      explain,
    ).toEqual(['STATUS=starting: journal checked; upgrading it from schema version 1 to 3']);

    // The pings, from the first to READY: never a gap of more than a few periods. On the event
    // loop the upgrade held them for its whole length.
    const pings = before.filter((d) => d.text === 'WATCHDOG=1');
    expect(pings.length, explain).toBeGreaterThan(2);
    const gaps = [...pings.slice(1), ready].map((d, i) => d.at - pings[i]!.at);
    expect(Math.max(...gaps), explain).toBeLessThan(4 * PING_MS);

    // The upgrade, as the daemon's log times it: long enough that pings every PING_MS had to
    // come during it, and they did; the start was extended while it went on.
    const log = output()
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as { msg?: string; time?: number; ms?: number; path?: string });
    const began = log.find((l) => l.msg === 'upgrading the journal from schema version 1 to 3');
    const ended = log.find((l) => l.msg === 'journal upgraded from schema version 1 to 3');
    expect(began?.path, explain).toBe(journalPath);
    expect(ended?.path, explain).toBe(journalPath);
    expect(ended!.ms!, explain).toBeGreaterThan(5 * PING_MS);
    // At least half the pings its length allows: on a loaded machine the timer that sends them
    // runs late (measured: 40 where 43 were due, four test files beside it on two cores); an
    // upgrade on the event loop lets none through.
    const during = pings.filter((d) => d.at > began!.time! && d.at < ended!.time!);
    expect(during.length, explain).toBeGreaterThanOrEqual(Math.floor(ended!.ms! / (2 * PING_MS)));
    const extensions = before.filter(
      (d) =>
        d.text.startsWith(`EXTEND_TIMEOUT_USEC=${WATCHDOG_USEC}\n`) &&
        d.text.includes('upgrading the journal ('),
    );
    expect(extensions.length, explain).toBeGreaterThanOrEqual(1);
    for (const e of extensions) {
      expect(e.pid, explain).toBe(daemon.pid);
      expect(e.text, explain).toMatch(/from schema version 1 to 3: \d+ MB read and written so far/);
    }

    daemon.kill('SIGTERM');
    await new Promise((resolve) => daemon.once('exit', resolve));

    // Ground truth: the file, at version 3, with every command and its events.
    const db = new BetterSqlite3(journalPath, { readonly: true });
    try {
      expect(db.pragma('user_version', { simple: true })).toBe(3);
      expect(db.prepare('SELECT count(*) AS n FROM commands').get()).toEqual({ n: COMMANDS });
      expect(db.prepare('SELECT count(*) AS n FROM events').get()).toEqual({ n: 3 * COMMANDS });
      expect(
        db.prepare("SELECT id, key, state, seq FROM commands WHERE key = 'k149999'").get(),
      ).toEqual({ id: COMMANDS, key: 'k149999', state: 'confirmed', seq: COMMANDS });
    } finally {
      db.close();
    }
  }, 120_000);
});
