import { rmSync } from 'node:fs';
import { join } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { beforeAll, describe, expect, it } from 'vitest';
import type { TestClient } from '../helpers/mosquitto.js';
import { DAEMON_CLIENT, GW, faultCampaign, tmpfs } from './fault-campaign.js';
import type { Site } from './site.js';
import {
  assertInvariants,
  metric,
  moving,
  nowIso,
  plantWrites,
  recordOf,
  remount,
  fillFilesystem,
  until,
  writesOf,
} from './support.js';

/**
 * Fault campaign (issue 10), the journal and the broker's persistent session: the real
 * `sluiced` process with its journal on a full and a read-only filesystem (a real tmpfs, as
 * root), and commands that waited in its session at the broker past their deadline. The
 * network and controller faults are in faults.test.ts, on a site of its own (fault-campaign.ts),
 * so that the two files go to two workers at once. Every verdict is taken from ground truth:
 * the simulators' write logs (per sequence number) and the journal, through `Site.verify()`,
 * and every negative ("nothing was written") is read only after an event that proves the daemon
 * has handled the message (a later command's result, a refusal counted in /metrics).
 */

faultCampaign('fault campaign on the real daemon: journal and persistent session', (f) => {
  let site: Site;
  let stateDir: string;
  let watcher: TestClient;
  beforeAll(() => {
    ({ site, stateDir, watcher } = f);
  });
  const { mqttResult, publish, confirmed, startTally, report } = f;

  describe.runIf(tmpfs)('journal on a real tmpfs', () => {
    it('full filesystem: HTTPS 503, no PUBACK, nothing actuated; the withheld MQTT command runs once when space is back', async () => {
      const device = 'mb-valve-1';
      const action = moving(site, device);
      // Start from an empty WAL, so that every commit needs new space on the filesystem.
      const db = new BetterSqlite3(site.journalPath);
      db.pragma('wal_checkpoint(TRUNCATE)');
      db.close();
      const tally = startTally();
      const writes = plantWrites(site);
      const pubacks = site.broker.pubacksFrom(DAEMON_CLIENT);
      const refusedBefore = (await metric(site, 'sluice_journal_unavailable_total')) ?? 0;
      const filler = join(stateDir, 'filler');
      fillFilesystem(filler);
      try {
        const refused = await site.postCommand('full-https', {
          device: 'mb-valve-2',
          action: moving(site, 'mb-valve-2'),
          issuedAt: nowIso(),
        });
        expect(refused.status, refused.body).toBe(503);
        expect(JSON.parse(refused.body)).toMatchObject({ code: 'JOURNAL_UNAVAILABLE' });
        const readyz = await site.https('GET', '/readyz');
        expect(readyz.status).toBe(503);
        expect(readyz.body).toMatch(/SQLITE_FULL/);

        const seen = watcher.messages.length;
        await publish(device, { key: 'full-mqtt', action, issuedAt: nowIso(), ttlMs: 120_000 });
        // Proof that the daemon took the message off the wire and refused it: the refusal is
        // counted, and the broker, left without a PUBACK, publishes the Last Will.
        await until(
          async () =>
            ((await metric(site, 'sluice_journal_unavailable_total')) ?? 0) > refusedBefore + 1
              ? true
              : undefined,
          15_000,
          'the MQTT claim refused',
          50,
        );
        await watcher.waitFor(
          (m) =>
            m.topic === `sluice/${GW}/status` &&
            m.text === 'offline' &&
            watcher.messages.indexOf(m) >= seen,
          15_000,
          'Last Will offline',
        );
        expect(site.broker.pubacksFrom(DAEMON_CLIENT)).toBe(pubacks);
        expect(plantWrites(site)).toBe(writes);

        // A client that waits for the result (Prefer: wait) awaits no barrier at its claim:
        // the claim's commit fails at the end of that moment, unseen. Space comes back while it
        // waits, so a later barrier succeeds; the answer must still not acknowledge the claim
        // that was not kept (group commit, I5).
        const valve2Writes = site.plant.device('mb-valve-2').counters.writesReceived;
        const waiting = site.postCommand(
          'full-wait',
          { device: 'mb-valve-2', action: moving(site, 'mb-valve-2'), issuedAt: nowIso() },
          'wait=3',
        );
        await until(
          () =>
            site.logs.some((l) => l.includes('"key":"full-wait"') && l.includes('command accepted'))
              ? true
              : undefined,
          15_000,
          'the waiting claim taken',
          20,
        );
        rmSync(filler, { force: true });
        const answer = await waiting;
        expect(answer.status, answer.body).toBe(503);
        expect(JSON.parse(answer.body)).toMatchObject({ code: 'JOURNAL_UNAVAILABLE' });
        expect(recordOf(site, 'full-wait')).toBeUndefined();
        // Its valve was never written (the withheld MQTT command, for another valve, may run now).
        expect(site.plant.device('mb-valve-2').counters.writesReceived).toBe(valve2Writes);
      } finally {
        rmSync(filler, { force: true });
      }
      expect(recordOf(site, 'full-https')).toBeUndefined();
      // Space is back: the broker redelivers the withheld message and it runs exactly once.
      const result = await mqttResult('full-mqtt', false, 60_000);
      expect(result).toMatchObject({ state: 'confirmed' });
      expect(writesOf(site, device, result.seq)).toBe(1);
      const record = recordOf(site, 'full-mqtt')!;
      expect(
        site.history(record).filter((e) => e.to === 'accepted' && e.from === null),
      ).toHaveLength(1);
      expect(site.broker.pubacksFrom(DAEMON_CLIENT)).toBeGreaterThan(pubacks);
      // A 503 left nothing behind: the same key now is a new command.
      await confirmed('full-https', {
        device: 'mb-valve-2',
        action: moving(site, 'mb-valve-2'),
        issuedAt: nowIso(),
      });
      assertInvariants(site);
      report(tally, 'journal filesystem full', '503 + no PUBACK, nothing written; then once each');
    }, 120_000);

    it('read-only filesystem: nothing is acknowledged or written; writable again, the withheld command runs once', async () => {
      const tally = startTally();
      // After a crash (SQLite's WAL left behind) and after a clean stop (none left).
      const crash = await readOnlyLife('crash', () => site.kill());
      const clean = await readOnlyLife('clean', async () => {
        await site.stop();
      });
      assertInvariants(site);
      report(
        tally,
        'journal filesystem read-only (after a crash, clean)',
        `after a crash: ${crash}; after a clean stop: ${clean}; then once each`,
      );
    }, 120_000);

    /**
     * One daemon life started on a read-only state directory, with a command queued for it at
     * the broker. Either the daemon starts and refuses (HTTPS 503, no PUBACK) and takes the
     * command once the filesystem is writable again, without a restart (the journal replaces
     * the read-only connection SQLite gave it); or it does not start at all (fail closed,
     * exit 1) and takes the command once started on a writable one. Nothing is written while
     * the journal cannot be.
     */
    async function readOnlyLife(name: string, end: () => Promise<void>): Promise<string> {
      const device = 'mb-valve-1';
      const key = `ro-${name}-mqtt`;
      const action = moving(site, device);
      await end();
      const writes = plantWrites(site);
      const pubacks = site.broker.pubacksFrom(DAEMON_CLIENT);
      // Queued in the daemon's persistent session while it is down.
      await publish(device, { key, action, issuedAt: nowIso(), ttlMs: 120_000 });
      remount(stateDir, 'ro');
      let outcome: string;
      let writable = false;
      try {
        let started = true;
        try {
          await site.startDaemon();
        } catch (error) {
          // Refused to start: the journal (or another part of the state directory) cannot be
          // written. Fail closed, and said so.
          expect(String(error)).toMatch(/sluiced exited \(1\) before it listened/);
          expect(site.logs.some((l) => l.includes('sluiced could not start'))).toBe(true);
          started = false;
        }
        if (started) {
          const refused = await site.postCommand(`ro-${name}-https`, {
            device: 'mb-valve-2',
            action: moving(site, 'mb-valve-2'),
            issuedAt: nowIso(),
          });
          expect(refused.status, refused.body).toBe(503);
          expect(JSON.parse(refused.body)).toMatchObject({ code: 'JOURNAL_UNAVAILABLE' });
          // Proof that the queued MQTT command was taken off the wire and refused.
          await until(
            async () =>
              ((await metric(site, 'sluice_journal_unavailable_total')) ?? 0) >= 2
                ? true
                : undefined,
            15_000,
            'the queued MQTT command refused',
            50,
          );
          outcome = '503 and no PUBACK, then taken without a restart';
        } else {
          outcome = 'did not start (exit 1), then taken after a start';
        }
        expect(site.broker.pubacksFrom(DAEMON_CLIENT)).toBe(pubacks);
        expect(plantWrites(site)).toBe(writes);
        remount(stateDir, 'rw');
        writable = true;
        if (!started) await site.startDaemon();
      } finally {
        if (!writable) remount(stateDir, 'rw');
      }
      const result = await mqttResult(key, false, 60_000);
      expect(result).toMatchObject({ state: 'confirmed' });
      expect(writesOf(site, device, result.seq)).toBe(1);
      expect(recordOf(site, `ro-${name}-https`)).toBeUndefined();
      return outcome;
    }
  });

  it('commands that waited in the persistent session past their deadline are never written (I3)', async () => {
    const tally = startTally();
    const before = plantWrites(site);
    await site.stop();
    const issuedAt = nowIso();
    const stale = [
      { device: 'mb-valve-1', key: 'stale-mb', ttlMs: 1_000 },
      { device: 'ua-valve', key: 'stale-ua', ttlMs: 1_000 },
      { device: 'mb-valve-2', key: 'stale-mb2', ttlMs: 1_000 },
    ];
    for (const s of stale) {
      await publish(s.device, {
        key: s.key,
        action: moving(site, s.device),
        issuedAt,
        ttlMs: s.ttlMs,
      });
    }
    // MQTT 5 message expiry instead of issuedAt: the broker drops it before the gateway is back.
    await publish(
      'mb-valve-1',
      { key: 'expired-mb', action: moving(site, 'mb-valve-1') },
      { properties: { messageExpiryInterval: 1 } },
    );
    await until(
      () => (Date.now() > Date.parse(issuedAt) + 1_500 ? true : undefined),
      5_000,
      'the deadlines to pass',
      50,
    );
    // Markers behind them on the same topics: once their results are out, the daemon has
    // handled every message queued before them.
    for (const device of ['mb-valve-1', 'ua-valve', 'mb-valve-2']) {
      await publish(device, {
        key: `fresh-${device}`,
        action: moving(site, device),
        issuedAt: nowIso(),
        ttlMs: 60_000,
      });
    }
    await site.startDaemon();
    for (const device of ['mb-valve-1', 'ua-valve', 'mb-valve-2']) {
      const marker = await mqttResult(`fresh-${device}`);
      expect(marker, JSON.stringify(marker)).toMatchObject({ state: 'confirmed' });
    }
    for (const s of stale) {
      const result = await mqttResult(s.key);
      expect(result).toMatchObject({ state: 'rejected', code: 'STALE_COMMAND', seq: null });
      expect(recordOf(site, s.key)).toMatchObject({
        state: 'rejected',
        seq: null,
        dispatchedAt: null,
      });
    }
    expect(recordOf(site, 'expired-mb')).toBeUndefined();
    // Ground truth: the only writes since the daemon stopped are the three markers'.
    expect(plantWrites(site) - before).toBe(3);
    for (const device of ['mb-valve-1', 'ua-valve', 'mb-valve-2']) {
      const marker = recordOf(site, `fresh-${device}`)!;
      expect(writesOf(site, device, marker.seq)).toBe(1);
    }
    assertInvariants(site);
    report(
      tally,
      'stale commands queued at the broker (I3)',
      '3 STALE_COMMAND unwritten, 1 expired at the broker, 3 markers once',
    );
  }, 90_000);
});
