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
 * Fault campaign (issue 10), the journal: the real `sluiced` process with its journal on a full
 * and a read-only filesystem (a real tmpfs, as root). The network and controller faults, and
 * commands that waited in the daemon's persistent session at the broker past their deadline,
 * are in faults.test.ts, on a site of its own (fault-campaign.ts), so that the two files go to
 * two workers at once. This site has no OPC UA PLC: no scenario here uses one, and each of the
 * daemon's many starts here would load node-opcua. Every verdict is taken from ground truth:
 * the simulators' write logs (per sequence number) and the journal, through `Site.verify()`,
 * and every negative ("nothing was written") is read only after an event that proves the daemon
 * has handled the message (a later command's result, a refusal counted in /metrics).
 */

faultCampaign('fault campaign on the real daemon: the journal', { opcua: false }, (f) => {
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
});
