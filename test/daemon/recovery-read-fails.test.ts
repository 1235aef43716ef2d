import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { Daemon } from '../../src/daemon/daemon.js';
import type { ServiceNotifier } from '../../src/daemon/notify.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { postCommand, startTokenSite, stopSite, type TokenSite } from '../helpers/daemon-site.js';
import { httpsRequest, type HttpsAnswer } from '../helpers/loopback-https.js';
import { until } from '../helpers/mosquitto.js';
import { issuerCommand } from '../helpers/new-command.js';
import { statementFaults, type ReadFaults } from '../helpers/read-faults.js';
import { recordingLogger } from '../helpers/recording-logger.js';

/**
 * What a start whose recovery cannot read the journal says, and does (pipeline.ts, recover();
 * docs/spec-notes.md, "Recovery that cannot read the journal"): /readyz answers 503 with its
 * journal check `journal unavailable (recovery): …`, READY's STATUS= line says `not ready
 * (journal unavailable (recovery): …)`, a command is refused 503 `JOURNAL_UNAVAILABLE` and not
 * journaled, and nothing reaches the valve, the open command an earlier life left included;
 * the log says the daemon waits for recovery to read the journal (it said: until the journal can
 * be written). Once the read succeeds, the sweep's next run recovers without a restart: that
 * command is written, /readyz answers 200, the line says `ready:`, the log `journal readable
 * again …` (it said `writable`), and a new command is journaled and written after it.
 *
 * The daemon's own composition (Daemon.start) on a real SQLite journal, its HTTPS intake on
 * loopback, sluice-sim. One double: the journal's read of every open command fails
 * (test/helpers/read-faults.ts, statementFaults), armed on the daemon's journal as it is opened
 * (a spy on SqliteJournal.open, which passes the call through): no disk or lock fault aims at
 * that read alone — the start's check and its open read the same file first, and another
 * process's lock does not stop a reader of a journal in WAL mode. The service manager's side
 * records what the daemon sends it (a notifier double; the socket itself is notify.test.ts's).
 * Ground truth: the simulator's write log, the journal's rows, what the HTTPS client received.
 */

const TOKEN = 'recovery-read-token';
const SCOPE = 'scada';

let site: TokenSite;
let daemon: Daemon | null = null;

beforeAll(async () => {
  site = await startTokenSite(
    'sluice-recovery-read-',
    { v1: { profile: 'valve', base: 0, travelMs: 100 } },
    { gatewayId: 'recoveryread', token: TOKEN, scope: SCOPE },
  );
}, 60_000);

afterAll(async () => {
  vi.restoreAllMocks();
  await stopSite(daemon, site);
}, 30_000);

describe('a start whose recovery cannot read the journal', () => {
  it('/readyz, the status line and the intake say so and nothing is written; once the read succeeds, the daemon recovers and runs the commands', async () => {
    const path = join(site.dir, 'state', 'journal.db');
    // An earlier life's open, accepted and never written: recovery's to take up.
    mkdirSync(join(site.dir, 'state'), { mode: 0o700 });
    const seed = SqliteJournal.open({ path });
    const now = Date.now();
    seed.claim({
      ...issuerCommand('earlier-open', 'v1', now),
      scope: SCOPE,
      ttlMs: 120_000,
      deadline: now + 120_000,
    });
    seed.close();

    let faults: ReadFaults | undefined;
    const open = SqliteJournal.open.bind(SqliteJournal);
    vi.spyOn(SqliteJournal, 'open').mockImplementation((options) => {
      const journal = open(options);
      if (options.path === path && options.readonly !== true) {
        faults = statementFaults(journal, 'openRefs');
      }
      return journal;
    });
    const sent: string[] = [];
    const notifier: ServiceNotifier = {
      ready: (s) => sent.push(`READY=1 ${s}`),
      status: (s) => sent.push(`STATUS ${s}`),
      extendStart: (ms, s) => sent.push(`EXTEND_TIMEOUT_USEC=${ms * 1000} ${s}`),
      reloading: (s) => sent.push(`RELOADING=1 ${s}`),
      stopping: (s) => sent.push(`STOPPING=1 ${s}`),
      holdPings: () => () => undefined,
      close: () => sent.push('close'),
    };
    const { logger, lines } = recordingLogger();
    daemon = await Daemon.start(loadConfig(site.configPath, { env: {} }), {
      logger,
      notifier,
      monitorIntervalMs: 200,
    });
    expect(faults?.failed).toBeGreaterThan(0);
    const to = { port: daemon.https!.port, ca: site.cert, token: TOKEN };
    const readyz = (): Promise<HttpsAnswer> => httpsRequest(to, 'GET', '/readyz');
    const close = (): Promise<HttpsAnswer> =>
      postCommand(
        to,
        'new-close',
        { device: 'v1', action: 'close', issuedAt: new Date().toISOString(), ttlMs: 60_000 },
        { prefer: 'wait=10' },
      );
    const recoveryWords =
      /^journal unavailable \(recovery\): recovery could not read the journal at start \(journal unavailable \(read\): SQLITE_IOERR_READ/;

    const ready = await until(() => sent.find((s) => s.startsWith('READY=1 ')), 20_000, 'READY=1');
    expect(ready).toMatch(
      /^READY=1 not ready \(journal unavailable \(recovery\): recovery could not read the journal at start \(/,
    );
    // The log says what it waits for: recovery's read, not a journal that can be written.
    const serving = lines.find((l) => String(l.msg).startsWith('sluiced serving, but not ready'));
    expect(serving?.msg).toMatch(
      /^sluiced serving, but not ready: journal unavailable \(recovery\): .*\. Every command is refused \(HTTP 503, no MQTT PUBACK\) until recovery has read the journal; it is taken again then, without a restart$/,
    );
    const notReady = await readyz();
    expect(notReady.status, notReady.body).toBe(503);
    const checks = notReady.json().checks as Record<string, { ok: boolean; detail: string }>;
    expect(notReady.json().status).toBe('not ready');
    expect(checks.journal?.ok).toBe(false);
    expect(checks.journal?.detail).toMatch(recoveryWords);
    const refused = await close();
    expect(refused.status, refused.body).toBe(503);
    expect(refused.json()).toMatchObject({ code: 'JOURNAL_UNAVAILABLE' });
    expect(String(refused.json().detail)).toMatch(/nothing was accepted or written/);

    // A run of the sweep after the refusal reads again, and fails again: nothing was taken up
    // until then, and nothing written.
    const failedBefore = faults!.failed;
    await until(
      () => (faults!.failed > failedBefore ? true : undefined),
      5_000,
      "the sweep's read again",
    );
    expect(site.plant.device('v1').writeLog).toEqual([]);
    expect(daemon.pipeline.get({ scope: SCOPE, key: 'earlier-open' })?.state).toBe('accepted');
    expect(daemon.pipeline.get({ scope: SCOPE, key: 'new-close' })).toBeUndefined();

    // The read succeeds again: the next run of the sweep recovers, without a restart.
    faults!.armed = false;
    const earlier = await daemon.pipeline.waitForSettled(
      { scope: SCOPE, key: 'earlier-open' },
      20_000,
    );
    expect(earlier).toMatchObject({ state: 'confirmed', code: 'OK' });
    const line = await until(
      () =>
        sent
          .filter((s) => s.startsWith('STATUS '))
          .at(-1)
          ?.match(/^STATUS (ready: .*)$/)?.[1],
      10_000,
      `the status line ready again; sent: ${JSON.stringify(sent)}`,
    );
    expect(line).toMatch(/; journal back at \S+Z after \d+ s unavailable \(recovery, from \S+Z\)$/);
    const back = await until(
      () => readyz().then((answer) => (answer.status === 200 ? answer : undefined)),
      10_000,
      '/readyz 200',
    );
    expect((back.json().checks as Record<string, { ok: boolean }>).journal?.ok).toBe(true);
    expect(lines.some((l) => l.msg === 'recovery read the journal: commands are taken again')).toBe(
      true,
    );
    // Read again, not written again: it could be written all along.
    const again = lines.filter((l) => /^journal \w+ again after /.test(String(l.msg)));
    expect(again.map((l) => l.msg)).toEqual([
      expect.stringMatching(
        /^journal readable again after \d+ s unavailable \(recovery\): commands are taken again$/,
      ),
    ]);
    const taken = await close();
    expect(taken.status, taken.body).toBe(200);
    expect(taken.json()).toMatchObject({ state: 'confirmed', code: 'OK' });
    // Ground truth: the earlier life's open, then the close, each written once.
    expect(site.plant.device('v1').writeLog.map((w) => w.seq)).toEqual([
      earlier!.seq,
      taken.json().seq,
    ]);
  }, 60_000);
});
