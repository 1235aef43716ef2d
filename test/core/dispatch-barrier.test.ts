import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { CommandRecord } from '../../src/core/journal.js';
import type { Action as CommandAction } from '../../src/core/command.js';
import { until } from '../helpers/mosquitto.js';
import { startStack, type Stack } from '../helpers/stack.js';
import { holdThreadPool } from '../helpers/thread-pool.js';

/**
 * What may happen while a command's dispatch is being made durable, before its write (I5: the
 * write waits for the barrier's fdatasync): on a slow or stalled disk that takes as long as the
 * disk wants. Meanwhile an operator may resolve the command, a stop may preempt it, its
 * deadline may pass; each time the write must not follow (SPEC §1 I3, §2, §7). On the real
 * stack (sluice-sim, the drivers, a journal file, the pipeline): the barrier is held by holding
 * libuv's thread pool, where its fdatasync runs (test/helpers/thread-pool.ts). Ground truth:
 * the simulator's write log, and the journal.
 */

let stack: Stack;
let pool: { release: () => Promise<void> } | null = null;
let n = 0;

beforeAll(async () => {
  // Every test here addresses the Modbus valves: no OPC UA PLC (seconds of CPU per stack).
  stack = await startStack({ travelMs: 0, opcua: false });
});

afterEach(async () => {
  await pool?.release();
  pool = null;
});

afterAll(async () => {
  await stack.stop();
});

const identity = { scope: 'plant', devices: 'all' as const };

function submit(action: CommandAction, ttlMs = 30_000, on = stack): CommandRecord {
  n += 1;
  const claim = on.pipeline.submit({
    key: `barrier-${n}-${action}`,
    identity,
    intake: 'test',
    request: { device: 'v1', action, position: null, issuedAt: null, ttlMs },
  });
  expect(claim.kind).toBe('new');
  return claim.record;
}

function state(record: CommandRecord, on = stack): CommandRecord {
  const current = on.pipeline.get(record);
  if (current === undefined) throw new Error(`no command ${record.key}`);
  return current;
}

/** Submits `action` with the barrier held, and waits until its dispatch waits for it. */
async function dispatchedAndHeld(
  action: CommandAction,
  ttlMs?: number,
  on = stack,
): Promise<CommandRecord> {
  pool = holdThreadPool();
  const record = submit(action, ttlMs, on);
  return until(
    () => {
      const current = state(record, on);
      return current.state === 'dispatched' ? current : undefined;
    },
    5_000,
    `${record.key} dispatched`,
  );
}

/** The action that moves the valve from where it rests (so that it is written). */
function toggle(on = stack): CommandAction {
  return on.plant.device('v1').state === 'OPEN' ? 'close' : 'open';
}

/**
 * The device's next command written and confirmed: its worker took it up, so the one before
 * it is done with, write or no write (one command per device at a time).
 */
async function nextCommandConfirmed(on = stack): Promise<CommandRecord> {
  const valve = on.plant.device('v1');
  const next = submit(toggle(on), 30_000, on);
  const settled = await on.pipeline.waitForSettled(next, 10_000);
  expect(settled).toMatchObject({ state: 'confirmed', code: 'OK' });
  expect(settled?.seq).not.toBeNull();
  expect(valve.writesWithSeq(settled?.seq ?? -1)).toBe(1);
  return settled!;
}

/**
 * On `on`, v1 and v2 share the PLC's one connection, one request at a time: a read of v2 that the PLC
 * answers 1.5 s late holds v1's requests in the queue behind it. Resolves once that read has
 * reached the PLC (the connection is busy); `result` is its outcome (null: answered), `done`
 * says whether it is, `clear` ends the fault and waits for it.
 */
async function busyConnection(on: Stack): Promise<{
  readonly result: Promise<unknown>;
  readonly done: () => boolean;
  clear(): Promise<void>;
}> {
  const other = on.plant.device('v2');
  other.setFault({ kind: 'latency', ms: 1_500, on: 'read' });
  const reads = other.readLog.length;
  let done = false;
  const result = on.drivers.bindings
    .find((b) => b.id === 'v2')!
    .driver.read()
    .then(
      () => null,
      (e: unknown) => e,
    )
    .finally(() => {
      done = true;
    });
  const clear = async (): Promise<void> => {
    other.clearFault('latency');
    await result;
  };
  try {
    await until(() => (other.readLog.length > reads ? true : undefined), 2_000, 'the read');
  } catch (error) {
    await clear();
    throw error;
  }
  return { result, done: () => done, clear };
}

/**
 * Watches the moment the pipeline hands v1's writes to its driver (passed through unchanged):
 * `handed(seq)` resolves once the write with that sequence number was handed over.
 */
function watchWrites(on: Stack): { handed(seq: number): Promise<void>; restore(): void } {
  const binding = on.drivers.bindings.find((b) => b.id === 'v1')!;
  const seen: number[] = [];
  const write = binding.driver.write.bind(binding.driver);
  binding.driver.write = (command, signal) => {
    seen.push(command.seq);
    return write(command, signal);
  };
  return {
    handed: async (seq) => {
      await until(() => (seen.includes(seq) ? true : undefined), 2_000, `the write of seq ${seq}`);
    },
    restore: () => {
      binding.driver.write = write;
    },
  };
}

describe('while the dispatch is being made durable', () => {
  it('a command an operator resolves is not written', async () => {
    const valve = stack.plant.device('v1');
    const held = await dispatchedAndHeld(toggle());
    const resolved = stack.pipeline.resolve(held, 'ops@test', 'valve under maintenance');
    expect(resolved.state).toBe('failed');
    // Its write waits for the barrier: the outcome says it is not sent (and it is not, below).
    expect(resolved.detail).toMatch(
      /had been dispatched and was not yet sent, and it is not sent$/,
    );
    await pool?.release();
    await nextCommandConfirmed();
    expect(state(held)).toMatchObject({ state: 'failed', code: 'RESOLVED_BY_OPERATOR' });
    expect(valve.writesWithSeq(held.seq ?? -1)).toBe(0);
  });

  it('a command a stop preempts is superseded, never written', async () => {
    const valve = stack.plant.device('v1');
    const held = await dispatchedAndHeld(toggle());
    const stop = submit('stop');
    await pool?.release();
    const stopped = await stack.pipeline.waitForSettled(stop, 10_000);
    expect(stopped?.state).toBe('confirmed');
    await nextCommandConfirmed();
    expect(state(held)).toMatchObject({ state: 'rejected', code: 'SUPERSEDED' });
    expect(state(held).detail).toContain(stop.key);
    expect(valve.writesWithSeq(held.seq ?? -1)).toBe(0);
  });

  it('a command whose deadline passes is rejected STALE_COMMAND, never written (I3)', async () => {
    const valve = stack.plant.device('v1');
    const held = await dispatchedAndHeld(toggle(), 1_000);
    // The event itself: the deadline passes while the barrier is held.
    await until(() => (Date.now() > held.deadline ? true : undefined), 5_000, 'the deadline');
    await pool?.release();
    const settled = await stack.pipeline.waitForSettled(held, 10_000);
    expect(settled).toMatchObject({ state: 'rejected', code: 'STALE_COMMAND' });
    // Kept back after the barrier, before the write is handed to the driver: the driver's own
    // deadline check ("passed before the write could be sent") would also keep it back, so
    // the write log alone cannot tell whether the check after the barrier ran.
    expect(settled?.detail).toMatch(
      /passed \d+ ms ago, while the dispatch was being made durable; nothing was written$/,
    );
    await nextCommandConfirmed();
    expect(valve.writesWithSeq(held.seq ?? -1)).toBe(0);
  });

  it('with nothing in the way, the held command is written once when the barrier returns', async () => {
    // The control: the same hold, released, lets the write through, once.
    const valve = stack.plant.device('v1');
    const held = await dispatchedAndHeld(toggle());
    expect(valve.writesWithSeq(held.seq ?? -1)).toBe(0);
    await pool?.release();
    const settled = await stack.pipeline.waitForSettled(held, 10_000);
    expect(settled).toMatchObject({ state: 'confirmed', code: 'OK' });
    expect(valve.writesWithSeq(held.seq ?? -1)).toBe(1);
  });
});

describe('while a second dispatch is being made durable (the first write provably not applied)', () => {
  /**
   * The first write is answered 0x0B (gateway target failed to respond) and not applied: its
   * outcome unknown, the readbacks prove it not applied after the redispatch guard, and the
   * command is dispatched once more (src/core/redispatch.ts). The pool is held once the
   * simulator has answered the first write, so that the second dispatch's barrier waits.
   */
  async function redispatchedAndHeld(ttlMs?: number): Promise<CommandRecord> {
    const valve = stack.plant.device('v1');
    valve.setFault({ kind: 'exception', code: 0x0b, on: 'write', when: 'before', count: 1 });
    const record = submit(toggle(), ttlMs);
    // The fault is used up when the first write arrives.
    await until(() => (valve.faults().length === 0 ? true : undefined), 5_000, 'the first write');
    pool = holdThreadPool();
    return until(
      () => {
        const current = state(record);
        return current.attempts === 2 && current.state === 'dispatched' ? current : undefined;
      },
      10_000,
      `${record.key} dispatched again`,
    );
  }

  it('a command an operator resolves is not written again', async () => {
    const valve = stack.plant.device('v1');
    const held = await redispatchedAndHeld();
    stack.pipeline.resolve(held, 'ops@test', 'gateway serial line under repair');
    await pool?.release();
    await nextCommandConfirmed();
    expect(state(held)).toMatchObject({ state: 'failed', code: 'RESOLVED_BY_OPERATOR' });
    expect(valve.writesWithSeq(held.seq ?? -1)).toBe(0);
  });

  it('a command whose deadline passes is not written again (I3)', async () => {
    const valve = stack.plant.device('v1');
    const held = await redispatchedAndHeld(2_500);
    await until(() => (Date.now() > held.deadline ? true : undefined), 5_000, 'the deadline');
    await pool?.release();
    const settled = await stack.pipeline.waitForSettled(held, 10_000);
    expect(settled).toMatchObject({ state: 'failed', code: 'DEVICE_UNREACHABLE' });
    expect(settled?.detail).toContain('not sent again');
    await nextCommandConfirmed();
    expect(valve.writesWithSeq(held.seq ?? -1)).toBe(0);
  });
});

describe('while the write waits for its PLC', () => {
  // A stack of its own: its Modbus PLC answers a request within 2 s before the request counts
  // as lost (the other stack's 300 ms would cut the wait short and reconnect).
  let slow: Stack;
  beforeAll(async () => {
    slow = await startStack({
      travelMs: 0,
      opcua: false,
      modbusRequestTimeoutMs: 2_000,
      timing: { redispatchGuardMs: 2_500 },
    });
  });
  afterAll(async () => {
    await slow.stop();
  });

  it('a write still queued at its deadline is never sent: rejected STALE_COMMAND (I3)', async () => {
    // A read of v2 that the PLC answers late holds v1's write in the queue behind it, past
    // v1's deadline.
    const valve = slow.plant.device('v1');
    const held = await dispatchedAndHeld(toggle(slow), 1_000, slow);
    const busy = await busyConnection(slow);
    try {
      expect(Date.now()).toBeLessThan(held.deadline);
      await pool?.release();
      const settled = await slow.pipeline.waitForSettled(held, 10_000);
      expect(settled).toMatchObject({ state: 'rejected', code: 'STALE_COMMAND' });
      expect(settled?.detail).toContain('while it waited for the PLC');
      expect(await busy.result).toBeNull();
    } finally {
      await busy.clear();
    }
    expect(valve.writesWithSeq(held.seq ?? -1)).toBe(0);
    // The device goes on: its next command is written once and confirmed.
    await nextCommandConfirmed(slow);
  });
  it('a write still queued when a stop preempts its command is never sent: superseded (SPEC §2)', async () => {
    // As above, v2's read that the PLC answers late holds v1's write in the connection's
    // queue; a stop comes for v1 meanwhile. The write must not follow: the command was not
    // written when the stop came.
    const valve = slow.plant.device('v1');
    const held = await dispatchedAndHeld(toggle(slow), 30_000, slow);
    const writes = watchWrites(slow);
    const busy = await busyConnection(slow);
    try {
      await pool?.release();
      await writes.handed(held.seq!);
      // The write is queued behind the read, whose answer the PLC still holds.
      expect(busy.done()).toBe(false);
      expect(valve.writesWithSeq(held.seq ?? -1)).toBe(0);
      const stop = submit('stop', 30_000, slow);
      const settled = await slow.pipeline.waitForSettled(held, 10_000);
      expect(settled).toMatchObject({ state: 'rejected', code: 'SUPERSEDED' });
      // At once: the write left the queue, it did not wait for the read ahead of it.
      expect(busy.done()).toBe(false);
      const stopped = await slow.pipeline.waitForSettled(stop, 10_000);
      expect(stopped?.state).toBe('confirmed');
      expect(settled?.detail).toContain(stop.key);
      expect(settled?.detail).toContain('was not sent');
      expect(await busy.result).toBeNull();
    } finally {
      writes.restore();
      await busy.clear();
    }
    // Ground truth: the controller never received the preempted command's write.
    expect(valve.writesWithSeq(held.seq ?? -1)).toBe(0);
    await nextCommandConfirmed(slow);
    expect(valve.writesWithSeq(held.seq ?? -1)).toBe(0);
  });
});

describe('when the daemon stops while the write waits for its PLC', () => {
  it('the write is never sent, and the history says so', async () => {
    const own = await startStack({
      travelMs: 0,
      opcua: false,
      modbusRequestTimeoutMs: 2_000,
    });
    try {
      const valve = own.plant.device('v1');
      const held = await dispatchedAndHeld(toggle(own), 30_000, own);
      const writes = watchWrites(own);
      const busy = await busyConnection(own);
      try {
        await pool?.release();
        await writes.handed(held.seq!);
        expect(busy.done()).toBe(false);
        // A stop of the daemon that gives in-flight commands no time (the bound passed).
        await own.pipeline.stop(0);
        expect(busy.done()).toBe(false);
      } finally {
        await busy.clear();
      }
      // Ground truth: the write never reached the PLC, even once its connection was free.
      expect(valve.writesWithSeq(held.seq ?? -1)).toBe(0);
      // The command is left to recovery; its history says the write was not sent.
      expect(own.journal.get(held)?.state).toBe('dispatched');
      expect(own.journal.history(held).at(-1)?.detail).toMatch(
        /^the write \(sequence number \d+\) was not sent: withdrawn as the daemon stopped/,
      );
    } finally {
      await own.stop();
    }
  });
});
