import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mosquittoAvailable, until } from '../helpers/mosquitto.js';
import { IDENTITY, Site, TOKEN } from '../reliability/site.js';
import { sluicectl } from './helpers.js';

/**
 * What sluicectl show and the status page say of a command that waits on its device past its
 * deadline. The controller holds the first command (sluice-sim's `hold`: its handshake busy, the
 * write taken up only when the hold ends); a second, with a short ttl, waits behind it until its
 * deadline has passed. Both tools said only that it waits behind the first, as if it would run
 * once the device was free; it cannot: when its turn comes it ends STALE_COMMAND, never written
 * (I3). Real sluiced (a process), sluice-sim over Modbus TCP, Mosquitto; ground truth: the
 * journal file and the simulator's write log.
 */

const real = mosquittoAvailable();
const VALVE = 'mb-valve-1';
const EXPIRED =
  'its deadline has passed: it will not be written; when its turn comes it ends rejected STALE_COMMAND';

let site: Site;

beforeAll(async () => {
  if (!real) return;
  // Long enough that the held command is still in doubt while the tools are asked.
  site = await Site.start({
    gatewayId: 'expired-queued',
    timing: { confirmTimeoutMs: 30_000, defaultTtlMs: 60_000 },
    config: { ui: { roles: { [IDENTITY]: 'viewer' } } },
  });
  await site.startDaemon();
  // sluicectl's first start compiles its sources: not while the command waits.
  await sluicectl(['--config', site.configPath, 'stuck', '--json'], { timeoutMs: 30_000 });
}, 90_000);

afterAll(async () => {
  if (!real) return;
  site.plant.device(VALVE).clearFaults();
  await site.kill();
  await site.close();
});

function onFile(key: string): { state: string; code: string | null; deadline: number } | undefined {
  return site.records().find((r) => r.key === key);
}

describe.skipIf(!real)('a command that waits past its deadline', () => {
  it('is said not to be written, and is not', async () => {
    const valve = site.plant.device(VALVE);
    const writes = valve.counters.writesReceived;
    valve.setFault({ kind: 'hold' });
    expect((await site.postCommand('held-1', { device: VALVE, action: 'open' })).status).toBe(202);
    await until(
      () => (valve.counters.writesReceived === writes + 1 ? true : undefined),
      10_000,
      'the held write at the controller',
    );
    const posted = await site.postCommand('late-1', {
      device: VALVE,
      action: 'close',
      ttlMs: 1_500,
    });
    expect(posted.status).toBe(202);
    const deadline = onFile('late-1')?.deadline ?? 0;
    await until(() => (Date.now() > deadline + 100 ? true : undefined), 5_000, 'its deadline');
    // Ground truth: past its deadline, still waiting on file behind the held one.
    expect(onFile('held-1')?.state).toBe('dispatched');
    expect(onFile('late-1')?.state).toBe('accepted');

    const show = await sluicectl(['--config', site.configPath, '--no-color', 'show', 'late-1'], {
      timeoutMs: 30_000,
    });
    expect({ code: show.code, stderr: show.stderr }).toEqual({ code: 0, stderr: '' });
    expect(show.stdout).toContain(
      `  waiting for  held-1 (dispatched) on its device, which runs one command at a time; ${EXPIRED}\n`,
    );
    const origin = `https://127.0.0.1:${site.httpsEndpoint.port}`;
    const login = await site.https(
      'POST',
      '/ui/api/login',
      { origin, 'content-type': 'application/json' },
      JSON.stringify({ token: TOKEN }),
    );
    expect(login.status, login.body).toBe(200);
    const cookie = (login.headers['set-cookie'] as string[] | undefined)?.[0]?.split(';')[0] ?? '';
    const page = await site.https('GET', '/ui/api/commands', { cookie });
    expect(page.status, page.body).toBe(200);
    const listed = (JSON.parse(page.body) as { open: { key: string; why: string }[] }).open;
    expect(listed.find((c) => c.key === 'late-1')?.why).toBe(
      `waits behind held-1 (dispatched) on its device, which runs one command at a time; ${EXPIRED}`,
    );
    // Both still as they were when the tools were asked.
    expect(onFile('late-1')?.state).toBe('accepted');

    // What they said comes true: the hold ends, the first is settled, and the second ends
    // STALE_COMMAND with no write of its own at the controller.
    valve.clearFaults();
    await until(
      () => (onFile('late-1')?.state === 'rejected' ? true : undefined),
      40_000,
      'late-1 settled',
    );
    expect(onFile('late-1')?.code).toBe('STALE_COMMAND');
    expect(valve.writeLog.filter((w) => w.seq !== 1)).toEqual([]);
    expect(valve.counters.writesReceived).toBe(writes + 1);
  }, 90_000);
});
