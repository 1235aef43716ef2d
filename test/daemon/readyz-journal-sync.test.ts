import fs from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { Daemon } from '../../src/daemon/daemon.js';
import { sha256 } from '../../src/intake/identities.js';
import type { Plant } from '../../simulators/plant.js';
import { startModbusPlant } from '../helpers/daemon-site.js';
import { tempDir } from '../helpers/fixtures.js';
import { httpsRequest, loopbackCertificate } from '../helpers/loopback-https.js';
import { until } from '../helpers/mosquitto.js';
import { inventoryFor } from '../helpers/plant-inventory.js';
import { failFdatasync } from '../helpers/failing-fdatasync.js';

/**
 * /readyz while the journal's fdatasync fails. After a failed fdatasync every barrier fails
 * until the journal has written its log anew (docs/spec-notes.md, journal): every intake
 * refuses (503 JOURNAL_UNAVAILABLE), and /readyz must say so — its journal check made a write,
 * which reaches the page cache and succeeds, and called the journal "writable" while every
 * command was refused. Real daemon (in this process), sluice-sim, journal file; the failing
 * disk is a double of fs.fdatasync (EIO on every call until it is taken away): no part here
 * can make a disk fail its flushes on demand.
 */

let plant: Plant;
let daemon: Daemon;
let cert: string;
let cleanup: () => void;

beforeAll(async () => {
  let dir: string;
  ({ dir, cleanup } = tempDir('sluice-readyz-sync-'));
  plant = await startModbusPlant({ 'inlet-valve': { profile: 'valve', base: 0, travelMs: 300 } });
  cert = await loopbackCertificate(dir);
  const inventory = inventoryFor(plant);
  const configPath = join(dir, 'sluice.yaml');
  fs.writeFileSync(
    configPath,
    stringify({
      gatewayId: 'readyz-sync',
      stateDir: 'state',
      https: { host: '127.0.0.1', port: 0, certFile: 'cert.pem', keyFile: 'key.pem' },
      identities: { scada: { tokenSha256: sha256('t').toString('hex'), devices: ['*'] } },
      plcs: inventory.plcs,
      devices: inventory.devices,
      admin: { enabled: false },
    }),
  );
  daemon = await Daemon.start(loadConfig(configPath, { env: {} }), {
    logger: pino({ level: 'silent' }),
  });
}, 60_000);

afterAll(async () => {
  await daemon.stop();
  await plant.stop();
  cleanup();
});

describe('/readyz while the journal cannot sync', () => {
  it('is 503 naming the failed sync while commands are refused, and 200 again once the journal has recovered', async () => {
    const target = { port: daemon.https!.port, ca: cert, token: 't' };
    const readyz = async (): Promise<{
      status: number;
      journal: { ok: boolean; detail: string };
    }> => {
      const answer = await httpsRequest(target, 'GET', '/readyz');
      const checks = answer.json().checks as Record<string, { ok: boolean; detail: string }>;
      return { status: answer.status, journal: checks.journal! };
    };
    await until(
      async () => ((await readyz()).status === 200 ? true : undefined),
      20_000,
      'ready before the failure',
    );
    const valve = plant.device('inlet-valve');
    const failingFrom = Date.now();
    let failingUntil = Number.POSITIVE_INFINITY;

    const disk = failFdatasync();
    try {
      const refused = await httpsRequest(
        target,
        'POST',
        '/v1/commands',
        { 'idempotency-key': 'k-eio', prefer: 'respond-async' },
        { device: 'inlet-valve', action: 'open', issuedAt: new Date().toISOString() },
      );
      expect(refused.status).toBe(503);
      expect(refused.json().code).toBe('JOURNAL_UNAVAILABLE');
      expect(disk.failures).toBeGreaterThan(0);

      // Commands are refused: /readyz says so, and why.
      const down = await readyz();
      expect(down.status).toBe(503);
      expect(down.journal.ok).toBe(false);
      expect(down.journal.detail).toMatch(/sync.*EIO/);
      expect(daemon.readiness().ready).toBe(false);
      // Still refused later: the journal's recovery fails with the disk (at least one attempt
      // past the first failure), and readiness stays down with it.
      await until(() => (disk.failures >= 2 ? true : undefined), 10_000, 'a recovery attempt');
      expect((await readyz()).status).toBe(503);
    } finally {
      disk.restore();
      failingUntil = Date.now();
    }
    // The disk flushes again: the journal recovers and /readyz is 200 again, the probe
    // itself asking for the recovery when nothing else does.
    const up = await until(
      async () => {
        const r = await readyz();
        return r.status === 200 ? r : undefined;
      },
      10_000,
      'ready again after the recovery',
    );
    expect(up.journal).toEqual({ ok: true, detail: 'writable' });
    // Ground truth: nothing reached the controller while the journal could not sync.
    expect(
      valve.writeLog.filter((w) => w.receivedAt >= failingFrom && w.receivedAt < failingUntil),
    ).toEqual([]);
  }, 60_000);
});
