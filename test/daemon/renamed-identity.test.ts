import { readFileSync } from 'node:fs';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { Daemon } from '../../src/daemon/daemon.js';
import {
  postCommand,
  renameSiteEntry,
  startTokenSite,
  stopSite,
  type TokenSite,
} from '../helpers/daemon-site.js';
import type { HttpsAnswer } from '../helpers/loopback-https.js';
import { until } from '../helpers/mosquitto.js';

/**
 * An identity renamed in the configuration across a restart, its token kept
 * (docs/configuration.md, identities): keys are scoped by the identity's name, so its clients'
 * retries of keys sent before the restart are new commands under the new name (shown here on
 * the real daemon and sluice-sim: the retry writes to the valve again). The daemon cannot tell a
 * rename from a token handed to another client and does not merge the scopes; it says so at
 * start, naming both identities, where it said nothing.
 */

const TOKEN = 'renamed-identity-token';

let site: TokenSite;
let daemon: Daemon | null = null;
let lines: Record<string, unknown>[] = [];

function post(key: string, body: unknown): Promise<HttpsAnswer> {
  return postCommand({ port: daemon!.https!.port, ca: site.cert, token: TOKEN }, key, body, {
    prefer: 'wait=10',
  });
}

async function startDaemon(): Promise<void> {
  lines = [];
  const stream = {
    write(line: string): void {
      lines.push(JSON.parse(line) as Record<string, unknown>);
    },
  };
  daemon = await Daemon.start(loadConfig(site.configPath, { env: {} }), {
    logger: pino({ level: 'info' }, stream),
    monitorIntervalMs: 200,
  });
  await until(() => (daemon!.readiness().ready ? true : undefined), 20_000, 'ready');
}

function renameIdentity(from: string, to: string): void {
  renameSiteEntry(site.configPath, 'identities', from, to);
}

function renameWarnings(): string[] {
  return lines
    .filter((l) => l.level === 40 && /is now/.test(String(l.msg)))
    .map((l) => String(l.msg));
}

beforeAll(async () => {
  site = await startTokenSite(
    'sluice-renamed-identity-',
    { v1: { profile: 'valve', base: 0, travelMs: 100 } },
    { gatewayId: 'renamed-identity', token: TOKEN, scope: 'scada' },
  );
}, 60_000);

afterAll(() => stopSite(daemon, site), 30_000);

describe('an identity renamed across a restart, its token kept', () => {
  it('is named at start with its former name and what a retry would do', async () => {
    await startDaemon();
    const issuedAt = new Date().toISOString();
    const open = { device: 'v1', action: 'open', issuedAt, ttlMs: 600_000 };
    const first = await post('open-1', open);
    expect(first.json()).toMatchObject({ state: 'confirmed' });
    const close = await post('close-1', { device: 'v1', action: 'close' });
    expect(close.json()).toMatchObject({ state: 'confirmed' });
    await daemon!.stop();
    daemon = null;
    expect(renameWarnings()).toEqual([]);

    renameIdentity('scada', 'scada-line2');
    await startDaemon();
    const warnings = renameWarnings();
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toContain('identity "scada" is now "scada-line2" (the same token ');
    expect(warnings[0]).toContain('is a new command and may actuate again');
    expect(warnings[0]).toContain('Give the identity back its name "scada"');
    // Nothing secret in it: neither the token nor its configured digest.
    const siteFile = readFileSync(site.configPath, 'utf8');
    const digest = /tokenSha256: (\w+)/.exec(siteFile)![1]!;
    expect(JSON.stringify(lines)).not.toContain(digest);
    expect(JSON.stringify(lines)).not.toContain(TOKEN);

    // What it warns of, on the valve (the behaviour, not a fix): the client's retry of open-1
    // under the new name is a new command, and the valve is opened a second time.
    const retry = await post('open-1', open);
    expect(retry.json()).toMatchObject({ state: 'confirmed', replayed: false });
    expect(site.plant.device('v1').writeLog.map((w) => w.code)).toEqual([1, 2, 1]);
    await daemon!.stop();
    daemon = null;

    // Said at the start that follows the rename; the next start knows the new name.
    await startDaemon();
    expect(renameWarnings()).toEqual([]);
  }, 90_000);
});
