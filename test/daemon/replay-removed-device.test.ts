import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { Daemon } from '../../src/daemon/daemon.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import {
  editSite,
  postCommand,
  startTokenSite,
  stopSite,
  type TokenSite,
} from '../helpers/daemon-site.js';
import type { HttpsAnswer } from '../helpers/loopback-https.js';
import { until } from '../helpers/mosquitto.js';

/**
 * A client retries a command after the gateway was restarted with its device taken out of the
 * configuration (a valve decommissioned, a site file edited): the retry of a key the journal
 * holds gets that command's outcome, as every replay does (SPEC §2: a terminal outcome is
 * final), where it was refused 404 UNKNOWN_DEVICE — an answer its client takes for "never
 * accepted". A real daemon against sluice-sim, its journal read after; the simulator's write log
 * is the ground truth that nothing was written again.
 */

const TOKEN = 'removed-device-token';
const SCOPE = 'scada';

let site: TokenSite;
let daemon: Daemon | null = null;

function post(key: string, body: unknown): Promise<HttpsAnswer> {
  return postCommand({ port: daemon!.https!.port, ca: site.cert, token: TOKEN }, key, body);
}

async function startDaemon(): Promise<void> {
  daemon = await Daemon.start(loadConfig(site.configPath, { env: {} }), {
    logger: pino({ level: 'silent' }),
    monitorIntervalMs: 200,
  });
  await until(
    () => (daemon!.readiness().ready ? true : undefined),
    20_000,
    'the daemon ready (its valves read)',
  );
}

beforeAll(async () => {
  site = await startTokenSite(
    'sluice-removed-device-',
    {
      v1: { profile: 'valve', base: 0, travelMs: 100 },
      v2: { profile: 'valve', base: 100, travelMs: 100 },
    },
    { gatewayId: 'removed', token: TOKEN, scope: SCOPE },
  );
  await startDaemon();
}, 60_000);

afterAll(() => stopSite(daemon, site), 30_000);

describe('a retry after its device left the configuration', () => {
  it('is answered with the command it repeats, written once; a new key for the device is refused', async () => {
    const issuedAt = new Date().toISOString();
    const body = { device: 'v1', action: 'open', issuedAt, ttlMs: 600_000 };
    const first = await post('retired-open', body);
    expect(first.status, first.body).toBe(200);
    expect(first.json()).toMatchObject({ state: 'confirmed', code: 'OK', replayed: false });
    const seq = first.json().seq as number;
    expect(site.plant.device('v1').writesWithSeq(seq)).toBe(1);

    // The gateway is restarted with v1 taken out of its configuration.
    await daemon!.stop();
    daemon = null;
    editSite(site.configPath, (file) => {
      delete file.devices.v1;
    });
    await startDaemon();
    expect(daemon!.pipeline.device('v1')).toBeUndefined();

    const retry = await post('retired-open', body);
    expect(retry.status, retry.body).toBe(200);
    expect(retry.json()).toMatchObject({
      key: 'retired-open',
      state: 'confirmed',
      code: 'OK',
      seq,
    });
    // A replay (docs/http-api.md): the stored body, marked by its header.
    expect(retry.headers['idempotent-replayed']).toBe('true');
    expect(retry.body).toBe(first.body);
    // The same key with another body is a reuse, as for any journaled key.
    const reuse = await post('retired-open', { ...body, action: 'close' });
    expect(reuse.status, reuse.body).toBe(422);
    // A new key for the device is refused, and nothing of it is journaled.
    const fresh = await post('retired-close', { device: 'v1', action: 'close' });
    expect(fresh.status, fresh.body).toBe(404);
    expect(fresh.json()).toMatchObject({ code: 'UNKNOWN_DEVICE' });

    // Ground truth: the controller took the open once, and nothing after it.
    expect(site.plant.device('v1').writesWithSeq(seq)).toBe(1);
    expect(site.plant.device('v1').writeLog).toHaveLength(1);
    await daemon!.stop();
    daemon = null;
    const journal = SqliteJournal.open({
      path: join(site.dir, 'state', 'journal.db'),
      readonly: true,
    });
    try {
      expect(journal.get({ scope: SCOPE, key: 'retired-close' })).toBeUndefined();
      const details = journal.history({ scope: SCOPE, key: 'retired-open' }).map((e) => e.detail);
      expect(details.some((d) => /^duplicate/.test(d))).toBe(true);
      expect(details.some((d) => /key reuse refused/.test(d))).toBe(true);
    } finally {
      journal.close();
    }
  }, 60_000);
});
