import { describe, it } from 'vitest';
import { noGatewayClock } from '../../src/clock/gateway-clock.js';
import { UiViews } from '../../src/intake/ui-views.js';
import {
  GUARD_MS,
  OPEN,
  withheldAndTakenUp,
  withheldHarness,
} from '../helpers/withheld-dispatch.js';
import { sluicectlInProcess } from './helpers.js';

/**
 * What `sluicectl show` and the status page's list of open commands (`why`) say of a dispatched
 * command whose write was never sent: its dispatch's barrier failed, so the write was withheld,
 * and its take-up decides it again (a fresh read, then its write; src/core/execution.ts,
 * writeWithheld). Both said it waited for "a readback that settles its write (seq 1), sent …
 * ago: until one does, the write's effect is unknown", though nothing of that write left the
 * gateway. They now say it was never sent, why, and that it is being decided again since its
 * take-up, in the same words. The real pipeline and SQLite journal against sluice-sim (its
 * reads dropped after the failed barrier, so the command stays open, unwritten); sluicectl
 * reads the journal file, the page's views are built on the same pipeline and journal. Ground
 * truth: the simulator's write log (nothing written) and the journal's take-up line.
 *
 * The one double is the failing fdatasync of withheld-dispatch.ts (a disk's EIO, which no real
 * part here produces on demand): it makes the open's dispatch barrier fail once.
 */

describe('an open whose write was withheld and is decided again', () => {
  it(
    'is said never sent and being decided again, by sluicectl show and the status page',
    async ({ expect, onTestFinished }) => {
      const h = await withheldHarness(onTestFinished);
      const valve = h.device('v1');
      const a = await withheldAndTakenUp(h, onTestFinished, OPEN, 'dropped');
      const takeUp = h.journal
        .history({ scope: 'plant', key: OPEN.key })
        .findLast((e) => e.detail.startsWith('taken up: sequence number'));
      expect(takeUp).toBeDefined();
      const since = new Date(takeUp!.at).toISOString();

      // The take-up's line committed to the file sluicectl reads.
      await h.journal.durable();
      const shown = await sluicectlInProcess(['--journal', h.path, '--no-color', 'show', OPEN.key]);
      const views = new UiViews({
        pipeline: h.pipeline,
        commands: h.journal,
        profiles: new Map(),
        gateway: {
          gatewayId: 'g',
          clock: noGatewayClock(h.clock),
          mqtt: null,
          journalPath: null,
          journalProblem: () => null,
        },
        serverCertificate: () => null,
        clock: h.clock,
      });
      const why = views
        .commands({ limit: 10 }, () => true)
        .open.find((c) => c.key === OPEN.key)?.why;
      // Still open and never written while both were read.
      expect(h.get(OPEN.key)?.state).toBe('dispatched');
      expect(valve.writeLog).toEqual([]);

      const words = `its write \\(seq ${a.seq}\\) was never sent \\(withheld: the journal failed before its dispatch was on disk\\); being decided again since ${since.replace(/[.]/g, '\\.')}`;
      expect(shown.stdout).toMatch(
        new RegExp(
          `^ {2}waiting for +${words} \\(\\d+(?:ms|s) ago\\): a fresh read, then its write$`,
          'm',
        ),
      );
      expect(shown.stdout).not.toContain('a readback that settles its write');
      expect(why).toMatch(new RegExp(`^${words}: a fresh read, then its write(?:; |$)`));
      expect(why).not.toContain('a readback that settles its write');
    },
    4 * GUARD_MS + 20_000,
  );
});
