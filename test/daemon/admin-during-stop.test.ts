import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CommandRecord } from '../../src/core/journal.js';
import { sluicectlInProcess } from '../cli/helpers.js';
import { mosquittoAvailable, until } from '../helpers/mosquitto.js';
import { Site } from '../reliability/site.js';

/**
 * The admin endpoint through a graceful stop. A stop lets the commands in flight settle for up
 * to its shutdown bound (10 s by default); the endpoint used to be closed, its socket removed,
 * at the stop's first step, so for that whole bound `sluicectl health` said "cannot reach
 * sluiced's admin endpoint … is sluiced running?" and an operator could not resolve the very
 * command the stop waited for. Now it serves until the end of the stop: health says the daemon
 * is stopping (not ready), and a resolve takes effect. Real sluiced (a process, SIGTERM),
 * sluice-sim over Modbus TCP, real sluicectl; ground truth: the journal file and the
 * simulator's write counter.
 */

const real = mosquittoAvailable();
const VALVE = 'mb-valve-1';
// Long enough for two sluicectl runs on a loaded runner; the stuck valve holds the stop for it.
const BOUND_MS = 8_000;

let site: Site;

beforeAll(async () => {
  if (!real) return;
  site = await Site.start({
    gatewayId: 'adminstop',
    // The open never completes: the stop waits its whole bound for it.
    travelMs: 120_000,
    timing: { confirmTimeoutMs: 60_000 },
    shutdownBoundMs: BOUND_MS,
  });
  await site.startDaemon();
}, 60_000);

afterAll(async () => {
  if (!real) return;
  await site.kill();
  await site.close();
});

function onFile(key: string): CommandRecord | undefined {
  return site.records().find((r) => r.key === key);
}

const cli = (...args: string[]): ReturnType<typeof sluicectlInProcess> =>
  sluicectlInProcess(['--config', site.configPath, ...args], {
    env: { SUDO_USER: 'alice', USER: 'root' },
  });

describe.skipIf(!real)('the admin endpoint while sluiced stops', () => {
  it('answers health (stopping, not ready) and a resolve until the stop ends', async () => {
    const valve = site.plant.device(VALVE);
    const writes = valve.counters.writesReceived;
    const open = await site.postCommand('held-open', { device: VALVE, action: 'open' });
    expect(open.status).toBe(202);
    await until(
      () => (valve.counters.writesReceived > writes ? true : undefined),
      10_000,
      'the write of the open',
    );
    const stopped = site.stop();
    await until(
      () => (site.logs.some((l) => l.includes('"sluiced stopping"')) ? true : undefined),
      5_000,
      'the stop to begin',
    );

    const health = await cli('health', '--json');
    expect(health.stderr).toBe('');
    expect(health.code).toBe(1);
    const body = health.json<{
      ready: boolean;
      checks: Record<string, { ok: boolean; detail: string }>;
    }>();
    expect(body.ready).toBe(false);
    expect(body.checks.stopping).toEqual({
      ok: false,
      detail: expect.stringMatching(/^sluiced is stopping: .* 8 s to settle/) as string,
    });

    // The command the stop waits for, settled by an operator during it: in the journal.
    const resolve = await cli('resolve', 'held-open', '--as', 'failed', '--reason', 'valve jammed');
    expect(resolve.stderr).toBe('');
    expect(resolve.code).toBe(0);
    const record = onFile('held-open');
    expect(record).toMatchObject({ state: 'failed', code: 'RESOLVED_BY_OPERATOR' });

    expect(await stopped).toBe(0);
    expect(valve.counters.writesReceived).toBe(writes + 1);
    // Gone once the stop has ended, as before.
    const after = await cli('health');
    expect(after.code).toBe(1);
    expect(after.stderr).toMatch(/cannot reach sluiced's admin endpoint/);
  }, 60_000);
});
