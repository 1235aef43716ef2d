import { describe, expect, it } from 'vitest';
import { JournalUnavailableError } from '../../src/core/errors.js';
import type { NewCommand } from '../../src/core/journal.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { heldOnLink, killedLives } from '../helpers/killed-life.js';
import { issuerCommand, stopEnded } from '../helpers/new-command.js';
import { statementFaults, type ReadFaults } from '../helpers/read-faults.js';
import type { SimHarness } from '../helpers/sim-harness.js';

/**
 * I2 and SPEC §2 at a start whose recovery cannot read the journal (pipeline.ts, recover()):
 * every open command, the stops since the oldest of them, or the history of a device's last
 * dispatch. Recovery fails closed: nothing is taken up, and every command is refused as when
 * the journal cannot be written (JournalUnavailableError: HTTPS 503, no MQTT PUBACK, nothing
 * claimed) until a run of the sweep has read the journal. Recovery's reads used to be passed
 * over: a close the broker handed over at the start was confirmed a no-op at CLOSED while an
 * earlier life's open was still on its way, and the valve opened after it; a command accepted
 * before a stop that had ended ran after it.
 *
 * sluice-sim, the real pipeline and drivers, and the SQLite journal across two lives. One
 * double: the read failing (test/helpers/read-faults.ts, statementFaults), a fault no disk or
 * lock can aim at recovery's read alone. Ground truth: the simulator's write log and state, the
 * journal's rows.
 */
const lives = killedLives();

/** The valve's close, as a client sends it again until the gateway takes it. */
function submitUntilTaken(h: SimHarness): Promise<void> {
  return h.until(
    () => {
      try {
        h.submit('close', { device: 'v1', action: 'close', ttlMs: 10_000 });
        return true;
      } catch (error) {
        if (!(error instanceof JournalUnavailableError)) throw error;
        return false;
      }
    },
    5_000,
    'the close taken',
  );
}

/** The open's write held on the link 2 s, past its request timeout (1 s), within its guard. */
const HELD = {
  travelMs: 100,
  requestTimeoutMs: 1_000,
  timing: { redispatchGuardMs: 1_500, confirmTimeoutMs: 6_000 },
} as const;

describe('recovery that cannot read the journal', () => {
  it('the open commands: a close is refused until they are read, then written after the earlier life open', async () => {
    const h = await lives.start(HELD);
    const v1 = h.device('v1');
    await heldOnLink(h, 'v1', 2_000, 'open', { device: 'v1', action: 'open', ttlMs: 10_000 });
    void lives.kill(h);
    let faults: ReadFaults | undefined;
    await h.restart((journal) => {
      faults = statementFaults(journal, 'openRefs');
    });
    expect(faults?.failed).toBe(1);
    // As a broker hands over the commands it kept for the gateway once the intake connects.
    expect(() => h.submit('close', { device: 'v1', action: 'close', ttlMs: 10_000 })).toThrow(
      JournalUnavailableError,
    );
    expect(h.get('close')).toBeUndefined();
    faults!.armed = false;
    await submitUntilTaken(h);
    const open = await h.settled('open', 15_000);
    const close = await h.settled('close', 15_000);
    await h.until(() => v1.snapshot().published.state === 'CLOSED', 5_000, 'CLOSED');
    expect(open).toMatchObject({ state: 'confirmed' });
    expect(close).toMatchObject({ state: 'confirmed' });
    // The open landed, and the close was written after it: never decided without it.
    expect(v1.writeLog.map((w) => [w.seq, w.outcome])).toEqual([
      [open.seq, 'accepted'],
      [close.seq, 'accepted'],
    ]);
  }, 40_000);

  it("the history of a device's last dispatch: a close is refused until it is read, then waits for that write", async () => {
    // A stroke of 1 s: the valve is still opening when the close is decided.
    const h = await lives.start({ ...HELD, travelMs: 1_000 });
    const v1 = h.device('v1');
    await heldOnLink(h, 'v1', 2_000, 'open', { device: 'v1', action: 'open', ttlMs: 10_000 });
    // Ended while its write is on its way: its fate is open.
    h.pipeline.resolve({ scope: 'plant', key: 'open' }, 'ops@test', 'clearing it');
    // On disk before the crash, as an intake or the admin endpoint answers only then
    // (a crash loses the batch still open).
    await h.journal.durable();
    void lives.kill(h);
    let faults: ReadFaults | undefined;
    await h.restart((journal) => {
      faults = statementFaults(journal, 'history', (params) => params[1] === 'open');
    });
    expect(faults?.failed).toBe(1);
    expect(() => h.submit('close', { device: 'v1', action: 'close', ttlMs: 10_000 })).toThrow(
      JournalUnavailableError,
    );
    expect(h.get('close')).toBeUndefined();
    faults!.armed = false;
    await submitUntilTaken(h);
    const close = await h.settled('close', 15_000);
    const open = h.get('open')!;
    // Decided once the controller showed the open taken: a close is no move from OPENING (I4).
    expect(close).toMatchObject({ state: 'rejected', code: 'ILLEGAL_TRANSITION' });
    expect(close.observed).toMatchObject({ state: 'OPENING', seq: open.seq });
    expect(v1.writeLog.map((w) => [w.seq, w.outcome])).toEqual([[open.seq, 'accepted']]);
  }, 40_000);

  it('the stops since the oldest open command: a command accepted before a stop that has ended is superseded once they are read, never written', async () => {
    const h = await lives.start({ warm: true });
    await lives.kill(h);
    // The journal as a life leaves it that died before the open's rejection was made again
    // (stop-supersession-lost.test.ts): the stop ended, the open still `accepted`.
    const journal = SqliteJournal.open({ path: h.path, busyTimeoutMs: 500 });
    const now = Date.now();
    const command = (key: string, action: 'open' | 'stop'): NewCommand => ({
      ...issuerCommand(key, 'v1', now),
      action,
    });
    journal.claim(command('a', 'open'));
    stopEnded(journal, command('s', 'stop'));
    await journal.durable();
    journal.close();
    let faults: ReadFaults | undefined;
    await h.restart((j) => {
      faults = statementFaults(j, 'stopsSince');
    });
    // Until the sweep's next run has read them again, and failed again, nothing takes it up.
    await h.until(
      () => (faults?.failed ?? 0) >= 2 || h.get('a')?.state !== 'accepted',
      5_000,
      'a second failed read',
    );
    expect(h.get('a')?.state).toBe('accepted');
    faults!.armed = false;
    const a = await h.settled('a');
    expect(a).toMatchObject({ state: 'rejected', code: 'SUPERSEDED', seq: null });
    expect(a.detail).toMatch(/^superseded by the stop s, /);
    expect(h.device('v1').writeLog).toEqual([]);
    expect(h.journal.listOpen()).toEqual([]);
  }, 30_000);
});
