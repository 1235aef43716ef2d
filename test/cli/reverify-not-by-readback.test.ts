import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CommandRecord } from '../../src/core/journal.js';
import { mosquittoAvailable, until } from '../helpers/mosquitto.js';
import { Site } from '../reliability/site.js';
import { sluicectlInProcess } from './helpers.js';

/**
 * `sluicectl reverify` waits for the command to end, and it may end otherwise meanwhile: its
 * confirm timeout passing while no read of its device answers (failed READBACK_TIMEOUT on the
 * last readback, taken before the request), another operator's resolve. Either was printed
 * "SETTLED by a fresh readback: …", where no readback since the request had been taken, and the
 * operator would take the outcome for what a read of the device had just shown. Real sluiced
 * (its admin endpoint), sluice-sim with the valve's handshake held (the write received, never
 * echoed) and its reads stalled; ground truth: the journal, where the outcome's readback was
 * requested before the reverify's note.
 */
const real = mosquittoAvailable();
let site: Site;

function settledRecord(key: string): CommandRecord | undefined {
  const record = site.records().find((r) => r.key === key);
  return record !== undefined && record.state !== 'accepted' && record.state !== 'dispatched'
    ? record
    : undefined;
}

/** When the reverify was noted in the command's history (gateway ms). */
function reverifyNoted(key: string): number | undefined {
  const record = site.records().find((r) => r.key === key);
  if (record === undefined) return undefined;
  return site.history(record).find((e) => e.detail.startsWith('reverify requested by'))?.at;
}

/**
 * An open of `device` written and held by its controller, read back after the write, whose
 * reads then stall. The stall waits for the readback: set as soon as the write was received,
 * it could catch the daemon's first readback (paced after the write, a process away), and the
 * command then ended DEVICE_UNREACHABLE with no readback after the write, the case this file
 * does not test. Two reads served since the write was received: the daemon reads the device
 * one request at a time (the confirmation loop alone: the monitor reads idle devices), and a
 * read's answer leaves as it is served, so the first readback after the write has come back.
 */
async function heldWithReadsStalled(key: string, device: string): Promise<void> {
  const valve = site.plant.device(device);
  valve.setFault({ kind: 'hold' });
  const open = await site.postCommand(key, { device, action: 'open' });
  expect(open.status).toBe(202);
  await until(() => (valve.counters.writesReceived === 1 ? true : undefined), 10_000);
  const served = valve.readLog.length;
  await until(
    () => (valve.readLog.length >= served + 2 ? true : undefined),
    5_000,
    'a readback after the write',
  );
  valve.setFault({ kind: 'stall', on: 'read' });
}

describe.skipIf(!real)('a reverify whose command ends otherwise while it waits', () => {
  beforeAll(async () => {
    site = await Site.start({
      gatewayId: 'reverify-meanwhile',
      timing: { confirmTimeoutMs: 5_000, defaultTtlMs: 60_000 },
    });
    await site.startDaemon();
  }, 90_000);
  afterAll(async () => {
    await site.kill();
    await site.close();
  });

  it('ended by its confirm timeout with no read answering: not said settled by a readback', async () => {
    await heldWithReadsStalled('held-1', 'mb-valve-1');
    // In this process: the reverify must be noted before the confirm timeout (5 s from the
    // write) ends the command, and a sluicectl process took up to 4.5 s to start on a loaded
    // machine. As a process, reverify is run in sluicectl-daemon.test.ts.
    const run = await sluicectlInProcess(['--config', site.configPath, 'reverify', 'held-1'], {
      env: { SUDO_USER: 'alice', USER: 'root' },
      timeoutMs: 30_000,
    });
    // Ground truth: ended READBACK_TIMEOUT on a readback requested before the reverify.
    const record = settledRecord('held-1');
    expect(record?.state).toBe('failed');
    expect(record?.code).toBe('READBACK_TIMEOUT');
    const noted = reverifyNoted('held-1');
    expect(noted).toBeDefined();
    expect(Date.parse(record?.observed?.readAt ?? '')).toBeLessThan(noted ?? 0);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).not.toContain('by a fresh readback:');
    expect(run.stdout.split('\n')[0]).toBe(
      'SETTLED while the reverify waited, not by a fresh readback (no read of the device taken since the request settled it): failed READBACK_TIMEOUT; its detail says how it ended',
    );
  }, 40_000);

  it('resolved by another operator meanwhile: byReadback false', async () => {
    await heldWithReadsStalled('held-2', 'mb-valve-2');
    const reverify = sluicectlInProcess(
      ['--config', site.configPath, '--json', 'reverify', 'held-2'],
      { env: { SUDO_USER: 'alice', USER: 'root' }, timeoutMs: 30_000 },
    );
    await until(() => (reverifyNoted('held-2') === undefined ? undefined : true), 5_000);
    const resolved = await sluicectlInProcess(
      ['--config', site.configPath, 'resolve', 'held-2', '--as', 'failed', '--reason', 'by hand'],
      { env: { SUDO_USER: 'bob', USER: 'root' }, timeoutMs: 30_000 },
    );
    expect(resolved.code, resolved.stderr).toBe(0);
    const run = await reverify;
    expect(settledRecord('held-2')?.code).toBe('RESOLVED_BY_OPERATOR');
    expect(run.json()).toMatchObject({
      settled: true,
      byReadback: false,
      result: { state: 'failed', code: 'RESOLVED_BY_OPERATOR' },
    });
  }, 40_000);
});
