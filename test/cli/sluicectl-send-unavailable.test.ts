import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { parse, stringify } from 'yaml';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { Daemon } from '../../src/daemon/daemon.js';
import { startTokenSite, stopSite, type SiteFile, type TokenSite } from '../helpers/daemon-site.js';
import { failFdatasync, type FailingFdatasync } from '../helpers/failing-fdatasync.js';
import { httpsRequest } from '../helpers/loopback-https.js';
import { until } from '../helpers/mosquitto.js';
import { retryArgs, sluicectlInProcess, untilFirstReadbacks, type CliRun } from './helpers.js';

/**
 * `sluicectl send` answered `503 JOURNAL_UNAVAILABLE` for a command the intake holds: the
 * command is written and confirmed by readback, the journal's sync of that settlement fails (a
 * settlement is announced only once on disk), and at the end of the run's wait the intake
 * cannot answer for it; its problem carries the command's key and state (docs/http-api.md). Sent without --key, only the run knows the key: it must not
 * say "refused" without it, which sends the operator to send the command again under a new key,
 * a second actuation. It says NOT SETTLED with the key, `sluicectl show KEY` and the line that
 * sends the very same command again; that line, run once the journal is back, is answered with
 * the command's result, the valve not written again. The real daemon (its HTTPS intake and
 * journal) and sluice-sim, whose write counter is the ground truth. One double:
 * fs.fdatasync failing with EIO (test/helpers/failing-fdatasync.ts), a disk's write error no
 * real part here produces on demand.
 */

const TOKEN = 'cli-unavailable-token';

let site: TokenSite;
let daemon: Daemon | null = null;
let port: number;
let cliConfig: string;
let tokenFile: string;

beforeAll(async () => {
  site = await startTokenSite(
    'sluice-ctl-unavailable-',
    // Travel long enough to fail the journal's syncs between the write and the readback, and
    // short enough to be confirmed within the run's wait.
    { 'slow-valve': { profile: 'valve', base: 0, travelMs: 1_000 } },
    { gatewayId: 'unavailable', token: TOKEN, scope: 'plant' },
  );
  const started = await Daemon.start(loadConfig(site.configPath, { env: {} }), {
    logger: pino({ level: 'silent' }),
  });
  daemon = started;
  port = started.https!.port;
  // The daemon's own site, with the port it was given.
  const siteFile = parse(readFileSync(site.configPath, 'utf8')) as SiteFile & {
    https: Record<string, unknown>;
  };
  cliConfig = join(site.dir, 'sluicectl.yaml');
  writeFileSync(cliConfig, stringify({ ...siteFile, https: { ...siteFile.https, port } }));
  tokenFile = join(site.dir, 'token');
  writeFileSync(tokenFile, `${TOKEN}\n`, { mode: 0o600 });
  await untilFirstReadbacks(started);
}, 60_000);

afterAll(async () => {
  await stopSite(daemon, site);
});

it('a 503 for a command the intake holds is NOT SETTLED with its key and a safe retry, not "refused"', async () => {
  const valve = site.plant.device('slow-valve');
  const before = valve.counters.writesReceived;
  // No --key: only the run's output can tell the operator which key it used.
  const running = sluicectlInProcess([
    '--config',
    cliConfig,
    'send',
    'slow-valve',
    'open',
    '--wait',
    '3s',
    '--token-file',
    tokenFile,
  ]);
  let run: CliRun;
  let disk: FailingFdatasync | undefined;
  try {
    // Written: the dispatch is on disk; the valve travels, the run waits for its result.
    await until(
      () => (valve.counters.writesReceived === before + 1 ? true : undefined),
      10_000,
      'the write',
    );
    // The settlement's sync fails, and every one after it until the disk is back.
    disk = failFdatasync();
    run = await running;
  } finally {
    disk?.restore();
  }

  expect(run.stderr).toBe('');
  expect(run.stdout).toMatch(
    /^NOT SETTLED over https \(HTTP 503\): the intake holds the command \(confirmed in its journal\) but could not answer for it \(JOURNAL_UNAVAILABLE: /,
  );
  const key = /^ {2}key\s+(\S+)$/m.exec(run.stdout)?.[1];
  expect(key).toMatch(/^[0-9a-f-]{36}$/);
  expect(run.stdout).toContain(`look it up with: sluicectl --config ${cliConfig} show ${key!};`);
  // docs/sluicectl.md: exit 1 for a command not settled.
  expect(run.code).toBe(1);
  const retry = retryArgs(run);
  expect(retry).toEqual([
    '--config',
    cliConfig,
    'send',
    'slow-valve',
    'open',
    '--key',
    key,
    '--via',
    'https',
    '--token-file',
    tokenFile,
  ]);

  // The intake holds it under that key: confirmed, once the journal is back.
  const shown = await until(
    async () => {
      const answer = await httpsRequest(
        { port, ca: site.cert, token: TOKEN },
        'GET',
        `/v1/commands/${key!}`,
      );
      return answer.status === 200 ? answer.json() : undefined;
    },
    10_000,
    'the command under the printed key',
  );
  expect(shown).toMatchObject({ key, device: 'slow-valve', state: 'confirmed' });
  // The printed line is the same command: its result, the valve not written again.
  const again = await sluicectlInProcess(retry);
  expect(again.stdout).toMatch(/^REPLAYED: key \S+ was already settled/);
  expect(again.stdout).toMatch(new RegExp(`^ {2}key\\s+${key!}$`, 'm'));
  expect(valve.counters.writesReceived).toBe(before + 1);
}, 30_000);
