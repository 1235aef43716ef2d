import fs from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { isTerminal } from '../../src/core/command.js';
import { Daemon } from '../../src/daemon/daemon.js';
import { sha256 } from '../../src/intake/identities.js';
import type { Plant } from '../../simulators/plant.js';
import { startModbusPlant } from '../helpers/daemon-site.js';
import { tempDir } from '../helpers/fixtures.js';
import { httpsRequest, loopbackCertificate } from '../helpers/loopback-https.js';
import { until } from '../helpers/mosquitto.js';
import { inventoryFor } from '../helpers/plant-inventory.js';

/**
 * The journal's state folder deleted while the daemon runs. SQLite goes on writing, and
 * fdatasync syncing, the files it opened: commands were acknowledged (200) and written to the
 * valve from a journal the next start would not find. Now every barrier fails once the journal's
 * path no longer names its files: 503 JOURNAL_UNAVAILABLE, /readyz says why, and nothing claimed
 * after the removal reaches the controller. Real daemon (in this process), sluice-sim, a real
 * journal folder removed; ground truth: the valve's write log.
 */

let plant: Plant;
let daemon: Daemon;
let cert: string;
let dir: string;
let cleanup: () => void;

beforeAll(async () => {
  ({ dir, cleanup } = tempDir('sluice-journal-removed-'));
  plant = await startModbusPlant({ 'inlet-valve': { profile: 'valve', base: 0, travelMs: 0 } });
  cert = await loopbackCertificate(dir);
  const inventory = inventoryFor(plant);
  const configPath = join(dir, 'sluice.yaml');
  fs.writeFileSync(
    configPath,
    stringify({
      gatewayId: 'journal-removed',
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

describe('the journal removed while the daemon runs', () => {
  it('refuses every command from then on (503), says why in /readyz, and writes nothing', async () => {
    const target = { port: daemon.https!.port, ca: cert, token: 't' };
    const post = (key: string, action: string) =>
      httpsRequest(
        target,
        'POST',
        '/v1/commands',
        { 'idempotency-key': key },
        { device: 'inlet-valve', action, issuedAt: new Date().toISOString() },
      );
    const valve = plant.device('inlet-valve');
    const before = await post('before', 'open');
    expect(before.status, before.body).toBe(200);
    expect(valve.writeLog).toHaveLength(1);

    fs.rmSync(join(dir, 'state'), { recursive: true });

    const after = await post('after', 'close');
    expect(after.status, after.body).toBe(503);
    expect(after.json()).toMatchObject({ code: 'JOURNAL_UNAVAILABLE' });
    const readyz = await httpsRequest(target, 'GET', '/readyz');
    expect(readyz.status).toBe(503);
    const checks = readyz.json().checks as Record<string, { ok: boolean; detail: string }>;
    expect(checks.journal).toMatchObject({ ok: false });
    expect(checks.journal!.detail).toMatch(/removed or replaced/);

    // The refused command was claimed in the removed files: the pipeline takes it up there, and
    // it ends without a write (each of its barriers fails). Once it is terminal, the valve's
    // log is the proof.
    const ref = { scope: 'scada', key: 'after' };
    const ended = await until(
      () => {
        const record = daemon.pipeline.get(ref);
        return record !== undefined && isTerminal(record.state) ? record : undefined;
      },
      30_000,
      'the refused command terminal',
    );
    expect(ended.state).not.toBe('confirmed');
    expect(valve.writeLog).toHaveLength(1);
    expect(valve.state).toBe('OPEN');
  }, 60_000);
});
