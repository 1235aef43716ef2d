import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CommandRecord, JournalEvent } from '../../src/core/journal.js';
import { renameSiteEntry } from '../helpers/daemon-site.js';
import { mosquittoAvailable, until } from '../helpers/mosquitto.js';
import { Site } from '../reliability/site.js';
import { sluicectl } from './helpers.js';

/**
 * A write the controller acknowledged and holds (the sim's `hold`), its command resolved by an
 * operator, the daemon killed (SIGKILL), the valve renamed in the configuration (the same PLC
 * and registers, another id: allowed, as no command of the former id is open) and the daemon
 * started again while the controller still holds the write. The start looked the device's last
 * write up by the new id alone and found none: a close under the new id was confirmed a no-op
 * at CLOSED, and the controller took the open after it (I2). Now the start finds the write under
 * the former id (the journal's record of where each device writes), and the close waits for it
 * as it does without a rename. Real sluiced, sluice-sim, the journal, sluicectl; asserted on the
 * sim's write log and state and on the journal.
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

/**
 * The command once its history says it waits for the device's previous write, or once it has
 * ended (as it did at once on the previous code, a no-op at CLOSED).
 */
async function waitingOrEnded(
  key: string,
): Promise<{ readonly r: CommandRecord; readonly note: JournalEvent | null }> {
  return until(() => {
    const ended = terminal(key);
    if (ended !== undefined) return { r: ended, note: null };
    const r = record(key);
    const note = r && site.history(r).find((e) => e.detail.startsWith('not decided yet:'));
    return r === undefined || note === undefined ? undefined : { r, note };
  }, 10_000);
}

describe.skipIf(!real)(
  'a write the controller holds across a restart that renames its valve',
  () => {
    beforeAll(async () => {
      // Travel 0: an open, once taken, is OPEN at that scan. The confirm timeout (the bound on an
      // acknowledged write) is far longer than a restart, so that the hold is cleared within it.
      site = await Site.start({
        gatewayId: 'renamed-held',
        travelMs: 0,
        timing: { confirmTimeoutMs: 30_000, redispatchGuardMs: 12_000, defaultTtlMs: 60_000 },
      });
      await site.startDaemon();
    }, 90_000);
    afterAll(async () => {
      await site.kill();
      await site.close();
    });

    it('the first command under the new id waits for the held write of the former id', async () => {
      const valve = site.plant.device('mb-valve-1');
      // Two commands first: the held open's sequence number is 3, and the new id's numbers go on
      // past it (its first dispatch 4, not 1: restart-renamed-seq.test.ts).
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

      // Nothing of mb-valve-1 is open: the rename starts.
      await site.kill();
      renameSiteEntry(site.configPath, 'devices', 'mb-valve-1', 'inlet-valve');
      await site.startDaemon();
      const close = await site.postCommand('close-1', { device: 'inlet-valve', action: 'close' });
      expect(close.status).toBe(202);

      // The close waits for the open; on the previous code it was confirmed a no-op at CLOSED at
      // once, while the controller still held the open.
      const seen = await waitingOrEnded('close-1');
      expect(seen.r.detail ?? '').not.toMatch(/no-op/);
      expect(seen.r.state).toBe('accepted');
      expect(seen.note?.detail).toContain(
        'open-1 (identity plant, sequence number 3), which ended RESOLVED_BY_OPERATOR, was acknowledged',
      );
      // The controller holds the open: received, not taken.
      expect(valve.writeLog.map((e) => [e.seq, e.outcome])).toEqual([
        [1, 'accepted'],
        [2, 'accepted'],
        [3, null],
      ]);
      expect(valve.snapshot().state).toBe('CLOSED');

      // The hold ends: the controller takes the open, then the close is decided and written.
      valve.clearFaults();
      const done = await until(() => terminal('close-1'), 15_000);
      expect(done).toMatchObject({ state: 'confirmed', device: 'inlet-valve', seq: 4 });
      expect(done.detail ?? '').not.toMatch(/no-op/);
      // Ground truth: the open taken, then the close, each written once; the valve closed.
      const log = valve.writeLog;
      expect(log.map((e) => ({ seq: e.seq, outcome: e.outcome }))).toEqual([
        { seq: 1, outcome: 'accepted' },
        { seq: 2, outcome: 'accepted' },
        { seq: 3, outcome: 'accepted' },
        { seq: 4, outcome: 'accepted' },
      ]);
      expect(log[3]!.receivedAt).toBeGreaterThanOrEqual(log[2]!.settledAt!);
      await until(() => (valve.snapshot().state === 'CLOSED' ? true : undefined), 5_000);
      expect(valve.snapshot().seqEcho).toBe(4);

      // Restarted again: the new id's close, accepted after the open ended, is the valve's last
      // write now. The next open is decided at once, not held for the former id's open (whose
      // echo no image shows any more) up to its bound, 30 s, after every start.
      await site.kill();
      await site.startDaemon();
      const again = await site.postCommand(
        'open-2',
        { device: 'inlet-valve', action: 'open' },
        'wait=20',
      );
      expect(again.status, again.body).toBe(200);
      const opened = record('open-2')!;
      expect(opened).toMatchObject({ state: 'confirmed', seq: 5 });
      expect(site.history(opened).map((e) => e.detail)).not.toContainEqual(
        expect.stringMatching(/^not decided yet:/),
      );
      expect(valve.writeLog.at(-1)).toMatchObject({ seq: 5, outcome: 'accepted' });
    }, 90_000);
  },
);
