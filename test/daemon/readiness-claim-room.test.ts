import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { fullDiskSluiced, statusOf, type FullDiskSluiced } from '../helpers/full-disk-sluiced.js';
import { until } from '../helpers/mosquitto.js';
import { hasCommand, realComponent } from '../helpers/real.js';
import { tmpfsAvailable } from '../reliability/support.js';

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

describe.runIf(mountable)(
  'readiness on a journal filesystem with room for a page and not a claim',
  () => {
    let bed: FullDiskSluiced;

    beforeAll(async () => {
      bed = await fullDiskSluiced('readiness-claim-room', 'readiness-claim-room-token');
    }, 30_000);

    afterAll(async () => {
      await bed.close();
    });

    it('/readyz, the STATUS= line and a command agree: refused alike at the edge, ready alike once space is freed', async () => {
      // A first life makes the journal and leaves it closed.
      await bed.firstLife();

      // The edge: after the start's own files (the lock's, SQLite's 32 KB shared-memory index) and
      // writes, room for a few pages of the journal's log, not for a claim's eight or more.
      bed.fillLeaving(64 * 1024);
      const { socket: notify } = await bed.start('second');
      const ready = await until(
        () => notify.datagrams.find((d) => d.text.startsWith('READY=1')),
        45_000,
        'READY=1 at the edge',
      ).catch((error: unknown) => {
        throw new Error(`${String(error)}; output:\n${bed.output()}`);
      });
      // What READY said: not ready, the journal full.
      expect(statusOf(ready.text)).toMatch(
        /^not ready \(journal unavailable \(check\): SQLITE_FULL: the filesystem of .+ is full; /,
      );
      const port = Number(/HTTPS on 127\.0\.0\.1:(\d+)/.exec(statusOf(ready.text) ?? '')?.[1]);
      expect(port, ready.text).toBeGreaterThan(0);
      const post = (key: string) => bed.post(port, key);
      const readyz = async (): Promise<{ status: number; journal: unknown }> => {
        const answer = await bed.get(port, '/readyz');
        const body = JSON.parse(answer.body) as { checks: Record<string, unknown> };
        return { status: answer.status, journal: body.checks.journal };
      };
      const full = {
        ok: false,
        detail: expect.stringMatching(
          /^journal unavailable \((check|claim)\): SQLITE_FULL: the filesystem of .+ is full; /,
        ) as unknown,
      };
      const writes = bed.plant.device(bed.valve).counters.writesReceived;

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
      expect(bed.plant.device(bed.valve).counters.writesReceived).toBe(writes);

      // Space is freed: ready alike, and the command is taken and written once.
      bed.free();
      await until(
        () => (lastStatus()?.startsWith('ready:') === true ? true : undefined),
        15_000,
        `the STATUS= line ready again; datagrams: ${JSON.stringify(notify.datagrams.map((d) => d.text))}`,
      );
      expect(await readyz()).toEqual({ status: 200, journal: { ok: true, detail: 'writable' } });
      const accepted = await post('after-space-is-freed');
      expect(accepted.status, accepted.body).toBe(200);
      expect(bed.plant.device(bed.valve).counters.writesReceived).toBe(writes + 1);
      await bed.stop();
      const onFile = SqliteJournal.open({ path: join(bed.stateDir, 'journal.db'), readonly: true });
      try {
        for (let i = 0; i < 3; i++) expect(onFile.findByKey(`at-the-edge-${i}`)).toEqual([]);
        expect(onFile.findByKey('after-space-is-freed')[0]?.state).toBe('confirmed');
      } finally {
        onFile.close();
      }
    }, 120_000);
  },
);
