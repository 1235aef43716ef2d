import fs from 'node:fs';
import BetterSqlite3 from 'better-sqlite3';
import { join } from 'node:path';
import { pino } from 'pino';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { Daemon } from '../../src/daemon/daemon.js';
import { sha256 } from '../../src/intake/identities.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import type { Plant } from '../../simulators/plant.js';
import { startModbusPlant } from '../helpers/daemon-site.js';
import { tempDir } from '../helpers/fixtures.js';
import { httpsRequest, loopbackCertificate } from '../helpers/loopback-https.js';
import {
  TestClient,
  mosquittoAvailable,
  startMosquitto,
  until,
  type Mosquitto,
} from '../helpers/mosquitto.js';
import { inventoryFor } from '../helpers/plant-inventory.js';
import { failFdatasync, type FailingFdatasync } from '../helpers/failing-fdatasync.js';

/**
 * A command's outcome whose journal sync fails is published once a later sync succeeds. The
 * settlement stays in the journal (group commit counts it unsynced and the next barrier carries
 * it to disk), and every replay returns it; but its announcement was dropped for good, so the
 * result topic never carried the outcome (SPEC §5: every terminal outcome). Real daemon (in this
 * process), sluice-sim, Mosquitto, journal file; the failed fdatasync (EIO) is a double of
 * fs.fdatasync for one call: no part here can make a disk fail a flush on demand.
 */

const real = mosquittoAvailable();
const GW = 'syncfail';
let plant: Plant;
let broker: Mosquitto;
let daemon: Daemon;
let journalPath: string;
let cleanup: () => void;
let cert: string;
let stateDir: string;

beforeAll(async () => {
  if (!real) return;
  let dir: string;
  ({ dir, cleanup } = tempDir('sluice-sync-fail-'));
  plant = await startModbusPlant({ 'inlet-valve': { profile: 'valve', base: 0, travelMs: 600 } });
  broker = await startMosquitto();
  cert = await loopbackCertificate(dir);
  const inventory = inventoryFor(plant);
  const configPath = join(dir, 'sluice.yaml');
  fs.writeFileSync(
    configPath,
    stringify({
      gatewayId: GW,
      stateDir: 'state',
      https: { host: '127.0.0.1', port: 0, certFile: 'cert.pem', keyFile: 'key.pem' },
      mqtt: { url: broker.url, identity: 'scada', clientId: 'sluice-sync-fail' },
      identities: { scada: { tokenSha256: sha256('t').toString('hex'), devices: ['*'] } },
      plcs: inventory.plcs,
      devices: inventory.devices,
    }),
  );
  stateDir = join(dir, 'state');
  journalPath = join(stateDir, 'journal.db');
  daemon = await Daemon.start(loadConfig(configPath, { env: {} }), {
    logger: pino({ level: 'silent' }),
  });
}, 60_000);

afterAll(async () => {
  if (!real) return;
  await daemon.stop();
  await broker.close();
  await plant.stop();
  cleanup();
});

describe.runIf(real)('an outcome whose journal sync fails', () => {
  it('is published on the result topic once a later sync succeeds', async () => {
    const valve = plant.device('inlet-valve');
    const client = await TestClient.connect(broker.url);
    let disk: FailingFdatasync | undefined;
    try {
      await client.subscribe(`sluice/${GW}/result/#`);
      await until(
        () => (daemon.readiness().checks.mqtt?.ok === true ? true : undefined),
        20_000,
        'the MQTT intake connected',
      );
      await client.publish(`sluice/${GW}/cmd/inlet-valve`, {
        key: 'k-sync',
        action: 'open',
        issuedAt: new Date().toISOString(),
      });
      // The write has gone out (its dispatch barrier is behind): the next barrier is the
      // settlement's, and its fdatasync fails once.
      await until(() => (valve.counters.writesReceived === 1 ? true : undefined), 10_000, 'write');
      disk = failFdatasync(1);

      const result = await client.waitFor(
        (m) => m.topic === `sluice/${GW}/result/inlet-valve` && m.json().key === 'k-sync',
        10_000,
        'the result',
      );
      expect(result.json()).toMatchObject({ state: 'confirmed', code: 'OK', replayed: false });
      // The failed sync was the settlement's: the command was settled before it.
      expect(disk.failedAt).not.toBeNull();
      const journal = SqliteJournal.open({ path: journalPath, readonly: true });
      try {
        const record = journal.findByKey('k-sync')[0]!;
        expect(record.state).toBe('confirmed');
        expect(record.settledAt!).toBeLessThanOrEqual(disk.failedAt!);
      } finally {
        journal.close();
      }
      expect(valve.counters.writesReceived).toBe(1);
    } finally {
      disk?.restore();
      await client.end();
    }
  }, 60_000);

  it('after a failed sync nothing is acknowledged or written until the journal has written its log anew; then commands run', async () => {
    const valve = plant.device('inlet-valve');
    const journal = (daemon as unknown as { journal: SqliteJournal }).journal;
    // respond-async: the answer is the claim's own barrier; wait=10: the command's outcome.
    const post = (key: string, action: string, prefer = 'respond-async') =>
      httpsRequest(
        { port: daemon.https!.port, ca: cert, token: 't' },
        'POST',
        '/v1/commands',
        { 'idempotency-key': key, prefer },
        { device: 'inlet-valve', action, issuedAt: new Date().toISOString() },
      );
    // Settled and published by the test before (its recovery done): the journal is whole.
    await until(() => (journal.syncPending ? undefined : true), 10_000, 'an idle journal');
    const recoveriesBefore = journal.recoveries;
    const writesBefore = valve.counters.writesReceived;
    // The double fails the next fdatasync (EIO) and notes when the one after it began: the
    // journal's recovery (while it is failed no barrier runs an fdatasync of its own).
    const disk = failFdatasync(1);
    try {
      const refused = await post('k-eio-1', 'close');
      expect(disk.failedAt).not.toBeNull();
      if (refused.status === 202) {
        // A barrier of the daemon's own (a background write: a note, the retention sweep) met
        // the failing fdatasync before the claim's: the claim then waited for the journal's
        // recovery and was acknowledged only after it (CI on 2026-12-07). Acknowledged before
        // it, the failure would have been ignored (I5).
        expect(journal.recoveries).toBe(recoveriesBefore + 1);
      } else {
        expect(refused.status).toBe(503);
        expect(refused.json().code).toBe('JOURNAL_UNAVAILABLE');
        // A later fdatasync would succeed, but proves nothing: the next command is answered
        // only once the journal has written its log anew and synced it, and nothing is
        // written before.
        expect(valve.counters.writesReceived).toBe(writesBefore);
      }
      const again = await post('k-eio-2', 'close');
      expect(journal.recoveries).toBe(recoveriesBefore + 1);
      expect(again.status).toBe(202);
      expect(disk.resumedAt).not.toBeNull();
      const accepted = await post('k-eio-after', 'close', 'wait=10');
      expect(accepted.status).toBe(200);
      expect(accepted.json()).toMatchObject({ state: 'confirmed', code: 'OK' });
    } finally {
      disk.restore();
    }
    // Ground truth: no write reached the controller between the failure and the recovery.
    const writes = valve.writeLog.filter((w) => w.receivedAt >= disk.failedAt!);
    expect(writes.length).toBeGreaterThan(0);
    for (const w of writes) expect(w.receivedAt).toBeGreaterThanOrEqual(disk.resumedAt!);
    // Every commit is in the log as written anew: a copy of the journal's files without the
    // wal-index is recovered by SQLite from the WAL's checksum chain, the settlement of the
    // test before and the command after the recovery both in it.
    const copyDir = fs.mkdtempSync(join(stateDir, 'copy-'));
    const copy = join(copyDir, 'journal.db');
    fs.copyFileSync(journalPath, copy);
    fs.copyFileSync(`${journalPath}-wal`, `${copy}-wal`);
    const db = new BetterSqlite3(copy, { readonly: true });
    try {
      const state = (key: string) =>
        (db.prepare('SELECT state FROM commands WHERE key = ?').get(key) as { state: string })
          .state;
      expect(state('k-sync')).toBe('confirmed');
      expect(state('k-eio-after')).toBe('confirmed');
    } finally {
      db.close();
    }
  }, 60_000);

  it('counts an MQTT command whose claim could not be made durable once, as journal_unavailable, not also as new', async () => {
    const journal = (daemon as unknown as { journal: SqliteJournal }).journal;
    await until(() => (journal.syncPending ? undefined : true), 10_000, 'an idle journal');
    const topic = `sluice/${GW}/cmd/inlet-valve`;
    const messages = async (): Promise<Record<string, number>> => {
      const text = await daemon.metrics.registry.metrics();
      const counts: Record<string, number> = {};
      for (const m of text.matchAll(/^sluice_mqtt_messages_total\{outcome="(\w+)"\} (\d+)$/gm)) {
        counts[m[1]!] = Number(m[2]);
      }
      return counts;
    };
    const total = (counts: Record<string, number>): number =>
      Object.values(counts).reduce((a, b) => a + b, 0);
    const before = await messages();
    const deliveredBefore = broker.deliveriesTo('sluice-sync-fail', topic).length;
    const client = await TestClient.connect(broker.url);
    const disk = failFdatasync();
    try {
      await until(
        () => (daemon.readiness().checks.mqtt?.ok === true ? true : undefined),
        20_000,
        'the MQTT intake connected',
      );
      // No close: the valve is closed, a no-op that writes nothing whatever happens.
      await client.publish(topic, {
        key: 'k-mqtt-eio',
        action: 'close',
        issuedAt: new Date().toISOString(),
      });
      const during = await until(
        async () => {
          const counts = await messages();
          return (counts.journal_unavailable ?? 0) > (before.journal_unavailable ?? 0)
            ? counts
            : undefined;
        },
        10_000,
        'the message refused at its barrier',
      );
      expect(disk.failures).toBeGreaterThan(0);
      // Ground truth: the broker delivered it once so far; it was not acknowledged, and is
      // counted once, as such.
      expect(broker.deliveriesTo('sluice-sync-fail', topic).length - deliveredBefore).toBe(1);
      expect(total(during) - total(before)).toBe(1);
      expect((during.new ?? 0) - (before.new ?? 0)).toBe(0);
    } finally {
      disk.restore();
      await client.end();
    }
    // The broker redelivers it once the journal has recovered: every delivery one outcome.
    await until(
      async () => {
        const delivered = broker.deliveriesTo('sluice-sync-fail', topic).length - deliveredBefore;
        return delivered >= 2 && total(await messages()) - total(before) === delivered
          ? true
          : undefined;
      },
      20_000,
      'the redelivery handled and counted',
    );
  }, 60_000);
});
