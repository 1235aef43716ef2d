import type { ChildProcess } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse, stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sha256 } from '../../src/intake/identities.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import type { Plant } from '../../simulators/plant.js';
import { startModbusPlant, writeDaemonSite } from '../helpers/daemon-site.js';
import { tempDir } from '../helpers/fixtures.js';
import { httpsRequest, type HttpsAnswer } from '../helpers/loopback-https.js';
import { until } from '../helpers/mosquitto.js';
import { hasCommand, realComponent } from '../helpers/real.js';
import {
  bindNotifySocket,
  spawnNotifiedSluiced,
  type NotifiedSluiced,
  type NotifySocket,
} from '../helpers/notify-socket.js';
import { fillFilesystem, mountTmpfs, tmpfsAvailable, unmount } from '../reliability/support.js';

/**
 * sluiced on a journal filesystem filled to the edge: room left for a write of one page of the
 * journal's log and not for a claim's (64 KB free before the start, which takes 32 KB for
 * SQLite's shared-memory index). The readiness proof wrote one page, which fitted (again and
 * again: a refused claim leaves the log's file longer, its room for the next proof): READY's
 * STATUS= line said `ready` and /readyz answered 200 while every command was refused 503
 * JOURNAL_UNAVAILABLE. The proof now writes as many pages as a claim while the filesystem is
 * short of room: /readyz, the line and the commands' answers agree, refused alike, and ready
 * alike once space is freed.
 * The real `sluiced` process with NOTIFY_SOCKET bound by python3, sluice-sim, the state folder
 * on a real tmpfs; ground truth: the commands refused are absent from the journal file, the
 * valve written only for the one accepted.
 */

const real = realComponent('python3', hasCommand('python3'), 'apt-get install python3');
const mountable = real && tmpfsAvailable();
const VALVE = 'inlet-valve';
const TOKEN = 'readiness-claim-room-token';

describe.runIf(mountable)(
  'readiness on a journal filesystem with room for a page and not a claim',
  () => {
    let plant: Plant;
    let cleanup: () => void;
    let dir: string;
    let stateDir: string;
    let configPath: string;
    let ca: string;
    let socket: NotifySocket | null = null;
    let sluiced: NotifiedSluiced | null = null;
    let child: ChildProcess | null = null;
    const filler = (): string => join(stateDir, 'filler');

    beforeAll(async () => {
      ({ dir, cleanup } = tempDir('sluice-readiness-claim-room-'));
      plant = await startModbusPlant({ [VALVE]: { profile: 'valve', base: 0, travelMs: 50 } });
      configPath = await writeDaemonSite(dir, plant, 'claimroom');
      const config = parse(readFileSync(configPath, 'utf8')) as Record<string, unknown>;
      config.identities = { ops: { tokenSha256: sha256(TOKEN).toString('hex'), devices: ['*'] } };
      config.admin = { enabled: false };
      writeFileSync(configPath, stringify(config));
      ca = readFileSync(join(dir, 'cert.pem'), 'utf8');
      stateDir = join(dir, 'state');
      mkdirSync(stateDir, { mode: 0o700 });
      mountTmpfs(stateDir, '8m');
    }, 30_000);

    afterAll(async () => {
      await stopSluiced();
      await plant.stop();
      unmount(stateDir);
      cleanup();
    });

    async function stopSluiced(): Promise<void> {
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

    async function startSluiced(name: string): Promise<{ socket: NotifySocket; out: string }> {
      const out = join(dir, `${name}.log`);
      socket = await bindNotifySocket(join(dir, `${name}.sock`), out);
      sluiced = spawnNotifiedSluiced(configPath, socket, {}, [], out);
      child = sluiced.child;
      return { socket, out };
    }

    const statusOf = (text: string): string | undefined => /(?:^|\n)STATUS=(.*)$/s.exec(text)?.[1];

    it('/readyz, the STATUS= line and a command agree: refused alike at the edge, ready alike once space is freed', async () => {
      // A first life makes the journal and leaves it closed.
      const first = await startSluiced('first');
      await until(
        () => first.socket.datagrams.find((d) => d.text.startsWith('READY=1')),
        45_000,
        `READY=1; output:\n${sluiced!.output()}`,
      );
      await stopSluiced();

      const slack = join(stateDir, 'slack');
      // The edge: after the start's own files (the lock's, SQLite's 32 KB shared-memory index) and
      // writes, room for a few pages of the journal's log, not for a claim's eight or more.
      writeFileSync(slack, Buffer.alloc(64 * 1024, 1));
      fillFilesystem(filler());
      rmSync(slack);
      const { socket: notify } = await startSluiced('second');
      const ready = await until(
        () => notify.datagrams.find((d) => d.text.startsWith('READY=1')),
        45_000,
        'READY=1 at the edge',
      ).catch((error: unknown) => {
        throw new Error(`${String(error)}; output:\n${sluiced!.output()}`);
      });
      // What READY said: not ready, the journal full.
      expect(statusOf(ready.text)).toMatch(
        /^not ready \(journal unavailable \(check\): SQLITE_FULL: the filesystem of .+ is full; /,
      );
      const port = Number(/HTTPS on 127\.0\.0\.1:(\d+)/.exec(statusOf(ready.text) ?? '')?.[1]);
      expect(port, ready.text).toBeGreaterThan(0);
      const post = (key: string): Promise<HttpsAnswer> =>
        httpsRequest(
          { port, ca, token: TOKEN },
          'POST',
          '/v1/commands',
          { 'idempotency-key': key, prefer: 'wait=10' },
          { device: VALVE, action: 'open', issuedAt: new Date().toISOString(), ttlMs: 60_000 },
        );
      const readyz = async (): Promise<{ status: number; journal: unknown }> => {
        const answer = await httpsRequest({ port, ca, token: TOKEN }, 'GET', '/readyz');
        const body = JSON.parse(answer.body) as { checks: Record<string, unknown> };
        return { status: answer.status, journal: body.checks.journal };
      };
      const full = {
        ok: false,
        detail: expect.stringMatching(
          /^journal unavailable \((check|claim)\): SQLITE_FULL: the filesystem of .+ is full; /,
        ) as unknown,
      };
      const writes = plant.device(VALVE).counters.writesReceived;

      // Commands and readiness, asked in turn more than a proof's reuse (1 s) apart: every answer
      // the same. (The one-page proof fitted in the room each refused claim had taken.)
      const lastStatus = (): string | undefined =>
        notify.datagrams
          .map((d) => statusOf(d.text))
          .filter((s) => s !== undefined)
          .at(-1);
      for (let i = 0; i < 3; i++) {
        const refused = await post(`at-the-edge-${i}`);
        expect(refused.status, refused.body).toBe(503);
        expect(refused.json().code).toBe('JOURNAL_UNAVAILABLE');
        await new Promise((resolve) => setTimeout(resolve, 1_100));
        expect(await readyz()).toEqual({ status: 503, journal: full });
      }
      // The status line, proved each second while the journal fails: not ready, saying why.
      await until(
        () => {
          const status = lastStatus();
          return status !== undefined &&
            /^not ready \(journal unavailable \((check|claim)\): SQLITE_FULL: /.test(status)
            ? status
            : undefined;
        },
        5_000,
        `the STATUS= line not ready; datagrams: ${JSON.stringify(notify.datagrams.map((d) => d.text))}`,
      );
      expect(plant.device(VALVE).counters.writesReceived).toBe(writes);

      // Space is freed: ready alike, and the command is taken and written once.
      rmSync(filler(), { force: true });
      await until(
        () => (lastStatus()?.startsWith('ready:') === true ? true : undefined),
        15_000,
        `the STATUS= line ready again; datagrams: ${JSON.stringify(notify.datagrams.map((d) => d.text))}`,
      );
      expect(await readyz()).toEqual({ status: 200, journal: { ok: true, detail: 'writable' } });
      const accepted = await post('after-space-is-freed');
      expect(accepted.status, accepted.body).toBe(200);
      expect(plant.device(VALVE).counters.writesReceived).toBe(writes + 1);
      await stopSluiced();
      const onFile = SqliteJournal.open({ path: join(stateDir, 'journal.db'), readonly: true });
      try {
        for (let i = 0; i < 3; i++) expect(onFile.findByKey(`at-the-edge-${i}`)).toEqual([]);
        expect(onFile.findByKey('after-space-is-freed')[0]?.state).toBe('confirmed');
      } finally {
        onFile.close();
      }
    }, 120_000);
  },
);
