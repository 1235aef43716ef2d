import type { ChildProcess } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse, stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sha256 } from '../../src/intake/identities.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import type { Plant } from '../../simulators/plant.js';
import { startModbusPlant, writeDaemonSite } from '../helpers/daemon-site.js';
import { tempDir } from '../helpers/fixtures.js';
import { stallableDisk, type StallableDisk } from '../helpers/stallable-disk.js';
import { httpsRequest } from '../helpers/loopback-https.js';
import { until } from '../helpers/mosquitto.js';
import { hasCommand, realComponent } from '../helpers/real.js';
import {
  bindNotifySocket,
  spawnNotifiedSluiced,
  type NotifiedSluiced,
  type NotifySocket,
} from '../helpers/notify-socket.js';
import { tmpfsAvailable } from '../reliability/support.js';

/**
 * The STATUS= line while the journal's disk stalls: its fdatasync does not return, while writes
 * still reach the page cache and the event loop turns. /readyz answered 503 then (after 5 s,
 * SYNC_STALL_MS), but the line `systemctl status` shows kept saying "ready": it took the
 * journal's word for its last write, and a stalled sync fails none. It now says the sync has not
 * returned while it lasts, and when it cleared, as does the log. A real stall of real
 * filesystems, as in readyz-sync-stalled.test.ts: the journal on an ext4 image looped from a
 * file on a second ext4 image, which the test freezes (fsfreeze). The real `sluiced` process
 * with NOTIFY_SOCKET bound by python3 (its log and socket outside the frozen filesystems),
 * sluice-sim; ground truth: the simulator's write counter and the journal file.
 */

const real =
  realComponent('python3', hasCommand('python3'), 'apt-get install python3') &&
  realComponent('fsfreeze', hasCommand('fsfreeze'), 'apt-get install util-linux');
const mountable = real && tmpfsAvailable();
const VALVE = 'inlet-valve';
const TOKEN = 'notify-sync-stall-token';

describe.runIf(mountable)('the STATUS= line while the journal’s disk stalls', () => {
  let plant: Plant;
  let dir: string;
  let cleanup: () => void;
  let ca: string;
  let socket: NotifySocket;
  let sluiced: NotifiedSluiced;
  let child: ChildProcess;
  let out: string;
  let disk: StallableDisk;

  beforeAll(async () => {
    ({ dir, cleanup } = tempDir('sluice-notify-sync-stall-'));
    plant = await startModbusPlant({ [VALVE]: { profile: 'valve', base: 0, travelMs: 50 } });
    const configPath = await writeDaemonSite(dir, plant, 'notifysyncstall');
    const config = parse(readFileSync(configPath, 'utf8')) as Record<string, unknown>;
    config.identities = { ops: { tokenSha256: sha256(TOKEN).toString('hex'), devices: ['*'] } };
    config.admin = { enabled: false };
    writeFileSync(configPath, stringify(config));
    ca = readFileSync(join(dir, 'cert.pem'), 'utf8');
    disk = stallableDisk(dir);
    out = join(dir, 'sluiced.log');
    socket = await bindNotifySocket(join(dir, 'notify.sock'), out);
    sluiced = spawnNotifiedSluiced(configPath, socket, {}, [], out);
    child = sluiced.child;
  }, 30_000);

  afterAll(async () => {
    disk.resume();
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      await exited;
    }
    socket.close();
    await plant.stop();
    disk.remove();
    cleanup();
  });

  const statuses = (): string[] =>
    socket.datagrams.flatMap((d) => {
      const status = /(?:^|\n)STATUS=(.*)$/s.exec(d.text);
      return status === null ? [] : [status[1]!];
    });
  const statusMatching = (pattern: RegExp, what: string, ms: number): Promise<string> =>
    until(
      () => {
        const last = statuses().at(-1);
        return last !== undefined && pattern.test(last) ? last : undefined;
      },
      ms,
      what,
    ).catch((error: unknown) => {
      throw new Error(
        `${String(error)}; statuses: ${JSON.stringify(statuses())}; output:\n${sluiced.output()}`,
      );
    });
  const logLines = (): Record<string, unknown>[] =>
    readFileSync(out, 'utf8')
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>);

  it('says the sync has not returned while it lasts, and when it cleared', async () => {
    const ready = await statusMatching(/^ready: HTTPS on/, 'the status line: ready', 45_000);
    const port = Number(/HTTPS on 127\.0\.0\.1:(\d+)/.exec(ready)![1]);
    const valve = plant.device(VALVE);
    const writes = valve.counters.writesReceived;
    // The stall ends after 20 s whatever this process does (stallableDisk).
    disk.stall(20_000);
    // A command: its claim waits for the sync, which does not return.
    const sent = httpsRequest(
      { port, ca, token: TOKEN },
      'POST',
      '/v1/commands',
      { 'idempotency-key': 'stalled', prefer: 'wait=40' },
      { device: VALVE, action: 'open', issuedAt: new Date().toISOString(), ttlMs: 120_000 },
    );
    let stalled: string;
    try {
      // SYNC_STALL_MS (5 s) after the sync was asked for, then the next look (1 s).
      stalled = await statusMatching(
        /^not ready \(journal unavailable \(sync\)/,
        'the status line: the sync stalled',
        12_000,
      );
      // Ground truth meanwhile: nothing written to the valve.
      expect(valve.counters.writesReceived).toBe(writes);
    } finally {
      disk.resume();
    }
    expect(stalled).toMatch(
      /^not ready \(journal unavailable \(sync\): its fdatasync has not returned since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ, a slow or stalled disk; no command is acknowledged or written until it returns\): HTTPS on 127\.0\.0\.1:\d+; 0 recovered command\(s\) settled$/,
    );
    // One line for the whole stall: its words do not change while it lasts.
    expect(statuses().filter((s) => s.startsWith('not ready (journal'))).toHaveLength(1);

    const answer = await sent;
    expect(answer.status, answer.body).toBe(200);
    expect(valve.counters.writesReceived).toBe(writes + 1);
    const cleared = await statusMatching(/^ready: /, 'the status line: ready again', 10_000);
    expect(cleared).toMatch(
      /^ready: HTTPS on 127\.0\.0\.1:\d+; 0 recovered command\(s\) settled; journal back at \S+Z after \d+ s unavailable \(sync, from \S+Z\)$/,
    );
    const lines = logLines();
    expect(
      lines.find((l) => String(l.msg).startsWith('not ready: journal unavailable (sync)')),
    ).toMatchObject({ level: 40 });
    expect(
      lines.find((l) => String(l.msg).startsWith('journal writable again after ')),
    ).toMatchObject({ level: 30 });
    const onFile = SqliteJournal.open({ path: join(disk.stateDir, 'journal.db'), readonly: true });
    try {
      expect(onFile.findByKey('stalled')[0]?.state).toBe('confirmed');
    } finally {
      onFile.close();
    }
  }, 90_000);
});
