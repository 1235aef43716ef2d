import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import type { CommandRecord } from '../../src/core/journal.js';
import { renameSiteEntry } from '../helpers/daemon-site.js';
import { mosquittoAvailable, until } from '../helpers/mosquitto.js';
import { Site } from '../reliability/site.js';
import { sluicectl } from './helpers.js';

/**
 * A write the controller acknowledged and holds (the sim's `hold`), its command resolved by an
 * operator, the daemon killed (SIGKILL), and started again with the valve renamed (the same PLC
 * and registers, another id) and its profile's confirm timeout (the bound on an acknowledged
 * write) shortened from 20 s to 2 s, while the controller still holds the write. The earlier
 * life saved its bounds in the journal under the former id; the start looked them up by the
 * new id alone and waited for the held open by the new 2 s only: a close under the new id was
 * then confirmed a no-op at CLOSED, and the controller took the open after it (I2). Now the new
 * id's lane waits out the longest bound saved under it or its former ids. Real sluiced,
 * sluice-sim, the journal, sluicectl; asserted on the sim's write log and state and on the
 * journal.
 */
const real = mosquittoAvailable();
let site: Site;

function record(key: string): CommandRecord | undefined {
  return site.records().find((r) => r.key === key);
}

function terminal(key: string): CommandRecord | undefined {
  const r = record(key);
  return r !== undefined && r.state !== 'accepted' && r.state !== 'dispatched' ? r : undefined;
}

/** The valve profile's confirm timeout in the site's profiles, as an operator edits it. */
function setConfirmTimeout(ms: number): void {
  const file = join(site.dir, 'profiles', 'valve.yaml');
  const profile = parse(readFileSync(file, 'utf8')) as { timing: Record<string, number> };
  profile.timing.confirmTimeoutMs = ms;
  writeFileSync(file, stringify(profile));
}

describe.skipIf(!real)(
  'a held write across a restart that renames its valve and shortens its timings',
  () => {
    beforeAll(async () => {
      // Travel 0: an open, once taken, is OPEN at that scan.
      site = await Site.start({
        gatewayId: 'renamed-shortened',
        travelMs: 0,
        timing: { confirmTimeoutMs: 20_000, defaultTtlMs: 60_000 },
      });
      await site.startDaemon();
    }, 90_000);
    afterAll(async () => {
      await site.kill();
      await site.close();
    });

    it('the first command under the new id waits out the former id’s longer bound', async () => {
      const valve = site.plant.device('mb-valve-1');
      for (const [key, action] of [
        ['open-0', 'open'],
        ['close-0', 'close'],
      ] as const) {
        const answer = await site.postCommand(key, { device: 'mb-valve-1', action }, 'wait=10');
        expect(answer.status, answer.body).toBe(200);
      }
      expect(valve.snapshot()).toMatchObject({ state: 'CLOSED', seqEcho: 2 });
      valve.setFault({ kind: 'hold' });
      const open = await site.postCommand('open-1', { device: 'mb-valve-1', action: 'open' });
      expect(open.status).toBe(202);
      await until(() => (valve.counters.writesReceived === 3 ? true : undefined), 10_000);
      const resolved = await sluicectl(
        ['--config', site.configPath, 'resolve', 'open-1', '--as', 'failed', '--reason', 'checked'],
        { timeoutMs: 30_000 },
      );
      expect(resolved.code).toBe(0);
      expect(record('open-1')?.detail).toMatch(/which acknowledged it: it may have been applied$/);

      // Renamed, and the bound on an acknowledged write shortened to 2 s: the controller keeps
      // the open past it, within the 20 s the earlier life was configured with.
      await site.kill();
      renameSiteEntry(site.configPath, 'devices', 'mb-valve-1', 'inlet-valve');
      setConfirmTimeout(2_000);
      await site.startDaemon();
      const started = Date.now();
      const close = await site.postCommand('close-1', { device: 'inlet-valve', action: 'close' });
      expect(close.status).toBe(202);

      // The hold ends 6 s after the start: past the new bound (on the previous code the close
      // was confirmed a no-op at CLOSED by then), within the earlier life's.
      await until(
        () =>
          terminal('close-1') !== undefined || Date.now() - started >= 6_000 ? true : undefined,
        15_000,
      );
      valve.clearFaults();
      const done = await until(() => terminal('close-1'), 20_000);
      await until(() => (valve.snapshot().state === 'CLOSED' ? true : undefined), 5_000);

      // Ground truth: the open taken, then the close written and taken; the valve closed.
      expect(done).toMatchObject({ state: 'confirmed', device: 'inlet-valve' });
      expect(done.detail ?? '').not.toMatch(/no-op/);
      const log = valve.writeLog;
      expect(log.map((e) => ({ seq: e.seq, outcome: e.outcome }))).toEqual([
        { seq: 1, outcome: 'accepted' },
        { seq: 2, outcome: 'accepted' },
        { seq: 3, outcome: 'accepted' },
        { seq: done.seq, outcome: 'accepted' },
      ]);
      expect(log[3]!.receivedAt).toBeGreaterThanOrEqual(log[2]!.settledAt!);
      expect(valve.snapshot().seqEcho).toBe(done.seq);
      // The close waited for the open, by the words of its history.
      expect(site.history(done).map((e) => e.detail)).toContainEqual(
        expect.stringContaining(
          'not decided yet: the write of open-1 (identity plant, sequence number 3), which ended RESOLVED_BY_OPERATOR, was acknowledged',
        ),
      );
    }, 90_000);
  },
);
