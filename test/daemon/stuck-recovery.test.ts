import { readFileSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { loadConfig } from '../../src/config/config.js';
import type { Observation } from '../../src/core/journal.js';
import { takeUpAt } from '../../src/core/open-commands.js';
import { allocateSeq } from '../../src/core/sequence.js';
import { Daemon } from '../../src/daemon/daemon.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import type { Plant } from '../../simulators/plant.js';
import { sluicectlInProcess } from '../cli/helpers.js';
import { seedOrphan, startModbusPlant, writeDaemonSite } from '../helpers/daemon-site.js';
import { tempDir } from '../helpers/fixtures.js';
import { until } from '../helpers/mosquitto.js';

/**
 * "Stuck" right after a restart (SPEC §2, docs/spec-notes.md "Every open command ends"). A
 * command in doubt at the restart (dispatched by an earlier life) whose deadline passed while
 * the gateway was down is taken up by recovery and settled by reading its controller for the
 * longest of its confirm timeout (8 s) and its PLC's unreachable grace (15 s by default; 20 s
 * here, plcs.mb.unreachableGraceMs: a window no other bound gives, and room for the checks
 * inside it on a loaded machine, where 10 s left them 2.5 s). While its worker does that,
 * within that window, it is not stuck: /readyz's commands check, `sluice_commands_stuck` and
 * `sluicectl stuck` used to count it stuck at once (past deadline + confirm timeout), so /readyz
 * answered 503 while everything worked as designed. A command of a device no longer configured
 * has no worker: it is stuck, and named, all along. Real daemon (in this process), sluice-sim
 * over Modbus TCP (the valve's image frozen, so that no readback can settle the command before
 * its window ends), sluicectl's own code run in this process (a process of its own under the
 * test's loader took seconds of the 10 s window on a loaded machine, and the window ended before
 * the checks inside it); ground truth: the journal file.
 */

const VALVE = 'inlet-valve';
/** The PLC's unreachable grace: longer than the valve's 8 s confirm timeout and the default 15 s. */
const GRACE_MS = 20_000;
let plant: Plant;
let daemon: Daemon;
let configPath: string;
let journalPath: string;
let cleanup: () => void;

function onFile(key: string): {
  state: string;
  notes: string[];
  takenUpAt: number | null;
  settledAt: number | null;
} {
  const journal = SqliteJournal.open({ path: journalPath, readonly: true });
  try {
    const r = journal.findByKey(key)[0]!;
    const history = journal.history(r);
    return {
      state: r.state,
      notes: history.map((e) => e.detail),
      takenUpAt: takeUpAt(history),
      settledAt: r.settledAt,
    };
  } finally {
    journal.close();
  }
}

function get(path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: '127.0.0.1',
        port: daemon.https!.port,
        path,
        rejectUnauthorized: false,
        agent: false,
      },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => {
          resolve({ status: res.statusCode ?? 0, body });
        });
      },
    );
    req.once('error', reject);
    req.end();
  });
}

/** What the three reporters say is stuck, by key. */
async function reported(): Promise<{
  readyz: { status: number; commands: { ok: boolean; detail: string } };
  gauge: number;
  cli: string[];
}> {
  const ready = await get('/readyz');
  const checks = (
    JSON.parse(ready.body) as { checks: Record<string, { ok: boolean; detail: string }> }
  ).checks;
  const metrics = await get('/metrics');
  const gauge = Number(/^sluice_commands_stuck (\d+)$/m.exec(metrics.body)?.[1] ?? 'NaN');
  const run = await sluicectlInProcess(['--config', configPath, 'stuck', '--json'], {
    timeoutMs: 30_000,
  });
  const listed = run.json<{ commands: { key: string; stuck: boolean }[] }>().commands;
  return {
    readyz: { status: ready.status, commands: checks.commands! },
    gauge,
    cli: listed.filter((c) => c.stuck).map((c) => c.key),
  };
}

beforeAll(async () => {
  let dir: string;
  ({ dir, cleanup } = tempDir('sluice-stuck-recovery-'));
  plant = await startModbusPlant({ [VALVE]: { profile: 'valve', base: 0, travelMs: 300 } });
  configPath = await writeDaemonSite(dir, plant, 'stuckrecovery');
  const site = parse(readFileSync(configPath, 'utf8')) as { plcs: Record<string, object> };
  site.plcs.mb = { ...site.plcs.mb, unreachableGraceMs: GRACE_MS };
  writeFileSync(configPath, stringify(site));
  journalPath = join(dir, 'state', 'journal.db');
  const now = Date.now();
  // An earlier life dispatched `open` ten minutes ago and died; its deadline passed long ago.
  const journal = SqliteJournal.open({ path: journalPath });
  try {
    const claim = journal.claim({
      scope: 'ops',
      key: 'in-doubt-1',
      fingerprint: 'f-in-doubt-1',
      device: VALVE,
      action: 'open',
      position: null,
      issuedAt: now - 600_000,
      issuedAtSource: 'issuer',
      ttlMs: 30_000,
      deadline: now - 570_000,
      intake: 'https',
      acceptedAt: now - 600_000,
    });
    const image = plant.device(VALVE).snapshot().published;
    const before: Observation = {
      state: image.state,
      position: image.position,
      seq: image.seqEcho,
      faultCode: null,
      sourceTime: new Date(image.scanTime).toISOString(),
      readAt: new Date(now - 599_000).toISOString(),
    };
    journal.markDispatched(claim.record, now - 599_000, before, 'pipeline', (last, open) =>
      allocateSeq(last, before.seq, open),
    );
    // Accepted before the restart behind it on the same valve, its deadline long past: it
    // waits for the take-up, so within that window it is not stuck either.
    journal.claim({
      scope: 'ops',
      key: 'behind-1',
      fingerprint: 'f-behind-1',
      device: VALVE,
      action: 'close',
      position: null,
      issuedAt: now - 598_000,
      issuedAtSource: 'issuer',
      ttlMs: 30_000,
      deadline: now - 568_000,
      intake: 'https',
      acceptedAt: now - 598_000,
    });
  } finally {
    journal.close();
  }
  seedOrphan(journalPath, now, {
    scope: 'ops',
    key: 'orphan-1',
    device: 'removed-valve',
    intake: 'https',
  });
  // sluicectl's first run loads its modules: not within the window.
  await sluicectlInProcess(['--config', configPath, 'stuck', '--json'], { timeoutMs: 30_000 });
  // No fresh image: no readback can settle the command; recovery reads for its whole window.
  plant.device(VALVE).setFault({ kind: 'frozen' });
  daemon = await Daemon.start(loadConfig(configPath, { env: {} }), {
    logger: pino({ level: 'silent' }),
  });
}, 30_000);

afterAll(async () => {
  await daemon.stop();
  await plant.stop();
  cleanup();
});

describe('stuck after a restart', () => {
  it('a command recovery is settling is not stuck within its window; an orphan is, all along', async () => {
    // The worker has taken it up (its note is journaled) and reads the controller.
    await until(
      () =>
        onFile('in-doubt-1').notes.some((n) => n.startsWith('taken up: sequence number'))
          ? true
          : undefined,
      10_000,
      'the take-up by recovery',
    );
    const during = await reported();
    // Still open on file: the worker has not settled it yet — the moment that matters.
    expect(onFile('in-doubt-1').state).toBe('dispatched');
    expect(during.readyz.commands.ok).toBe(false);
    expect(during.readyz.status).toBe(503);
    expect(during.readyz.commands.detail).toContain('1 stuck');
    expect(during.readyz.commands.detail).toContain('orphan-1 on removed-valve');
    expect(during.readyz.commands.detail).not.toContain('in-doubt-1');
    expect(during.gauge).toBe(1);
    expect(during.cli).toEqual(['orphan-1']);
    // One command on its own (`show`, the status page's command page) is judged beside its
    // device's, as the list judges it: the one queued behind the take-up is not stuck.
    const shown = await sluicectlInProcess(['--config', configPath, 'show', 'behind-1', '--json'], {
      timeoutMs: 30_000,
    });
    expect(shown.json<{ open: { stuck: boolean } | null }>().open).toMatchObject({
      stuck: false,
    });
    expect(onFile('behind-1').state).toBe('accepted');

    // The window ends: the worker settles it (its image never moved), and the orphan stays.
    await until(
      () => (onFile('in-doubt-1').state === 'dispatched' ? undefined : true),
      40_000,
      'recovery to settle the command',
    );
    const settled = onFile('in-doubt-1');
    expect(settled.state).toBe('failed');
    // Read for its PLC's grace from the take-up: not the default 15 s nor its confirm timeout
    // (8 s), each shorter, nor the grace and the confirm timeout added.
    const read = (settled.settledAt ?? 0) - (settled.takenUpAt ?? 0);
    expect(read).toBeGreaterThanOrEqual(GRACE_MS - 100);
    expect(read).toBeLessThan(GRACE_MS + 8_000);
    // The command queued behind it goes next, past its deadline: never written, it ends at once.
    // Read before it has, it is open past its deadline with nothing ahead of it: stuck.
    await until(
      () => (onFile('behind-1').state === 'accepted' ? undefined : true),
      10_000,
      'the command behind it to end',
    );
    expect(onFile('behind-1').state).toBe('rejected');
    const after = await reported();
    expect(after.gauge).toBe(1);
    expect(after.cli).toEqual(['orphan-1']);
    expect(after.readyz.commands.detail).toContain('orphan-1 on removed-valve');
  }, 90_000);
});
