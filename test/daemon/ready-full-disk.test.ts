import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { fullDiskSluiced, statusOf, type FullDiskSluiced } from '../helpers/full-disk-sluiced.js';
import { until } from '../helpers/mosquitto.js';
import { hasCommand, realComponent } from '../helpers/real.js';
import { tmpfsAvailable } from '../reliability/support.js';

/**
 * sluiced started on a full disk: the journal opens and is checked (reads), the start finishes
 * and READY=1 goes out (the daemon serves: a command is refused 503, I5, and the journal is
 * taken again without a restart once space is freed), but nothing can be written. The log said
 * "sluiced ready" and the STATUS= line "ready: …", taking the journal's word for its last write
 * (none had failed in this life), while /readyz answered 503. The start now proves the journal
 * with a write before it says anything, the log and the line say it cannot be written, and the
 * line and the log say it once it can again, without a request to make it write.
 * The real `sluiced` process with NOTIFY_SOCKET bound by python3, sluice-sim, the state folder
 * on a real tmpfs filled to ENOSPC; ground truth: a command refused and absent from the journal
 * file, then written once to the valve.
 */

const real = realComponent('python3', hasCommand('python3'), 'apt-get install python3');
const mountable = real && tmpfsAvailable();

describe.runIf(mountable)('sluiced started on a full disk', () => {
  let bed: FullDiskSluiced;

  beforeAll(async () => {
    bed = await fullDiskSluiced('ready-full-disk', 'ready-full-disk-token');
  }, 30_000);

  afterAll(async () => {
    await bed.close();
  });

  const logLines = (out: string): Record<string, unknown>[] =>
    readFileSync(out, 'utf8')
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>);

  it('says the journal cannot be written at READY, in the log and the STATUS= line, and says it once it can', async () => {
    // A first life makes the journal and leaves it closed.
    await bed.firstLife();

    // Room left for the start's files (the lock's, SQLite's 32 KB shared-memory index) and none
    // for a commit: a start on a disk that filled while the daemon was stopped. (With none, the
    // start fails, exit 1, saying so; with a little more, readiness-claim-room.test.ts.)
    bed.fillLeaving(40 * 1024);
    const { socket: notify, out } = await bed.start('second');
    const ready = await until(
      () => notify.datagrams.find((d) => d.text.startsWith('READY=1')),
      45_000,
      'READY=1 on a full disk',
    ).catch((error: unknown) => {
      throw new Error(`${String(error)}; output:\n${bed.output()}`);
    });
    // Ground truth first: the journal cannot take a command.
    const port = Number(
      /HTTPS on 127\.0\.0\.1:(\d+)/.exec(statusOf(ready.text) ?? '')?.[1] ??
        (logLines(out).find((l) => l.msg === 'sluiced started')?.https as { port: number }).port,
    );
    const post = (key: string) => bed.post(port, key);
    const writes = bed.plant.device(bed.valve).counters.writesReceived;
    const refused = await post('on-a-full-disk');
    expect(refused.status, refused.body).toBe(503);
    expect(bed.plant.device(bed.valve).counters.writesReceived).toBe(writes);

    // What READY said: not ready, the journal, in the line sent with it and in the log.
    expect(statusOf(ready.text)).toMatch(
      /^not ready \(journal unavailable \(check\): SQLITE_FULL: the filesystem of .+ is full; commands are refused until space is freed there, then taken again without a restart(; inlet-valve not read yet)?\): HTTPS on 127\.0\.0\.1:\d+; /,
    );
    const lines = logLines(out);
    expect(lines.some((l) => l.msg === 'sluiced ready')).toBe(false);
    const started = lines.find((l) =>
      String(l.msg).startsWith('sluiced serving, but not ready: journal unavailable (check)'),
    );
    expect(started, JSON.stringify(lines.map((l) => l.msg))).toBeDefined();
    expect(started!.level).toBe(40);

    // Space is freed: no request makes the daemon write; the line and the log say it.
    bed.free();
    const again = await until(
      () => {
        const status = notify.datagrams
          .map((d) => statusOf(d.text))
          .filter((s) => s !== undefined)
          .at(-1);
        return status?.startsWith('ready:') === true ? status : undefined;
      },
      15_000,
      `the STATUS= line ready again; datagrams: ${JSON.stringify(notify.datagrams.map((d) => d.text))}`,
    );
    // With a note of the outage, for `systemctl status`.
    expect(again).toMatch(
      /^ready: HTTPS on 127\.0\.0\.1:\d+; 0 recovered command\(s\) settled; journal back at \S+Z after \d+ s unavailable \(check, SQLITE_FULL, from \S+Z\)$/,
    );
    await until(
      () =>
        logLines(out).find((l) => String(l.msg).startsWith('journal writable again')) ?? undefined,
      5_000,
      'the log line of the recovery',
    );
    // And it is: the next command is journaled and written once.
    const accepted = await post('after-space-is-freed');
    expect(accepted.status, accepted.body).toBe(200);
    expect(bed.plant.device(bed.valve).counters.writesReceived).toBe(writes + 1);
    await bed.stop();
    const onFile = SqliteJournal.open({ path: join(bed.stateDir, 'journal.db'), readonly: true });
    try {
      expect(onFile.findByKey('on-a-full-disk')).toEqual([]);
      expect(onFile.findByKey('after-space-is-freed')[0]?.state).toBe('confirmed');
    } finally {
      onFile.close();
    }
  }, 120_000);
});
