import { describe, it, type TestContext } from 'vitest';
import { Metrics } from '../../src/daemon/metrics.js';
import BetterSqlite3, { type Statement } from 'better-sqlite3';
import { recordingLogger } from '../helpers/recording-logger.js';
import { linkedHarness, refusedUnsent, unsentLines } from '../helpers/linked-harness.js';
import { confirmSeconds } from '../helpers/metrics-text.js';
import type { SimHarness, SimHarnessOptions } from '../helpers/sim-harness.js';
import type { TcpLink } from '../helpers/tcp-link.js';
import type { SimDevice } from '../../simulators/plant.js';

/**
 * A write that was sent and lost, proven not applied (its number never echoed past the guard),
 * is sent once more (redispatch.ts) — and that write finds no connection to the controller. The
 * driver proved it never left the process, so it counts for none of the two writes that may
 * leave the gateway: the command goes round again within its deadline (execution.ts,
 * goRoundAgain) as a command whose write found no connection does, where it ended failed
 * DEVICE_UNREACHABLE at once. The real pipeline, SQLite journal and Modbus driver against
 * sluice-sim, reached through a TCP link: the first write is lost by the simulator's own fault
 * (a connection reset before the write reaches the PLC); the link is refused as the second is
 * handed to the driver (the simulator cannot time a link drop to that instant, between the
 * proof's readback and the write; the refusal itself is the real driver's, finding no
 * connection). Ground truth: the simulator's write log, and the journal.
 */

interface Site {
  readonly h: SimHarness;
  readonly link: TcpLink;
  /** How many writes of the open were handed to the driver. */
  handed(): number;
}

interface Plan {
  /** The writes of the open (1 the first) lost: the connection reset before they reach the PLC. */
  readonly lose: readonly number[];
  /** The writes of the open that find the link refused, accepted again `reopenMs` later. */
  readonly refuse: readonly number[];
  /** Never, when absent (read at each refusal). */
  readonly reopenMs?: number | undefined;
  /** Called as each write of the open is handed to the driver, with its number. */
  readonly handing?: (n: number) => void;
}

async function site(
  onTestFinished: TestContext['onTestFinished'],
  plan: Plan,
  options: SimHarnessOptions = {},
): Promise<Site> {
  const { h, link, ...linked } = await linkedHarness(onTestFinished, options);
  const valve = h.device('v1');
  let handed = 0;
  linked.interceptWrites(async (command, signal, write) => {
    if (command.action !== 'open') return write(command, signal);
    handed++;
    plan.handing?.(handed);
    if (plan.lose.includes(handed)) {
      valve.setFault({ kind: 'reset', when: 'before', on: 'write', count: 1 });
      return write(command, signal);
    }
    if (!plan.refuse.includes(handed)) return write(command, signal);
    await linked.refuseLink();
    try {
      await write(command, signal);
    } finally {
      const { reopenMs } = plan;
      if (reopenMs !== undefined) {
        setTimeout(() => {
          void link.accept();
        }, reopenMs);
      }
    }
  });
  return { h, link, handed: () => handed };
}

/**
 * o (open v1, 20 s deadline) submitted: its first write lost, its second refused unsent; returns
 * once the journal says the second was not sent.
 */
async function secondRefused(onTestFinished: TestContext['onTestFinished']): Promise<Site> {
  const s = await site(onTestFinished, { lose: [1], refuse: [2] });
  s.h.submit('o', { device: 'v1', action: 'open', ttlMs: 20_000 });
  await refusedUnsent(s.h, 'o', "o's second write refused for want of a connection");
  return s;
}

/**
 * Fails the journal's reads of commands' histories (Journal.history) while armed, as an I/O
 * error on a read would (SQLITE_IOERR_READ, which the journal translates to
 * JournalUnavailableError), every other read and every write going through: a double, for a
 * fault no filesystem can aim at one statement (test/helpers/read-faults.ts does the same for
 * Journal.get). The journal's connection is private: reached here for this fault alone.
 */
function historyReadFaults(journal: SimHarness['journal']): { armed: boolean; failed: number } {
  const stmt = (journal as unknown as { conn: { stmts: { history: Statement } } }).conn.stmts
    .history;
  const all = stmt.all.bind(stmt);
  const faults = { armed: false, failed: 0 };
  stmt.all = (...params: unknown[]) => {
    if (faults.armed) {
      faults.failed++;
      throw Object.assign(new Error('disk I/O error'), { code: 'SQLITE_IOERR_READ' });
    }
    return all(...params);
  };
  return faults;
}

describe('the write sent once more after its first was proven not applied finds no connection', () => {
  it('goes round again once the link is back: confirmed, the one write in the valve’s log, timed from its first dispatch', async ({
    expect,
    onTestFinished,
  }) => {
    const { h, ...s } = await site(onTestFinished, { lose: [1], refuse: [2], reopenMs: 1_000 });
    const metrics = new Metrics(h.pipeline, h.clock);
    const valve = h.device('v1');
    h.submit('o', { device: 'v1', action: 'open', ttlMs: 20_000 });
    const o = await h.settled('o', 25_000);
    const notes = h.notes('o');
    // Before the fix: failed DEVICE_UNREACHABLE "the second write was never sent: no connection
    // to the controller, so it is not sent again", 1 s into a 20 s deadline.
    expect(o, notes.join('\n')).toMatchObject({ state: 'confirmed', attempts: 3 });
    expect(s.handed()).toBe(3);
    const redispatches = notes.filter((n) => n.startsWith('dispatched: redispatch: '));
    expect(redispatches).toHaveLength(2);
    expect(redispatches[0]).toMatch(/: the first write was not applied$/);
    expect(redispatches[1]).toMatch(
      /^dispatched: redispatch: the latest write \(sequence number \d+\) found no connection to the controller and was not sent/,
    );
    expect(notes.some((n) => n.includes('was not sent: no connection to the controller'))).toBe(
      true,
    );
    // Ground truth: the first write never reached the PLC (reset before it), the second never
    // left the gateway; the third is the valve's only write.
    expect(valve.writesOfSeq(o.seq!)).toHaveLength(1);
    expect(valve.writeLog).toHaveLength(1);
    expect(valve.snapshot().state).toMatch(/^OPEN/);
    // sluice_command_confirm_seconds times it from its first dispatch (the journal's
    // dispatchedAt), every round included: before, from the last round's dispatch, which left
    // out the lost write's guard and the second write's wait for the link (over a second here).
    const lastRound = h.get('o')!;
    const fromFirst = (lastRound.settledAt! - lastRound.dispatchedAt!) / 1000;
    expect(fromFirst).toBeGreaterThan(1);
    const histogram = await confirmSeconds(metrics);
    expect(histogram.count).toBe(1);
    expect(histogram.sum).toBeGreaterThan(fromFirst - 0.1);
    expect(histogram.sum).toBeLessThan(fromFirst + 0.5);
  }, 60_000);

  it('a link that never comes back: failed DEVICE_UNREACHABLE at its deadline, nothing written', async ({
    expect,
    onTestFinished,
  }) => {
    const { h, ...s } = await site(onTestFinished, { lose: [1], refuse: [2] });
    const valve = h.device('v1');
    const ttlMs = 2_500;
    h.submit('o', { device: 'v1', action: 'open', ttlMs });
    const o = await h.settled('o', ttlMs + 10_000);
    expect(o, h.notes('o').join('\n')).toMatchObject({
      state: 'failed',
      code: 'DEVICE_UNREACHABLE',
      attempts: 2,
    });
    expect(o.detail).toMatch(/^the write never reached the controller: .*nothing was applied/);
    // It waited for the connection until its deadline (before the fix it ended at once, with
    // most of its deadline left), and no write of it went out meanwhile or after.
    expect(o.settledAt!).toBeGreaterThanOrEqual(o.deadline);
    expect(s.handed()).toBe(2);
    expect(valve.writeLog).toHaveLength(0);
    expect(valve.counters.writesReceived).toBe(0);
  }, 60_000);
});

describe('a stop accepted while such a command waits for the connection', () => {
  it('ends it failed DEVICE_UNREACHABLE, not superseded (a write of it was sent), and no write of it goes out', async ({
    expect,
    onTestFinished,
  }) => {
    const { h, link, ...s } = await secondRefused(onTestFinished);
    const valve = h.device('v1');
    h.submit('s', { device: 'v1', action: 'stop', ttlMs: 20_000 });
    await link.accept();
    const stop = await h.settled('s', 15_000);
    const o = await h.settled('o', 15_000);
    // rejected SUPERSEDED would say o was never written: its first write went out (lost, proven
    // not applied).
    expect(o, h.notes('o').join('\n')).toMatchObject({
      state: 'failed',
      code: 'DEVICE_UNREACHABLE',
    });
    expect(o.detail).toMatch(/already dispatched twice.*the stop s was accepted after it/);
    // The stop was decided on CLOSED (a no-op), and nothing of o reached the valve.
    expect(stop).toMatchObject({ state: 'confirmed' });
    expect(s.handed()).toBe(2);
    expect(valve.writesOfSeq(o.seq!)).toHaveLength(0);
    expect(valve.snapshot().state).toBe('CLOSED');
  }, 60_000);
});

describe('the history cannot be read when a write is to be proven not applied', () => {
  it('the command is left open for the sweep, nothing written; taken up once the journal reads, written once', async ({
    expect,
    onTestFinished,
  }) => {
    // The first write finds no connection (the command goes round: dispatched twice), the
    // second is lost: its proof counts the writes before it that may have left (writesMaybeSent),
    // which reads the history, and that read fails.
    const { logger, lines } = recordingLogger();
    let faults: { armed: boolean; failed: number } | null = null;
    const { h, ...s } = await site(
      onTestFinished,
      {
        lose: [2],
        refuse: [1],
        reopenMs: 300,
        handing: (n) => {
          if (n === 2 && faults !== null) faults.armed = true;
        },
      },
      // No sweep of its own while the history cannot be read: the test runs it.
      { logger, sweepMs: 600_000 },
    );
    faults = historyReadFaults(h.journal);
    const valve = h.device('v1');
    h.submit('o', { device: 'v1', action: 'open', ttlMs: 20_000 });
    await h.until(
      () =>
        lines.some(
          (l) =>
            l.key === 'o' &&
            typeof l.msg === 'string' &&
            /^command (left open|handling failed)/.test(l.msg),
        ),
      15_000,
      'the command left open',
    );
    // The safe side: open, dispatched twice, no third write handed to the driver, nothing in
    // the valve's log (the first write never left the gateway, the second was lost before it).
    expect(faults.failed).toBeGreaterThan(0);
    expect(h.get('o')).toMatchObject({
      state: 'dispatched',
      attempts: 2,
    });
    expect(s.handed()).toBe(2);
    expect(valve.writeLog).toHaveLength(0);
    // The journal reads again: the sweep takes it up, proves the lost write not applied by
    // readback, and sends it once more.
    faults.armed = false;
    h.pipeline.sweep();
    const o = await h.settled('o', 15_000);
    expect(o, h.notes('o').join('\n')).toMatchObject({ state: 'confirmed', attempts: 3 });
    expect(s.handed()).toBe(3);
    expect(valve.writesOfSeq(o.seq!)).toHaveLength(1);
    expect(valve.writeLog).toHaveLength(1);
  }, 60_000);
});

/**
 * The words of a round after the first write was sent (lost, proven not applied) and the second
 * found no connection: the command's first write went out, so an end of the round that says
 * "nothing was written", or that the command never sent its own sequence number, is untrue.
 * Meanwhile another master acts on the valve (receiveWrite: a write as the PLC takes any
 * master's, counted in the valve's log) while the link is refused; the link comes back and the
 * round's fresh read decides.
 */
describe('the words of a round after the first write was sent and proven not applied', () => {
  async function refusedRound(
    onTestFinished: TestContext['onTestFinished'],
  ): Promise<{ h: SimHarness; link: TcpLink; handed: () => number; seq: number }> {
    const s = await secondRefused(onTestFinished);
    return { ...s, seq: s.h.get('o')!.seq! };
  }
  const SENT_FIRST = (seq: number): string =>
    `its first write (sequence number ${seq}) was sent and proven not applied`;

  it('a fresh read echoing its own sequence number: READBACK_MISMATCH saying its first write was sent, nothing since', async ({
    expect,
    onTestFinished,
  }) => {
    const { h, link, handed, seq } = await refusedRound(onTestFinished);
    const valve = h.device('v1');
    // Another master's stop (a no-op at CLOSED) carrying o's sequence number.
    valve.receiveWrite({ code: 3, setpoint: 0, seq });
    await h.until(() => valve.snapshot().seqEcho === seq, 5_000, 'the echo of o’s number');
    await link.accept();
    const o = await h.settled('o', 15_000);
    expect(o, h.notes('o').join('\n')).toMatchObject({
      state: 'failed',
      code: 'READBACK_MISMATCH',
      attempts: 2,
    });
    // Before: "which this command never sent (another master's command) … nothing was written".
    expect(o.detail).not.toMatch(/never sent|nothing was written(?! since)/);
    expect(o.detail).toContain(`the controller already echoes sequence number ${seq}`);
    expect(o.detail).toContain(SENT_FIRST(seq));
    expect(o.detail).toMatch(/nothing was written since$/);
    expect(h.notes('o').at(-1)).toBe(`failed: READBACK_MISMATCH: ${o.detail}`);
    // Ground truth: the other master's write alone reached the valve; no third write handed.
    expect(handed()).toBe(2);
    expect(valve.writeLog).toHaveLength(1);
    expect(valve.writeLog[0]).toMatchObject({ code: 3, seq });
  }, 60_000);

  it('a valve opened meanwhile: the no-op is confirmed saying its first write was sent, nothing since', async ({
    expect,
    onTestFinished,
  }) => {
    const { h, link, handed, seq } = await refusedRound(onTestFinished);
    const valve = h.device('v1');
    // Another master opens the valve.
    valve.receiveWrite({ code: 1, setpoint: 0, seq: 60_001 });
    await h.until(() => valve.snapshot().state === 'OPEN', 5_000, 'the valve open');
    await link.accept();
    const o = await h.settled('o', 15_000);
    expect(o, h.notes('o').join('\n')).toMatchObject({ state: 'confirmed', attempts: 2 });
    // Before: "no-op: the controller shows OPEN; nothing was written".
    const words = `no-op: the controller shows OPEN; ${SENT_FIRST(seq)}, and nothing was written since`;
    expect(o.detail).toBe(words);
    // The history's last entry, as sluicectl show reads it.
    expect(h.notes('o').at(-1)).toBe(`confirmed: OK: ${words}`);
    expect(handed()).toBe(2);
    expect(valve.writesOfSeq(seq)).toHaveLength(0);
    expect(valve.writeLog).toHaveLength(1);
  }, 60_000);
});

/**
 * Such a command taken up by the next life, the pipeline restarted on the same journal after the
 * process died while it waited for the link (h.crash: nothing journaled on the way down). Its
 * history proves its one write that may have left proven not applied (the re-dispatch's proof
 * line) and the write since refused unsent (the no-connection line): it goes round as the live
 * path does, where it ended failed "already dispatched twice" at once with most of its deadline
 * left.
 */
describe('such a command taken up after a restart', () => {
  async function crashedWaiting(
    onTestFinished: TestContext['onTestFinished'],
  ): Promise<{ h: SimHarness; link: TcpLink; seq: number; handed: number; unsent: string[] }> {
    const s = await secondRefused(onTestFinished);
    const seq = s.h.get('o')!.seq!;
    // The line on disk before the crash (it loses the open batch): the next life goes by it.
    await s.h.journal.durable();
    const unsent = unsentLines(s.h, 'o');
    await s.h.crash();
    return { h: s.h, link: s.link, seq, handed: s.handed(), unsent };
  }

  it('goes round with its deadline left: one write in the valve’s log, confirmed', async ({
    expect,
    onTestFinished,
  }) => {
    const { h, link, seq, handed, unsent } = await crashedWaiting(onTestFinished);
    const valve = h.device('v1');
    expect(handed).toBe(2);
    expect(unsent).toHaveLength(1);
    expect(valve.writeLog).toHaveLength(0);
    await link.accept();
    await h.restart();
    // The premise: the next life found the line (the link is back: it writes none itself).
    expect(unsentLines(h, 'o')).toEqual(unsent);
    const o = await h.settled('o', 15_000);
    // Before: failed DEVICE_UNREACHABLE "… already dispatched twice (its first write was not
    // applied either), so it is not sent again".
    expect(o, h.notes('o').join('\n')).toMatchObject({ state: 'confirmed', attempts: 3 });
    expect(o.settledAt!).toBeLessThan(o.deadline);
    expect(h.notes('o')).toContainEqual(
      expect.stringMatching(/^dispatched: taken up: .* proven not applied .*goes round again/),
    );
    // Ground truth: the first write never reached the PLC, the second never left the gateway;
    // the next life's is the valve's only write.
    expect(valve.writesOfSeq(seq)).toHaveLength(1);
    expect(valve.writeLog).toHaveLength(1);
    expect(valve.snapshot().state).toMatch(/^OPEN/);
  }, 60_000);

  it('a history without the proof still ends failed "already dispatched twice", nothing written', async ({
    expect,
    onTestFinished,
  }) => {
    const { h, link, seq, handed, unsent } = await crashedWaiting(onTestFinished);
    expect(handed).toBe(2);
    expect(unsent).toHaveLength(1);
    // The daemon journals no re-dispatch after a write that may have left without its proof;
    // such a history (another version's, a damaged one) is made here by rewording that line in
    // the journal file between the lives.
    const db = new BetterSqlite3(h.path);
    try {
      const changed = db
        .prepare(
          "UPDATE events SET detail = 'redispatch: the first write was sent again' WHERE detail LIKE 'redispatch: %: the first write was not applied'",
        )
        .run().changes;
      expect(changed).toBe(1);
    } finally {
      db.close();
    }
    const valve = h.device('v1');
    await link.accept();
    await h.restart();
    // The premise: the next life found the line, and fails the command for the proof alone
    // (without the line it fails it as well, the second write counted as maybe sent).
    expect(unsentLines(h, 'o')).toEqual(unsent);
    const o = await h.settled('o', 15_000);
    expect(o, h.notes('o').join('\n')).toMatchObject({
      state: 'failed',
      code: 'DEVICE_UNREACHABLE',
      attempts: 2,
    });
    expect(o.detail).toMatch(/already dispatched twice/);
    expect(valve.writesOfSeq(seq)).toHaveLength(0);
    expect(valve.writeLog).toHaveLength(0);
  }, 60_000);
});

/**
 * A history where the write sent and proven not applied is not the first: the first write finds
 * no connection (refused unsent), the round's write (the second dispatch) is lost by the
 * simulator's reset-before fault and proven not applied, and the write sent once more after it
 * (the third dispatch) finds no connection too. Every word of the rounds after it names the
 * second write, where they said "the first write" (the proof's line, the take-up's note, the
 * rounds' ends): the first never left the gateway.
 */
describe('the words of rounds after a write proven not applied that was not the first', () => {
  async function thirdRefused(
    onTestFinished: TestContext['onTestFinished'],
  ): Promise<Site & { seq: number; valve: SimDevice }> {
    // The link comes back 300 ms after the first refusal, never after the third.
    const plan = {
      lose: [2],
      refuse: [1, 3],
      reopenMs: 300 as number | undefined,
      handing: (n: number) => {
        if (n === 3) plan.reopenMs = undefined;
      },
    };
    const s = await site(onTestFinished, plan);
    s.h.submit('o', { device: 'v1', action: 'open', ttlMs: 20_000 });
    await s.h.until(
      () =>
        s.h.notes('o').filter((n) => n.includes('was not sent: no connection to the controller'))
          .length === 2,
      20_000,
      "o's third write refused for want of a connection",
    );
    return { ...s, seq: s.h.get('o')!.seq!, valve: s.h.device('v1') };
  }

  it('the proof names the second write, and the next life goes round saying so: one write, confirmed', async ({
    expect,
    onTestFinished,
  }) => {
    const { h, link, seq, valve, ...s } = await thirdRefused(onTestFinished);
    expect(s.handed()).toBe(3);
    expect(h.get('o')).toMatchObject({ state: 'dispatched', attempts: 3 });
    expect(valve.writeLog).toHaveLength(0);
    const proof = h.notes('o').filter((n) => n.startsWith('dispatched: redispatch: sequence'));
    // Before: "…: the first write was not applied", of a history whose first write never left.
    expect(proof).toHaveLength(1);
    expect(proof[0]).toMatch(/: the second write was not applied$/);
    // The lines on disk before the crash (it loses the open batch): the next life goes by them.
    await h.journal.durable();
    const unsent = unsentLines(h, 'o');
    expect(unsent).toHaveLength(2);
    await h.crash();
    await link.accept();
    await h.restart();
    // The premise: the next life found both lines (the link is back: it writes none itself).
    expect(unsentLines(h, 'o')).toEqual(unsent);
    const o = await h.settled('o', 15_000);
    expect(o, h.notes('o').join('\n')).toMatchObject({ state: 'confirmed', attempts: 4 });
    const notes = h.notes('o');
    expect(notes).toContainEqual(
      expect.stringMatching(
        /^dispatched: taken up: .* after its second write was sent and proven not applied .*goes round again/,
      ),
    );
    expect(notes.join('\n')).not.toMatch(/first write was (sent|not applied)/);
    // Ground truth: the first write never left the gateway, the second never reached the PLC,
    // the third never left; the next life's is the valve's only write.
    expect(valve.writesOfSeq(seq)).toHaveLength(1);
    expect(valve.writeLog).toHaveLength(1);
  }, 60_000);

  it('a valve opened meanwhile: the no-op is confirmed saying its second write was sent, nothing since', async ({
    expect,
    onTestFinished,
  }) => {
    const { h, link, seq, valve, ...s } = await thirdRefused(onTestFinished);
    expect(s.handed()).toBe(3);
    // Another master opens the valve while the link is refused.
    valve.receiveWrite({ code: 1, setpoint: 0, seq: 60_001 });
    await h.until(() => valve.snapshot().state === 'OPEN', 5_000, 'the valve open');
    await link.accept();
    const o = await h.settled('o', 15_000);
    expect(o, h.notes('o').join('\n')).toMatchObject({ state: 'confirmed', attempts: 3 });
    // Before: "its first write (sequence number N) was sent and proven not applied".
    const words = `no-op: the controller shows OPEN; its second write (sequence number ${seq}) was sent and proven not applied, and nothing was written since`;
    expect(o.detail).toBe(words);
    expect(h.notes('o').at(-1)).toBe(`confirmed: OK: ${words}`);
    expect(s.handed()).toBe(3);
    expect(valve.writesOfSeq(seq)).toHaveLength(0);
    expect(valve.writeLog).toHaveLength(1);
  }, 60_000);
});

/**
 * The no-connection line of the write sent once more after the first was proven not applied is
 * not journaled: the journal fails that one write (a double on Journal.note, for a fault no
 * filesystem can aim at one statement; the daemon logs "note not journaled" and its round goes
 * on, the driver having proved the write unsent in that life). To the next life that write may
 * have left the gateway: with the proven one, two may have, and no third is sent (I1 before the
 * deadline) — the command ends failed "already dispatched twice", nothing of it at the valve.
 * A write whose unsent-ness is not durable counts as maybe sent.
 */
describe('the line that says the second write found no connection is not journaled', () => {
  it('after a restart: failed DEVICE_UNREACHABLE "already dispatched twice", no write of it at the valve', async ({
    expect,
    onTestFinished,
  }) => {
    const s = await site(onTestFinished, { lose: [1], refuse: [2] });
    const { h, link } = s;
    const valve = h.device('v1');
    const journal = h.journal;
    const note = journal.note.bind(journal);
    let failed = 0;
    journal.note = (ref, at, detail, intake) => {
      if (detail.includes('was not sent: no connection to the controller')) {
        failed++;
        throw Object.assign(new Error('disk I/O error'), { code: 'SQLITE_IOERR_WRITE' });
      }
      note(ref, at, detail, intake);
    };
    h.submit('o', { device: 'v1', action: 'open', ttlMs: 20_000 });
    await h.until(() => failed > 0, 10_000, "the journal failing o's no-connection line");
    expect(h.get('o')).toMatchObject({ state: 'dispatched', attempts: 2 });
    expect(h.notes('o').some((n) => n.includes('no connection'))).toBe(false);
    const seq = h.get('o')!.seq!;
    await h.crash();
    await link.accept();
    await h.restart();
    const o = await h.settled('o', 15_000);
    expect(o, h.notes('o').join('\n')).toMatchObject({
      state: 'failed',
      code: 'DEVICE_UNREACHABLE',
      attempts: 2,
    });
    // Taken up by readback (its latest write has no line saying it was never sent): proven not
    // applied, it is not sent again.
    expect(o.detail).toMatch(
      /^the write never reached the controller: sequence number \d+ is not echoed .*; it was already dispatched twice, so it is not sent again; nothing was applied$/,
    );
    expect(s.handed()).toBe(2);
    expect(valve.writesOfSeq(seq)).toHaveLength(0);
    expect(valve.writeLog).toHaveLength(0);
  }, 60_000);
});
