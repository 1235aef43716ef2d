import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sluicectl } from '../cli/helpers.js';
import { lockHolder } from '../helpers/journal-lock.js';
import { mosquittoAvailable, until } from '../helpers/mosquitto.js';
import { Site } from '../reliability/site.js';

/**
 * What /readyz and `sluicectl health` say while another program holds the journal's write lock
 * (a sqlite3 shell or a backup tool with a transaction open): they said `journal unavailable
 * (check): SQLITE_BUSY`, which names neither the file nor what holds it. Real sluiced (a
 * process), sluice-sim, Mosquitto; the lock held by another process (test/helpers/journal-lock.ts);
 * ground truth: the journal file, which has no row for a command refused meanwhile, and one once
 * the lock is let go.
 */

const real = mosquittoAvailable();
const VALVE = 'mb-valve-1';

let site: Site;

beforeAll(async () => {
  if (!real) return;
  site = await Site.start({ gatewayId: 'journal-locked', journalBusyTimeoutMs: 300 });
  await site.startDaemon();
  // sluicectl's first start compiles its sources: not while the lock is held.
  await sluicectl(['--config', site.configPath, 'stuck', '--json'], { timeoutMs: 30_000 });
}, 90_000);

afterAll(async () => {
  if (!real) return;
  await site.kill();
  await site.close();
});

function readyz(): Promise<{ status: number; journal: { ok: boolean; detail: string } }> {
  return site.https('GET', '/readyz', {}).then((answer) => ({
    status: answer.status,
    journal: (JSON.parse(answer.body) as { checks: { journal: { ok: boolean; detail: string } } })
      .checks.journal,
  }));
}

describe.skipIf(!real)('the journal locked by another program', () => {
  it('is named, with the file, by /readyz and sluicectl health', async () => {
    const lock = await lockHolder(site.journalPath);
    try {
      await lock.hold(20_000);
      // Ground truth: a command is refused, and the journal has no row for it.
      const refused = await site.postCommand('locked-1', { device: VALVE, action: 'open' });
      expect(refused.status, refused.body).toBe(503);
      expect(site.records().some((r) => r.key === 'locked-1')).toBe(false);

      const said = new RegExp(
        `^journal unavailable \\((?:check|claim|commit)\\): SQLITE_BUSY: another program holds the write lock of ${site.journalPath.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} \\(a sqlite3 shell or a backup with a transaction open\\) for longer than sluiced waits for it \\(journal\\.busyTimeoutMs\\); commands are refused until it lets go, then taken again without a restart$`,
      );
      const ready = await readyz();
      expect(ready.status).toBe(503);
      expect(ready.journal.ok).toBe(false);
      expect(ready.journal.detail).toMatch(said);
      const health = await sluicectl(
        ['--config', site.configPath, '--no-color', '--json', 'health'],
        { timeoutMs: 30_000 },
      );
      expect(health.code).toBe(1);
      const checks = health.json<{ checks: { journal: { ok: boolean; detail: string } } }>().checks;
      expect(checks.journal.ok).toBe(false);
      expect(checks.journal.detail).toMatch(said);
    } finally {
      lock.close();
    }
    // Let go: ready again, and the next command is journaled.
    await until(async () => ((await readyz()).journal.ok ? true : undefined), 10_000, 'ready');
    const taken = await site.postCommand('after-1', { device: VALVE, action: 'open' });
    expect(taken.status, taken.body).toBe(202);
    expect(site.records().some((r) => r.key === 'after-1')).toBe(true);
  }, 90_000);
});
