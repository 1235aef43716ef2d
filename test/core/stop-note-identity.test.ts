import BetterSqlite3 from 'better-sqlite3';
import { describe, it, type ExpectStatic, type TestContext } from 'vitest';
import { SimHarness } from '../helpers/sim-harness.js';
import {
  closeWaitsForHeldOpen,
  heldAcknowledgedOpen,
  withheldAndTakenUp,
  GUARD_MS,
} from '../helpers/withheld-dispatch.js';

/**
 * A stop's line "decided on the state the device's previous write leads to: the write of p …"
 * (previous-write.ts, stopAfterPendingNote) names the command of that write; a start reads it
 * back (earlierLastWrite) when the device's last dispatch is that stop, its write never sent:
 * the next command waits for the write the line names, which the controller may still take. Keys
 * are per identity (SPEC §2) and sequence numbers are 16-bit per device: the same key `p` from
 * another identity, given the same number 65,535 dispatches earlier, is a command the line fit
 * too when it gave key, number and ending alone — and a line that fits two names none, so the
 * next close waited for nothing and was confirmed a no-op at CLOSED while the controller held
 * the open, which it then took (I2). The line now names the identity.
 *
 * The earlier command is crafted into the journal (a row of another identity with p's key,
 * device, number and ending, an hour older): 65,535 real dispatches of one device would take the
 * suite far past its bound, and the rows they leave are these. The rest is real: the pipeline
 * and SQLite journal against sluice-sim (its `hold`: the controller acknowledges the open and
 * takes it later), the stop's dispatch withheld by the fdatasync EIO double (the one fault no
 * real part here produces on demand: test/helpers/withheld-dispatch.ts); judged from the
 * simulator's write log and state.
 */

const HOUR_MS = 3_600_000;

async function harness(onTestFinished: TestContext['onTestFinished']): Promise<SimHarness> {
  // No idle monitor is needed: the one read held first is the withheld stop's fresh read. The
  // confirm timeout (the bound on the acknowledged open) is far longer than the case takes.
  // Travel 0: the open, once taken, is OPEN at that scan, so the close is a legal write then.
  const h = await SimHarness.start({
    warm: true,
    travelMs: 0,
    timing: { redispatchGuardMs: GUARD_MS, confirmTimeoutMs: 10 * GUARD_MS },
  });
  onTestFinished(() => h.close());
  return h;
}

/**
 * The open `p` acknowledged and held by the controller, resolved; the stop `a` written behind it
 * (its decision line names p), its dispatch withheld, taken up and resolved as never sent; the
 * life killed. Then, in the journal file, identity `scada`'s command `p` of an hour before with
 * the same device, number and ending; `rewrite` edits the stop's line (a line of an earlier
 * version). Returns the stop's line as the pipeline journaled it.
 */
async function stopBehindHeldOpenThenKilled(
  h: SimHarness,
  onTestFinished: TestContext['onTestFinished'],
  expect: ExpectStatic,
  rewrite: (line: string) => string,
): Promise<string> {
  await heldAcknowledgedOpen(h, 'p');
  h.pipeline.resolve({ scope: 'plant', key: 'p' }, 'ops@test', 'checked');
  // Its reads dropped: taken up, the stop waits for a fresh read to decide it again, unwritten.
  await withheldAndTakenUp(h, onTestFinished, { key: 'a', action: 'stop' }, 'dropped');
  const a = h.pipeline.resolve({ scope: 'plant', key: 'a' }, 'ops@test', 'checked');
  expect(a.detail).toContain('was never sent');
  h.device('v1').clearFault('drop');
  const line = h
    .notes('a')
    .find((n) => n.includes("decided on the state the device's previous write leads to"));
  expect(line).toBeDefined();
  await h.journal.durable();
  await h.crash();
  const db = new BetterSqlite3(h.path);
  try {
    const columns = (db.prepare('PRAGMA table_info(commands)').all() as { name: string }[])
      .map((c) => c.name)
      .filter((c) => !['id', 'scope', 'accepted_at', 'dispatched_at', 'settled_at'].includes(c));
    const list = columns.join(', ');
    const twin = db
      .prepare(
        `INSERT INTO commands (scope, accepted_at, dispatched_at, settled_at, ${list})
         SELECT 'scada', accepted_at - @h, dispatched_at - @h, settled_at - @h, ${list}
         FROM commands WHERE scope = 'plant' AND key = 'p'`,
      )
      .run({ h: HOUR_MS });
    expect(twin.changes).toBe(1);
    const id = db
      .prepare("SELECT id FROM commands WHERE scope = 'plant' AND key = 'a'")
      .pluck()
      .get();
    const events = db.prepare('SELECT id, detail FROM events WHERE command = ?').all(id) as {
      id: number;
      detail: string;
    }[];
    for (const e of events) {
      const detail = rewrite(e.detail);
      if (detail !== e.detail) {
        db.prepare('UPDATE events SET detail = ? WHERE id = ?').run(detail, e.id);
      }
    }
  } finally {
    db.close();
  }
  return line!;
}

// One at a time: the fdatasync double is the process's.
describe("a stop's previous-write line, the same key and number used by another identity", () => {
  it('names the identity: after a restart the next close waits for the held open', async ({
    expect,
    onTestFinished,
  }) => {
    const h = await harness(onTestFinished);
    const line = await stopBehindHeldOpenThenKilled(h, onTestFinished, expect, (d) => d);
    await h.restart();
    await closeWaitsForHeldOpen(h, expect);
    expect(line).toContain(`the write of p (identity plant, sequence number ${h.get('p')!.seq})`);
  });

  it('a line of an earlier version (no identity) still holds the next close for the open', async ({
    expect,
    onTestFinished,
  }) => {
    const h = await harness(onTestFinished);
    await stopBehindHeldOpenThenKilled(h, onTestFinished, expect, (d) =>
      d.replace('(identity plant, sequence number ', '(sequence number '),
    );
    await h.restart();
    const lines = h.notes('a').filter((n) => n.includes('previous write leads to'));
    expect(lines.length).toBeGreaterThan(0);
    for (const l of lines) expect(l).not.toContain('identity');
    await closeWaitsForHeldOpen(h, expect);
  });
});
