import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { startSluiced } from '../config/sluiced.js';
import { editSite, postCommand, startTokenSite, type TokenSite } from '../helpers/daemon-site.js';
import { ROOT } from '../helpers/fixtures.js';
import { schemaOf } from '../helpers/journal-schema.js';
import { httpsRequest } from '../helpers/loopback-https.js';
import { freePort, until } from '../helpers/mosquitto.js';
import { hasCommand, realComponent } from '../helpers/real.js';
import { writeV1Journal } from '../helpers/v1-journal.js';

/**
 * docs/DEPLOYMENT.md's "Upgrading Sluice, and going back": its three blocks (the copy before an
 * upgrade, the way back from schema version 3 to 2, the copy put back) run as written, the
 * journal's folder /var/lib/sluice made the test's state folder, `systemctl stop sluiced` a stop
 * of the test's sluiced, and `runuser -u sluice --` dropped (the test's user owns the files).
 * What the section says of them, checked on the files: the copy is the journal before the
 * upgrade; a stopped daemon leaves no -wal or -shm; the way back gives version 2's schema (a new
 * journal's without version 3's two indexes), every command kept, and a newer Sluice upgrades
 * it again; the copy put back is the journal of before, the newer one kept aside with what came
 * after. (An older Sluice, the one before 75cceeb, was run on the journal given back by the
 * second block when this was written: it replayed a command settled by the newer one, and took
 * new ones; it refuses version 3, exit 3.) Real sluiced, sluice-sim, the sqlite3 shell.
 */

const haveSqlite3 = realComponent('sqlite3', hasCommand('sqlite3'), 'apt-get install sqlite3');
const TOKEN = 'deployment-rollback-token';

/** The section's shell blocks, each as its lines. */
function blocks(): string[][] {
  const doc = readFileSync(join(ROOT, 'docs/DEPLOYMENT.md'), 'utf8');
  const start = doc.indexOf('## Upgrading Sluice, and going back');
  expect(start, 'docs/DEPLOYMENT.md: "Upgrading Sluice, and going back"').toBeGreaterThan(0);
  const section = doc.slice(start, doc.indexOf('\n## ', start + 1));
  return [...section.matchAll(/```sh\n([\s\S]*?)```/g)].map((m) =>
    m[1]!.split('\n').filter((l) => l.trim() !== ''),
  );
}

describe.runIf(haveSqlite3)('the rollback of docs/DEPLOYMENT.md', () => {
  let site: TokenSite;
  let state: string;
  let to: { port: number; ca: string; token: string };

  beforeAll(async () => {
    site = await startTokenSite(
      'sluice-rollback-',
      { 'inlet-valve': { profile: 'valve', base: 0, travelMs: 0 } },
      { gatewayId: 'rollback', token: TOKEN },
    );
    const port = await freePort();
    editSite(site.configPath, (s) => {
      (s.https as Record<string, unknown>).port = port;
    });
    state = join(site.dir, 'state');
    mkdirSync(state);
    to = { port, ca: site.cert, token: TOKEN };
  }, 30_000);

  afterAll(async () => {
    await site.plant.stop();
    site.cleanup();
  });

  /**
   * A block's lines as the section gives them, on the test's state folder; what the count of
   * open commands printed, when the block has that line (the operator reads it).
   */
  function run(lines: readonly string[]): { open: number | null } {
    let open: number | null = null;
    for (const line of lines) {
      if (line === 'systemctl stop sluiced') continue; // The test's sluiced is stopped already.
      const command = line
        .replaceAll('/var/lib/sluice', state)
        .replace(/^runuser -u sluice -- /, '');
      expect(command).not.toMatch(/systemctl|runuser/);
      const out = execFileSync('sh', ['-c', command], {
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      if (/SELECT count\(\*\) FROM commands WHERE state IN/.test(line)) {
        open = Number(out.trim());
        // "The count must be 0 before the copy is taken."
        if (open !== 0) return { open };
      }
    }
    return { open };
  }

  async function runDaemon(work: () => Promise<void>): Promise<void> {
    const sluiced = startSluiced(['--config', site.configPath]);
    try {
      const outcome = await Promise.race([
        sluiced.exited.then((c) => `exited ${String(c)}`),
        sluiced.line((l) => l.includes('"msg":"sluiced started"'), 45_000).then(() => 'started'),
      ]);
      expect(outcome, sluiced.lines.join('\n') + sluiced.stderr()).toBe('started');
      await work();
      expect(await sluiced.stop()).toBe(0);
    } finally {
      await sluiced.kill();
    }
    // "A stopped daemon leaves no -wal or -shm file beside the journal."
    // (The test's read-only reads of the copy leave its own.)
    expect(readdirSync(state).filter((f) => /^journal\.db-(wal|shm)$/.test(f))).toEqual([]);
  }

  const confirmed = (key: string): Promise<unknown> =>
    until(
      async () => {
        const answer = await httpsRequest(to, 'GET', `/v1/commands/${key}`);
        return answer.status === 200 &&
          (JSON.parse(answer.body) as { state: string }).state === 'confirmed'
          ? answer
          : undefined;
      },
      15_000,
      `${key} confirmed`,
    );

  const versionOf = (path: string): number => {
    const db = new BetterSqlite3(path, { readonly: true, fileMustExist: true });
    try {
      return db.pragma('user_version', { simple: true }) as number;
    } finally {
      db.close();
    }
  };
  const keysOf = (path: string): string[] => {
    const db = new BetterSqlite3(path, { readonly: true, fileMustExist: true });
    try {
      return (db.prepare('SELECT key FROM commands ORDER BY key').all() as { key: string }[]).map(
        (r) => r.key,
      );
    } finally {
      db.close();
    }
  };

  it('keeps a copy, goes back from 3 to 2 with every command, and puts the copy back', async () => {
    const [backup, back, restore] = blocks();
    expect([backup, back, restore].every((b) => b !== undefined)).toBe(true);
    const journal = join(state, 'journal.db');
    const copy = join(state, 'journal-before-upgrade.db');
    writeV1Journal(journal, 50);
    const oldKeys = keysOf(journal);

    // The copy before the upgrade: the journal of version 1, whole (no command open in it).
    expect(run(backup!).open).toBe(0);
    expect(versionOf(copy)).toBe(1);
    expect(keysOf(copy)).toEqual(oldKeys);
    const copied = readFileSync(copy);

    // The newer Sluice upgrades it and takes a command.
    await runDaemon(async () => {
      const answer = await postCommand(to, 'after-upgrade', {
        device: 'inlet-valve',
        action: 'open',
      });
      expect(answer.status, answer.body).toBeLessThan(300);
      await confirmed('after-upgrade');
    });
    expect(versionOf(journal)).toBe(3);
    const upgradedKeys = keysOf(journal);
    expect(upgradedKeys).toEqual([...oldKeys, 'after-upgrade'].sort());

    // Back to version 2: version 2's schema, every command.
    run(back!);
    expect(versionOf(journal)).toBe(2);
    const fresh = join(site.dir, 'fresh.db');
    SqliteJournal.open({ path: fresh }).close();
    expect(schemaOf(journal)).toEqual(
      schemaOf(fresh).filter((l) => !/^index commands_unsuccessful/.test(l)),
    );
    expect(keysOf(journal)).toEqual(upgradedKeys);
    const db = new BetterSqlite3(journal, { readonly: true });
    try {
      expect(db.pragma('quick_check', { simple: true })).toBe('ok');
    } finally {
      db.close();
    }

    // A newer Sluice again: upgraded, the command there.
    await runDaemon(() => confirmed('after-upgrade').then(() => undefined));
    expect(versionOf(journal)).toBe(3);
    expect(schemaOf(journal)).toEqual(schemaOf(fresh));

    // The copy put back: the journal of before the upgrade; the newer one aside, whole.
    run(restore!);
    expect(readFileSync(journal).equals(copied)).toBe(true);
    const aside = join(state, 'journal-after-upgrade.db');
    expect(existsSync(aside)).toBe(true);
    expect(keysOf(aside)).toEqual(upgradedKeys);
  }, 120_000);

  /**
   * A stop can leave commands open, which the next start takes up. A copy taken with one open
   * gave it to the older Sluice again: the newer Sluice had carried it out, and the older one,
   * started on the copy put back, wrote it a second time after a later command (I1; the valve
   * moved back). The section's first block counts the open commands, and the copy waits until
   * there are none (as it says: start sluiced, let them settle, run the block again). The
   * journal here is of this Sluice's version, its open command claimed as a stop leaves one
   * (accepted, its time to live an hour); the copy put back is taken up by this Sluice as by an
   * older one, every Sluice takes up a journal's open commands at its start. Ground truth: the
   * valve's write log.
   */
  it('takes the copy with no command open, so that one is not carried out again from it', async () => {
    const [backup, , restore] = blocks();
    const journal = join(state, 'journal.db');
    for (const name of ['journal.db', 'journal-before-upgrade.db', 'journal-after-upgrade.db']) {
      rmSync(join(state, name), { force: true });
    }
    // The valve closed first (the case before leaves it open): the open below moves it.
    await runDaemon(async () => {
      const answer = await postCommand(to, 'close-before', {
        device: 'inlet-valve',
        action: 'close',
      });
      expect(answer.status, answer.body).toBeLessThan(300);
      await confirmed('close-before');
    });
    const now = Date.now();
    const left = SqliteJournal.open({ path: journal });
    try {
      left.claim({
        scope: 'scada',
        key: 'open-at-stop',
        fingerprint: 'open-at-stop',
        device: 'inlet-valve',
        action: 'open',
        position: null,
        issuedAt: now,
        issuedAtSource: 'issuer',
        ttlMs: 3_600_000,
        deadline: now + 3_600_000,
        intake: 'https',
        acceptedAt: now,
      });
      await left.durable();
    } finally {
      left.close();
    }
    const device = site.plant.device('inlet-valve');
    const from = device.writeLog.length;

    // The first block, as the operator runs it: while it counts open commands, sluiced is
    // started to settle them, then the block again.
    const counted = run(backup!).open;
    if (counted !== null && counted > 0) {
      await runDaemon(() => confirmed('open-at-stop').then(() => undefined));
      expect(run(backup!).open).toBe(0);
    }
    expect(existsSync(join(state, 'journal-before-upgrade.db'))).toBe(true);

    // The newer Sluice: the command carried out (if it is still open), then a close.
    await runDaemon(async () => {
      await confirmed('open-at-stop');
      const answer = await postCommand(to, 'close-after', {
        device: 'inlet-valve',
        action: 'close',
      });
      expect(answer.status, answer.body).toBeLessThan(300);
      await confirmed('close-after');
    });
    const opened = (): number => device.writeLog.slice(from).filter((w) => w.code === 1).length;
    expect(opened()).toBe(1);

    // The copy put back; a Sluice started on it.
    run(restore!);
    await runDaemon(async () => {
      await confirmed('open-at-stop');
    });
    expect(opened()).toBe(1);
    expect(device.state).toBe('CLOSED');
  }, 120_000);
});
