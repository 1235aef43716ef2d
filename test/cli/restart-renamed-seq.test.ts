import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CommandRecord } from '../../src/core/journal.js';
import { renameSiteEntry } from '../helpers/daemon-site.js';
import { mosquittoAvailable, until } from '../helpers/mosquitto.js';
import { Site } from '../reliability/site.js';
import { sluicectl } from './helpers.js';

/**
 * Sequence numbers are kept per device id. The valve's first command, an open, acknowledged
 * and held by the controller (the sim's `hold`) with sequence number 1, is resolved by an
 * operator; the daemon is killed (SIGKILL) and started again with the valve renamed (the same
 * PLC and registers, another id), and a stop is sent under the new id while the controller
 * still holds the open. The stop is written at once behind the acknowledged open (a stop is not
 * queued behind travel). Numbered from the new id's own count, it carried sequence number 1
 * too: the controller took the open, ignored the stop as a repeat of it, and the open's echo
 * confirmed the stop once the valve was OPEN (a false success, the stop never applied). Now the
 * new id's numbers continue past those of its former id's writes that may still land. Real
 * sluiced, sluice-sim, the journal, sluicectl; asserted on the sim's write log and state and on
 * the journal.
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

describe.skipIf(!real)('a stop under a renamed id behind a held write of the former id', () => {
  beforeAll(async () => {
    // A full stroke of 3 s: a stop taken just after the open leaves the valve STOPPED, not OPEN.
    // The confirm timeout (the bound on an acknowledged write) is far longer than a restart.
    site = await Site.start({
      gatewayId: 'renamed-seq',
      travelMs: 3_000,
      timing: { confirmTimeoutMs: 20_000, defaultTtlMs: 60_000 },
    });
    await site.startDaemon();
  }, 90_000);
  afterAll(async () => {
    await site.kill();
    await site.close();
  });

  it('the stop gets a sequence number other than the held open’s, and is taken', async () => {
    const valve = site.plant.device('mb-valve-1');
    expect(valve.snapshot()).toMatchObject({ state: 'CLOSED', seqEcho: 0 });
    valve.setFault({ kind: 'hold' });
    const open = await site.postCommand('open-1', { device: 'mb-valve-1', action: 'open' });
    expect(open.status).toBe(202);
    await until(() => (valve.counters.writesReceived === 1 ? true : undefined), 10_000);
    const resolved = await sluicectl(
      ['--config', site.configPath, 'resolve', 'open-1', '--as', 'failed', '--reason', 'checked'],
      { timeoutMs: 30_000 },
    );
    expect(resolved.code).toBe(0);
    const held = record('open-1')!;
    expect(held.detail).toMatch(/which acknowledged it: it may have been applied$/);
    expect(held.seq).toBe(1);

    await site.kill();
    renameSiteEntry(site.configPath, 'devices', 'mb-valve-1', 'inlet-valve');
    await site.startDaemon();
    const stop = await site.postCommand('stop-1', { device: 'inlet-valve', action: 'stop' });
    expect(stop.status).toBe(202);

    // The stop's write reaches the controller, which holds it behind the open.
    await until(() => (valve.counters.writesReceived === 2 ? true : undefined), 10_000);
    const written = record('stop-1')!;
    expect(written).toMatchObject({ state: 'dispatched', device: 'inlet-valve' });
    expect(written.seq).not.toBe(held.seq);

    // The hold ends: the controller takes the open, then the stop.
    valve.clearFaults();
    const done = await until(() => terminal('stop-1'), 20_000);
    await until(
      () => (valve.writeLog.every((e) => e.settledAt !== null) ? true : undefined),
      10_000,
    );

    // Ground truth: both writes taken, in order; the valve stopped short of OPEN, showing the
    // stop's echo.
    expect(valve.writeLog.map((e) => ({ seq: e.seq, outcome: e.outcome }))).toEqual([
      { seq: 1, outcome: 'accepted' },
      { seq: written.seq, outcome: 'accepted' },
    ]);
    expect(valve.snapshot()).toMatchObject({ state: 'STOPPED', seqEcho: written.seq });
    expect(done).toMatchObject({ state: 'confirmed', seq: written.seq });
    expect(done.observed?.state).toBe('STOPPED');
  }, 90_000);
});
