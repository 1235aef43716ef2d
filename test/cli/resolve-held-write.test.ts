import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mosquittoAvailable, until } from '../helpers/mosquitto.js';
import { Site } from '../reliability/site.js';
import { sluicectl } from './helpers.js';

/**
 * An operator resolves a command whose write the controller acknowledged and holds (a busy
 * handshake: the sim's `hold`, received writes wait in arrival order, not in the image), and a
 * close queued behind it comes up. Decided on the image without the held open, the close was
 * confirmed a no-op at CLOSED, and the controller took the open 44 ms later: a close reported
 * confirmed, the valve open (I2). It now waits for the open's echo and is decided on the image
 * that shows it (previous-write.ts). Real sluiced, sluice-sim, the journal; asserted on the
 * sim's write log and final state and on the journal.
 */
const real = mosquittoAvailable();
let site: Site;

describe.skipIf(!real)('a command queued behind a resolved command whose write is held', () => {
  beforeAll(async () => {
    // Travel 0: the open, once taken, is OPEN at that scan, so the close is a legal write then.
    site = await Site.start({
      gatewayId: 'resolve-held',
      travelMs: 0,
      timing: { confirmTimeoutMs: 30_000, defaultTtlMs: 60_000 },
    });
    await site.startDaemon();
  }, 90_000);
  afterAll(async () => {
    await site.kill();
    await site.close();
  });

  it('is decided on the image that shows the held open taken, never a no-op before it', async () => {
    const valve = site.plant.device('mb-valve-1');
    expect(valve.snapshot().state).toBe('CLOSED');
    valve.setFault({ kind: 'hold' });
    const open = await site.postCommand('open-1', { device: 'mb-valve-1', action: 'open' });
    expect(open.status).toBe(202);
    // Received (and so acknowledged: the hold keeps the write from the scan, not the reply).
    await until(() => (valve.counters.writesReceived === 1 ? true : undefined), 10_000);
    const close = await site.postCommand('close-1', { device: 'mb-valve-1', action: 'close' });
    expect(close.status).toBe(202);
    const resolved = await sluicectl(
      ['--config', site.configPath, 'resolve', 'open-1', '--as', 'failed', '--reason', 'checked'],
      { timeoutMs: 30_000 },
    );
    expect(resolved.code).toBe(0);

    // The close comes up and waits for the open (its history says so), or, as it did, ends at
    // once: still open is what the journal must show while the controller holds the open.
    const seen = await until(() => {
      const record = site.records().find((r) => r.key === 'close-1');
      if (record === undefined) return undefined;
      if (record.state !== 'accepted' && record.state !== 'dispatched')
        return { record, note: null };
      const note = site.history(record).find((e) => e.detail.startsWith('not decided yet:'));
      return note === undefined ? undefined : { record, note };
    }, 10_000);
    expect(seen.record.detail ?? '').not.toMatch(/no-op/);
    expect(seen.record.state).toBe('accepted');
    expect(seen.note?.detail).toContain('open-1 (identity plant, sequence number 1)');
    expect(valve.writeLog.map((e) => e.seq)).toEqual([1]);
    expect(valve.snapshot().state).toBe('CLOSED');

    // The hold ends: the controller takes the open, then the close is decided and written.
    valve.clearFaults();
    const done = await until(() => {
      const record = site.records().find((r) => r.key === 'close-1');
      return record !== undefined && record.state !== 'accepted' && record.state !== 'dispatched'
        ? record
        : undefined;
    }, 15_000);
    expect(done.state).toBe('confirmed');
    expect(done.detail ?? '').not.toMatch(/no-op/);
    expect(done.seq).toBe(2);
    expect(done.observed?.seq).toBe(2);
    // Ground truth: the open taken first, then the close, each written once; the valve closed.
    const log = valve.writeLog.map((e) => ({ seq: e.seq, outcome: e.outcome }));
    expect(log).toEqual([
      { seq: 1, outcome: 'accepted' },
      { seq: 2, outcome: 'accepted' },
    ]);
    await until(() => (valve.snapshot().state === 'CLOSED' ? true : undefined), 5_000);
    expect(valve.snapshot().seqEcho).toBe(2);
    // The close was dispatched only after the controller had taken the open.
    const openTaken = valve.writeLog[0]?.settledAt ?? Number.POSITIVE_INFINITY;
    expect(valve.writeLog[1]?.receivedAt ?? 0).toBeGreaterThanOrEqual(openTaken);
    expect(site.verify()).toEqual([]);
  }, 60_000);

  it('a stop is written at once behind the held open, and the controller takes both in order', async () => {
    const valve = site.plant.device('mb-valve-2');
    expect(valve.snapshot().state).toBe('CLOSED');
    valve.setFault({ kind: 'hold' });
    const open = await site.postCommand('open-2', { device: 'mb-valve-2', action: 'open' });
    expect(open.status).toBe(202);
    await until(() => (valve.counters.writesReceived === 1 ? true : undefined), 10_000);
    const resolved = await sluicectl(
      ['--config', site.configPath, 'resolve', 'open-2', '--as', 'failed', '--reason', 'checked'],
      { timeoutMs: 30_000 },
    );
    expect(resolved.code).toBe(0);
    const stop = await site.postCommand('stop-2', { device: 'mb-valve-2', action: 'stop' });
    expect(stop.status).toBe(202);

    // Written while the controller still holds the open (not a no-op at CLOSED that ends at
    // once), and open until a readback shows it taken.
    const seen = await until(() => {
      const record = site.records().find((r) => r.key === 'stop-2');
      if (record === undefined) return undefined;
      if (record.state !== 'accepted' && record.state !== 'dispatched') return record;
      return valve.counters.writesReceived === 2 ? record : undefined;
    }, 10_000);
    expect(seen.detail ?? '').not.toMatch(/no-op/);
    expect(seen.state).toBe('dispatched');
    expect(valve.writeLog.map((e) => ({ seq: e.seq, outcome: e.outcome }))).toEqual([
      { seq: 1, outcome: null },
      { seq: 2, outcome: null },
    ]);

    valve.clearFaults();
    const done = await until(() => {
      const record = site.records().find((r) => r.key === 'stop-2');
      return record?.state === 'confirmed' || record?.state === 'failed' ? record : undefined;
    }, 15_000);
    expect(done.state).toBe('confirmed');
    expect(done.observed?.seq).toBe(2);
    // Ground truth: the open taken, then the stop; the valve stopped, not open.
    expect(valve.writeLog.map((e) => ({ seq: e.seq, outcome: e.outcome }))).toEqual([
      { seq: 1, outcome: 'accepted' },
      { seq: 2, outcome: 'accepted' },
    ]);
    expect(valve.snapshot().state).toBe('STOPPED');
    expect(valve.snapshot().seqEcho).toBe(2);
    expect(site.verify()).toEqual([]);
  }, 60_000);

  it('a queued command an operator resolves no longer counts as waiting for its device', async () => {
    const valve = site.plant.device('mb-actuator');
    valve.setFault({ kind: 'hold' });
    const held = await site.postCommand('move-3', {
      device: 'mb-actuator',
      action: 'move',
      position: 40,
    });
    expect(held.status).toBe(202);
    await until(() => (valve.counters.writesReceived === 1 ? true : undefined), 10_000);
    const queued = await site.postCommand('move-4', {
      device: 'mb-actuator',
      action: 'move',
      position: 60,
    });
    expect(queued.status).toBe(202);
    const device = async (): Promise<{ queued: number; inFlight: string | null }> =>
      JSON.parse((await site.https('GET', '/v1/devices/mb-actuator')).body) as {
        queued: number;
        inFlight: string | null;
      };
    await until(async () => ((await device()).queued === 1 ? true : undefined), 10_000);
    const resolved = await sluicectl(
      ['--config', site.configPath, 'resolve', 'move-4', '--as', 'failed', '--reason', 'not now'],
      { timeoutMs: 30_000 },
    );
    expect(resolved.code).toBe(0);
    // The journal has it failed; the device's count and the metric say the same.
    expect(site.records().find((r) => r.key === 'move-4')?.state).toBe('failed');
    expect(await device()).toMatchObject({ queued: 0, inFlight: 'move-3' });
    const metrics = (await site.https('GET', '/metrics')).body;
    expect(metrics).toMatch(/^sluice_device_queue_length\{device="mb-actuator"\} 1$/m);
    expect(valve.writeLog.map((e) => e.seq)).toEqual([1]);
    valve.clearFaults();
  }, 60_000);
});
