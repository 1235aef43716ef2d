import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { Daemon } from '../../src/daemon/daemon.js';
import { PROBE_REUSE_MS } from '../../src/daemon/readiness.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import type { Plant } from '../../simulators/plant.js';
import { startModbusPlant, writeDaemonSite } from '../helpers/daemon-site.js';
import { tempDir } from '../helpers/fixtures.js';
import { httpsRequest } from '../helpers/loopback-https.js';
import { until } from '../helpers/mosquitto.js';

/**
 * /readyz needs no credentials, and each answer used to be a commit of its own and a walk of
 * every open command on the event loop that carries commands. Asked again and again, it is
 * answered from the proof and the list of a moment ago: the journal (the ground truth) takes at
 * most one proof write per PROBE_REUSE_MS, however many answers; failures are not reused
 * (readyz-journal-sync.test.ts, full-disk.test.ts).
 */

const VALVE = 'inlet-valve';
/** Open commands of a device no longer configured: stuck, listed by every /readyz. */
const ORPHANS = 2_000;

let plant: Plant;
let daemon: Daemon;
let cert: string;
let journalPath: string;
let cleanup: () => void;

type Checks = Record<string, { ok: boolean; detail: string } | undefined>;

async function readyz(): Promise<{ status: number; checks: Checks }> {
  const answer = await httpsRequest(
    { port: daemon.https!.port, ca: cert, token: '' },
    'GET',
    '/readyz',
  );
  return { status: answer.status, checks: (answer.json() as { checks: Checks }).checks };
}

beforeAll(async () => {
  let dir: string;
  ({ dir, cleanup } = tempDir('sluice-readyz-flood-'));
  plant = await startModbusPlant({ [VALVE]: { profile: 'valve', base: 0, travelMs: 300 } });
  const configPath = await writeDaemonSite(dir, plant, 'readyzflood');
  cert = readFileSync(join(dir, 'cert.pem'), 'utf8');
  mkdirSync(join(dir, 'state'), { recursive: true });
  journalPath = join(dir, 'state', 'journal.db');
  const now = Date.now();
  const journal = SqliteJournal.open({ path: journalPath });
  try {
    for (let i = 0; i < ORPHANS; i++) {
      journal.claim({
        scope: 'ops',
        key: `orphan-${i}`,
        fingerprint: `f-orphan-${i}`,
        device: 'removed-valve',
        action: 'close',
        position: null,
        issuedAt: now - 600_000,
        issuedAtSource: 'issuer',
        ttlMs: 30_000,
        deadline: now - 570_000,
        intake: 'https',
        acceptedAt: now - 600_000,
      });
    }
  } finally {
    journal.close();
  }
  daemon = await Daemon.start(loadConfig(configPath, { env: {} }), {
    logger: pino({ level: 'silent' }),
  });
}, 60_000);

afterAll(async () => {
  await daemon.stop();
  await plant.stop();
  cleanup();
});

describe('/readyz asked again and again', () => {
  it('takes one proof write a moment, not one per answer, and still names the stuck commands', async () => {
    await until(
      async () => ((await readyz()).checks[`device:${VALVE}`]?.ok === true ? true : undefined),
      20_000,
      'the valve read',
    );
    // Another connection sees every commit the daemon's makes (PRAGMA data_version).
    const reader = new BetterSqlite3(journalPath, { readonly: true });
    try {
      const version = (): number => reader.pragma('data_version', { simple: true }) as number;
      let last = version();
      let commits = 0;
      const asked = 30;
      const from = performance.now();
      for (let i = 0; i < asked; i++) {
        const answer = await readyz();
        expect(answer.status).toBe(503);
        const commands = answer.checks.commands;
        expect(commands?.ok).toBe(false);
        expect(commands?.detail).toContain(`${ORPHANS} open`);
        expect(commands?.detail).toContain(`${ORPHANS} stuck`);
        expect(answer.checks.journal).toEqual({ ok: true, detail: 'writable' });
        const now = version();
        if (now !== last) commits++;
        last = now;
      }
      const tookMs = performance.now() - from;
      // At most one proof per PROBE_REUSE_MS begun within the run (an idle daemon writes
      // nothing else): thirty answers, not thirty commits.
      expect(commits).toBeLessThanOrEqual(Math.ceil(tookMs / PROBE_REUSE_MS) + 1);
      expect(commits).toBeLessThan(asked);
      // And the journal is still proved: a moment later, the next answer writes again.
      await new Promise((r) => setTimeout(r, PROBE_REUSE_MS));
      expect((await readyz()).checks.journal).toEqual({ ok: true, detail: 'writable' });
      expect(version()).not.toBe(last);
    } finally {
      reader.close();
    }
  }, 60_000);
});
