import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig, type SluiceConfig } from '../../src/config/config.js';
import type { CommandRecord } from '../../src/core/journal.js';
import { withheldNote } from '../../src/core/redispatch.js';
import { Daemon } from '../../src/daemon/daemon.js';
import type { Plant } from '../../simulators/plant.js';
import { startModbusPlant, writeTokenSite } from '../helpers/daemon-site.js';
import { tempDir } from '../helpers/fixtures.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { failFdatasync } from '../helpers/failing-fdatasync.js';
import { httpsRequest, metricSample } from '../helpers/loopback-https.js';
import { until } from '../helpers/mosquitto.js';

/**
 * Re-dispatches in /metrics (`sluice_device_redispatches_total{device, reason}`) of a real
 * daemon against sluice-sim over real sockets, read over HTTPS: a second write of a command
 * whose first was provably never applied, for each reason it was in doubt — its answer lost
 * (the connection reset before the write reached the controller), an earlier life of the daemon
 * that sent it (stopped while the command waited for its proof), a write withdrawn unsent
 * as the daemon stopped (it waited to be sent again after a busy answer), and a write withheld
 * unsent because the journal failed to make its dispatch durable. Ground truth: the
 * simulator's write log (each command's sequence number written once) and the journal (two
 * dispatches). The valves are warm (their echo is not the power-up one), so that a readback
 * can prove a write not applied over a new connection.
 */

const TOKEN = 'redispatch-metrics-token';
const SCOPE = 'scada';

let plant: Plant;
let config: SluiceConfig;
let daemon: Daemon;
let cert: string;
let cleanup: () => void;

async function startDaemon(): Promise<void> {
  // No time for in-flight commands at a stop: they stay journaled as they are.
  daemon = await Daemon.start(config, {
    logger: pino({ level: 'silent' }),
    monitorIntervalMs: 200,
    shutdownBoundMs: 0,
  });
}

function post(key: string, body: unknown, headers: Record<string, string> = {}) {
  return httpsRequest(
    { port: daemon.https!.port, ca: cert, token: TOKEN },
    'POST',
    '/v1/commands',
    { 'idempotency-key': key, ...headers },
    body,
  );
}

/** The sample of `name` with exactly these labels; 0 when the scrape has none. */
function sample(name: string, labels: Record<string, string>): Promise<number> {
  return metricSample({ port: daemon.https!.port, ca: cert }, name, labels);
}

async function redispatches(device: string): Promise<Record<string, number>> {
  const counts: Record<string, number> = {};
  for (const reason of ['lost_answer', 'restart', 'withdrawn', 'withheld', 'no_connection']) {
    counts[reason] = await sample('sluice_device_redispatches_total', { device, reason });
  }
  return counts;
}

/** Every reason's count: 0 but those given. */
function only(counts: Record<string, number>): Record<string, number> {
  return { lost_answer: 0, restart: 0, withdrawn: 0, withheld: 0, no_connection: 0, ...counts };
}

async function settled(key: string): Promise<CommandRecord> {
  const record = await daemon.pipeline.waitForSettled({ scope: SCOPE, key }, 20_000);
  if (record === undefined) throw new Error(`${key} did not settle`);
  return record;
}

/** The device's active fault of this kind, if any (a `count` fault is gone once used up). */
function activeFault(device: string, kind: string): { remaining?: number } | undefined {
  return plant
    .device(device)
    .faults()
    .find((f) => f.kind === kind);
}

beforeAll(async () => {
  const made = tempDir('sluice-metrics-redispatch-');
  cleanup = made.cleanup;
  plant = await startModbusPlant({
    v1: { profile: 'valve', base: 0, travelMs: 200 },
    v2: { profile: 'valve', base: 100, travelMs: 200 },
  });
  let configPath: string;
  ({ configPath, cert } = await writeTokenSite(made.dir, plant, {
    gatewayId: 'redispatch',
    token: TOKEN,
    scope: SCOPE,
    // The next life proves the last one's lost write not applied no sooner than the confirm
    // timeout from its journal lock: 4 s (above the 200 ms travel and 300 + 2500 + 300 + 100 ms
    // of the Modbus request timeout, the shipped guard and a readback), not the shipped 8 s,
    // which these counts do not depend on.
    timing: { confirmTimeoutMs: 4_000 },
  }));
  config = loadConfig(configPath, { env: {} });
  await startDaemon();
  // Warm: each valve takes a command, so that its echo is not its power-up one.
  for (const device of ['v1', 'v2']) {
    const warm = await post(`warm-${device}`, { device, action: 'open' });
    expect(warm.status, warm.body).toBe(200);
  }
}, 60_000);

afterAll(async () => {
  await daemon.stop();
  await plant.stop();
  cleanup();
}, 30_000);

describe('re-dispatches in /metrics, by reason', () => {
  it('lost_answer: the connection reset before the write reached the controller', async () => {
    const valve = plant.device('v2');
    valve.setFault({ kind: 'reset', when: 'before', on: 'write', count: 1 });
    const answer = await post('lost-answer', { device: 'v2', action: 'close' });
    expect(answer.status, answer.body).toBe(200);
    const record = await settled('lost-answer');
    // Ground truth: the reset used up, two dispatches journaled, one write taken.
    expect(activeFault('v2', 'reset')).toBeUndefined();
    expect(record).toMatchObject({ state: 'confirmed', attempts: 2 });
    expect(valve.writesWithSeq(record.seq!)).toBe(1);
    expect(await redispatches('v2')).toEqual(only({ lost_answer: 1 }));
    expect(await redispatches('v1')).toEqual(only({}));
  });

  it('restart and withdrawn: commands left in doubt by a stop, written again by the next life', async () => {
    const v1 = plant.device('v1');
    const v2 = plant.device('v2');
    const async = { prefer: 'respond-async' };
    // v1 (OPEN): its close is answered busy, and waits to be sent again.
    v1.setFault({ kind: 'exception', code: 6, on: 'write', count: 100_000 });
    expect(
      (await post('withdrawn', { device: 'v1', action: 'close', ttlMs: 60_000 }, async)).status,
    ).toBe(202);
    await until(
      () => ((activeFault('v1', 'exception')?.remaining ?? 0) < 100_000 ? true : undefined),
      10_000,
      'a busy answer to the close of v1',
    );
    // v2 (CLOSED): its open is lost with the connection, and waits for the guard's proof.
    v2.setFault({ kind: 'reset', when: 'before', on: 'write', count: 1 });
    expect(
      (await post('restart', { device: 'v2', action: 'open', ttlMs: 60_000 }, async)).status,
    ).toBe(202);
    await until(
      () => (activeFault('v2', 'reset') === undefined ? true : undefined),
      10_000,
      'the write of v2 lost with its connection',
    );
    // Stopped now, well within the guard (2.5 s): neither command is settled or written again.
    await daemon.stop();
    v1.clearFaults();
    v2.clearFaults();
    const writesBefore = { v1: v1.writeLog.length, v2: v2.writeLog.length };

    await startDaemon();
    const [withdrawn, restart] = [await settled('withdrawn'), await settled('restart')];
    // Ground truth: each command dispatched twice, its sequence number written once.
    expect(withdrawn).toMatchObject({ state: 'confirmed', attempts: 2 });
    expect(restart).toMatchObject({ state: 'confirmed', attempts: 2 });
    expect(v1.writesWithSeq(withdrawn.seq!)).toBe(1);
    expect(v2.writesWithSeq(restart.seq!)).toBe(1);
    expect(v1.writeLog.length).toBe(writesBefore.v1 + 1);
    expect(v2.writeLog.length).toBe(writesBefore.v2 + 1);
    // This life's counts: the last life's lost answer is not among them.
    expect(await redispatches('v1')).toEqual(only({ withdrawn: 1 }));
    expect(await redispatches('v2')).toEqual(only({ restart: 1 }));
  });

  it('withheld: the dispatch could not be made durable, the write withheld, then taken up', async () => {
    const v1 = plant.device('v1');
    const writesBefore = v1.writeLog.length;
    // Toward the other end, so that it takes a write (v1 is closed after the case above).
    const action = v1.state === 'OPEN' ? 'close' : 'open';
    // The command's fresh read is held on the link, so that the failing flush below is armed
    // after its claim's barrier (the 202) and before its dispatch's.
    v1.setFault({ kind: 'stall', on: 'read', count: 1 });
    const accepted = await post(
      'withheld',
      { device: 'v1', action, ttlMs: 60_000 },
      { prefer: 'respond-async' },
    );
    expect(accepted.status, accepted.body).toBe(202);
    // A double for the one fault no real part here produces on demand: an fdatasync that
    // fails with EIO (a disk's write error). Only the next call fails: the dispatch's barrier.
    const disk = failFdatasync(1);
    try {
      v1.clearFaults();
      await until(() => (disk.failures === 1 ? true : undefined), 10_000, 'the failed flush');
    } finally {
      disk.restore();
    }
    // The journal recovers; the sweep takes the command up, known never sent: decided again on
    // a fresh read, it is written once.
    const record = await settled('withheld');
    expect(record).toMatchObject({ state: 'confirmed', attempts: 2 });
    expect(v1.writesWithSeq(record.seq!)).toBe(1);
    expect(v1.writeLog.length).toBe(writesBefore + 1);
    const journal = SqliteJournal.open({ path: config.journal.path!, readonly: true });
    try {
      const notes = journal
        .history({ scope: SCOPE, key: 'withheld' })
        .filter((e) => e.from === 'dispatched' && e.to === 'dispatched')
        .map((e) => e.detail);
      expect(notes).toContain(withheldNote(record.seq!, true, 'decided again'));
      expect(notes.join('\n')).not.toContain('earlier life');
    } finally {
      journal.close();
    }
    expect(await redispatches('v1')).toEqual(only({ withdrawn: 1, withheld: 1 }));
  });
});
