import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../src/config/config.js';
import { Daemon } from '../../src/daemon/daemon.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import {
  postCommand,
  renameSiteEntry,
  startTokenSite,
  stopSite,
  type TokenSite,
} from '../helpers/daemon-site.js';
import { httpsRequest, type HttpsAnswer } from '../helpers/loopback-https.js';
import { until } from '../helpers/mosquitto.js';

/**
 * A device renamed in the configuration across a restart while the journal holds an open
 * command of its former id (docs/configuration.md): the same valve, the same PLC registers,
 * another id. The start refuses that configuration, naming both ids and the command, where it
 * ran the new id beside the former id's orphaned command: that command never settled, and the
 * new id wrote to the valve knowing nothing of the write it had sent. A real daemon against
 * sluice-sim (its write log is the ground truth), and its SQLite journal.
 */

const TOKEN = 'renamed-device-token';
const SCOPE = 'scada';

let site: TokenSite;
let daemon: Daemon | null = null;

function post(key: string, body: unknown): Promise<HttpsAnswer> {
  return postCommand({ port: daemon!.https!.port, ca: site.cert, token: TOKEN }, key, body, {
    prefer: 'wait=0',
  });
}

async function startDaemon(): Promise<Daemon> {
  const started = await Daemon.start(loadConfig(site.configPath, { env: {} }), {
    logger: pino({ level: 'silent' }),
    monitorIntervalMs: 200,
    // The stop leaves the held command open in the journal, as a crash would.
    shutdownBoundMs: 0,
  });
  daemon = started;
  return started;
}

function renameDevice(from: string, to: string): void {
  renameSiteEntry(site.configPath, 'devices', from, to);
}

function journaled(key: string): string | undefined {
  const journal = SqliteJournal.open({
    path: join(site.dir, 'state', 'journal.db'),
    readonly: true,
  });
  try {
    return journal.get({ scope: SCOPE, key })?.state;
  } finally {
    journal.close();
  }
}

beforeAll(async () => {
  site = await startTokenSite(
    'sluice-renamed-device-',
    { v1: { profile: 'valve', base: 0, travelMs: 100 } },
    { gatewayId: 'renamed', token: TOKEN, scope: SCOPE },
  );
}, 60_000);

afterAll(() => stopSite(daemon, site), 30_000);

describe('a device renamed while the journal holds an open command of its former id', () => {
  it('is refused at start, naming both ids; started under its former id, the command settles, and the rename then starts', async () => {
    await startDaemon();
    await until(() => (daemon!.readiness().ready ? true : undefined), 20_000, 'ready');
    const valve = site.plant.device('v1');
    // The controller takes no command for now: the write reaches it and waits there.
    valve.setFault({ kind: 'hold' });
    const body = {
      device: 'v1',
      action: 'open',
      issuedAt: new Date().toISOString(),
      ttlMs: 600_000,
    };
    const accepted = await post('open-1', body);
    expect(accepted.status, accepted.body).toBe(202);
    await until(
      () => (valve.writeLog.length === 1 ? true : undefined),
      10_000,
      'the write at the valve',
    );
    await daemon!.stop();
    daemon = null;
    expect(journaled('open-1')).toBe('dispatched');

    // The operator renames the valve: the same PLC and registers, another id.
    renameDevice('v1', 'v1-new');
    const refused = await startDaemon().then(
      () => null,
      (error: unknown) => error,
    );
    expect(refused).toBeInstanceOf(ConfigError);
    const message = (refused as ConfigError).message;
    expect(message).toContain('devices.v1-new: has the address of device "v1"');
    expect(message).toContain('open-1 (identity scada, dispatched)');
    expect(message).toContain('sluicectl list --device v1');
    daemon = null;
    // Nothing else reached the valve, and the command is still open for its recovery.
    expect(valve.writeLog).toHaveLength(1);
    expect(journaled('open-1')).toBe('dispatched');

    // As the message says: the former id back, the command settles by reading the valve.
    renameDevice('v1-new', 'v1');
    valve.clearFault('hold');
    await startDaemon();
    await until(
      () => (journaled('open-1') === 'confirmed' ? true : undefined),
      20_000,
      'open-1 settled by recovery',
    );
    await daemon!.stop();
    daemon = null;

    // With nothing open of v1, the rename starts, and the valve answers to its new id.
    renameDevice('v1', 'v1-new');
    await startDaemon();
    await until(() => (daemon!.readiness().ready ? true : undefined), 20_000, 'ready');
    const close = await httpsRequest(
      { port: daemon!.https!.port, ca: site.cert, token: TOKEN },
      'POST',
      '/v1/commands',
      { 'idempotency-key': 'close-1', prefer: 'wait=10' },
      { device: 'v1-new', action: 'close' },
    );
    expect(close.status, close.body).toBe(200);
    expect(close.json()).toMatchObject({ state: 'confirmed' });
    // Ground truth: one write of the open (taken once its hold ended), one of the close.
    expect(valve.writeLog.map((w) => w.code)).toEqual([1, 2]);
  }, 90_000);
});
