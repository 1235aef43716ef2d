import type { ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { sluicectl } from '../cli/helpers.js';
import { runSluiced } from '../config/sluiced.js';
import {
  postCommand,
  renameSiteEntry,
  startTokenSite,
  stopSite,
  type TokenSite,
} from '../helpers/daemon-site.js';
import { httpsRequest } from '../helpers/loopback-https.js';
import { until } from '../helpers/mosquitto.js';
import { hasCommand, realComponent } from '../helpers/real.js';
import {
  bindNotifySocket,
  spawnNotifiedSluiced,
  type NotifiedSluiced,
  type NotifySocket,
} from '../helpers/notify-socket.js';

/**
 * An identity renamed with its token kept (renamed-identity.test.ts: its clients' retries of
 * keys sent under the former name are new commands, and may actuate again). The start after the
 * rename warned in the log, once; /readyz, sluicectl health and the STATUS= line said nothing,
 * and the next start nothing at all, while the journal still held the former name's keys. They
 * now say it, as a note (the gateway is ready), at every start for as long as those keys are
 * kept — also once the new name is renamed again — and no more once the identity has its name
 * back (its retries replay again). The real
 * `sluiced` process with NOTIFY_SOCKET bound by python3, its admin endpoint through the real
 * sluicectl, sluice-sim; ground truth: the journal's keys of the former name, and the valve's
 * write log when a retry is replayed.
 */

const real = realComponent('python3', hasCommand('python3'), 'apt-get install python3');
const TOKEN = 'identity-rename-visible-token';

describe.runIf(real)('an identity renamed, its token kept, for as long as it matters', () => {
  let site: TokenSite;
  let socket: NotifySocket | null = null;
  let sluiced: NotifiedSluiced | null = null;
  let child: ChildProcess | null = null;
  let lives = 0;

  beforeAll(async () => {
    site = await startTokenSite(
      'sluice-identity-rename-visible-',
      { v1: { profile: 'valve', base: 0, travelMs: 50 } },
      { gatewayId: 'rename-visible', token: TOKEN, scope: 'scada' },
    );
  }, 60_000);

  afterAll(async () => {
    await stop();
    await stopSite(null, site);
  }, 30_000);

  async function stop(): Promise<void> {
    const running = child;
    if (running !== null && running.exitCode === null && running.signalCode === null) {
      const exited = new Promise((resolve) => running.once('exit', resolve));
      running.kill('SIGTERM');
      await exited;
    }
    child = null;
    socket?.close();
    socket = null;
  }

  /** A life of sluiced: started, and its line once it calls the gateway ready. */
  async function start(): Promise<{ status: () => string; port: number }> {
    lives += 1;
    socket = await bindNotifySocket(join(site.dir, `notify-${lives}.sock`));
    sluiced = spawnNotifiedSluiced(site.configPath, socket);
    child = sluiced.child;
    const notify = socket;
    const status = (): string =>
      notify.datagrams
        .flatMap((d) => {
          const s = /(?:^|\n)STATUS=(.*)$/s.exec(d.text);
          return s === null ? [] : [s[1]!];
        })
        .at(-1) ?? '';
    const ready = await until(
      () => (status().startsWith('ready: ') ? status() : undefined),
      45_000,
      'the status line: ready',
    ).catch((error: unknown) => {
      throw new Error(`${String(error)}; output:\n${sluiced!.output()}`);
    });
    return { status, port: Number(/HTTPS on 127\.0\.0\.1:(\d+)/.exec(ready)![1]) };
  }

  const readyz = async (
    port: number,
  ): Promise<{ status: number; checks: Record<string, { ok: boolean; detail: string }> }> => {
    const answer = await httpsRequest({ port, ca: site.cert, token: '' }, 'GET', '/readyz');
    return {
      status: answer.status,
      checks: (
        JSON.parse(answer.body) as { checks: Record<string, { ok: boolean; detail: string }> }
      ).checks,
    };
  };

  const scadaKeys = (): string[] => {
    const journal = SqliteJournal.open({
      path: join(site.dir, 'state', 'journal.db'),
      readonly: true,
    });
    try {
      return journal
        .list({ limit: 100 })
        .filter((c) => c.scope === 'scada')
        .map((c) => c.key);
    } finally {
      journal.close();
    }
  };

  it('is said by /readyz, sluicectl health and the STATUS= line while the journal keeps keys of the former name, across restarts', async () => {
    const first = await start();
    const open = {
      device: 'v1',
      action: 'open',
      issuedAt: new Date().toISOString(),
      ttlMs: 600_000,
    };
    const sent = await postCommand(
      { port: first.port, ca: site.cert, token: TOKEN },
      'open-1',
      open,
      { prefer: 'wait=10' },
    );
    expect(sent.json()).toMatchObject({ state: 'confirmed' });
    expect(first.status()).not.toContain('renamed');
    await stop();

    renameSiteEntry(site.configPath, 'identities', 'scada', 'scada-line2');
    for (const life of ['the start after the rename', 'the start after that']) {
      const { status, port } = await start();
      // Ground truth: the journal keeps the former name's key.
      expect(scadaKeys(), life).toEqual(['open-1']);
      expect(status(), life).toMatch(
        /^ready: HTTPS on 127\.0\.0\.1:\d+; 0 recovered command\(s\) settled; identity "scada" renamed "scada-line2": its clients' retries of keys sent as "scada" would run again, until about \d{4}-\d\d-\d\dT\d\d:\d\dZ$/,
      );
      const answer = await readyz(port);
      expect(answer.status, life).toBe(200);
      expect(answer.checks['identity:scada-line2'], life).toMatchObject({ ok: true });
      expect(answer.checks['identity:scada-line2']!.detail).toMatch(
        /^renamed from "scada" \(the same token [0-9a-f]+; found at the start of \S+\): keys are scoped by the identity's name, and the journal holds 1 key\(s\) of "scada", kept until about \S+ \(journal.retentionHours after the last settles\)\. Until then a client's retry under "scada-line2" of a key it sent as "scada" is a new command and may actuate again\. Give the identity back its name "scada"/,
      );
      const health = await sluicectl(['--config', site.configPath, 'health'], {
        env: { SUDO_USER: 'alice', USER: 'root' },
      });
      expect(health.stdout, `${life}: ${health.stderr}`).toContain('renamed from "scada"');
      await stop();
    }
    // And sluiced --check, before the next restart (the rename was found two starts ago).
    const checked = runSluiced(['--config', site.configPath, '--check']);
    expect(checked.stdout).toMatch(
      /\n {2}renames {3}warning: identity "scada-line2": renamed from "scada" \(the same token [0-9a-f]+; found at the start of \S+\): keys are scoped by the identity's name, and the journal holds 1 key\(s\) of "scada"/,
    );
    expect(checked.status).toBe(0);

    // Renamed once more: "scada"'s key is still kept, and its clients are "scada-line3"'s now.
    // The rename found at this start is of "scada-line2", which holds no key; the one it
    // carries on is still said, at this start and the next.
    renameSiteEntry(site.configPath, 'identities', 'scada-line2', 'scada-line3');
    const checkedAgain = runSluiced(['--config', site.configPath, '--check']);
    expect(checkedAgain.stdout).toMatch(
      /warning: identity "scada-line3": renamed from "scada" \(the same token [0-9a-f]+; found at the start of \S+\): keys are scoped by the identity's name, and the journal holds 1 key\(s\) of "scada"/,
    );
    expect(checkedAgain.status).toBe(0);
    for (const life of ['the start after the second rename', 'the start after that']) {
      const { status, port } = await start();
      expect(scadaKeys(), life).toEqual(['open-1']);
      expect(status(), life).toMatch(
        /; identity "scada" renamed "scada-line3": its clients' retries of keys sent as "scada" would run again, until about \S+$/,
      );
      const answer = await readyz(port);
      expect(answer.checks['identity:scada-line3']?.detail, life).toMatch(
        /^renamed from "scada" \(the same token [0-9a-f]+; found at the start of \S+\): keys are scoped by the identity's name, and the journal holds 1 key\(s\) of "scada"/,
      );
      await stop();
    }

    // The name given back: retries under "scada" replay again, and nothing is said.
    renameSiteEntry(site.configPath, 'identities', 'scada-line3', 'scada');
    const back = await start();
    const writes = site.plant.device('v1').writeLog.length;
    const retry = await postCommand(
      { port: back.port, ca: site.cert, token: TOKEN },
      'open-1',
      open,
      { prefer: 'wait=10' },
    );
    expect(retry.json()).toMatchObject({ state: 'confirmed' });
    expect(retry.headers['idempotent-replayed']).toBe('true');
    expect(site.plant.device('v1').writeLog.length).toBe(writes);
    expect(back.status()).not.toContain('renamed');
    expect(
      Object.keys((await readyz(back.port)).checks).filter((c) => c.startsWith('identity:')),
    ).toEqual([]);
    await stop();
  }, 120_000);
});
