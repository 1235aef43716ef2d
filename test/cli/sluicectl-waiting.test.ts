import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mosquittoAvailable, until } from '../helpers/mosquitto.js';
import { IDENTITY, Site, TOKEN } from '../reliability/site.js';
import { sluicectl, type CliRun } from './helpers.js';

/**
 * What sluicectl says an operator can do about a command its device refused — faulted (0x82),
 * or in local mode: the fault and its meaning, and the way out, which then works.
 *
 * What sluicectl says an open command waits for. A valve's write goes out and its PLC stops
 * answering (the simulator holds the write on the link, then every request): the command is
 * `dispatched`, its write in doubt; a second command for the valve waits behind it. `show` says
 * what each waits for — the readback that settles the write, the command ahead — where it said
 * only "not settled yet", and the status page's list says why the second is open (it said
 * "accepted"). Then the daemon dies: `stuck` and `show` still read the journal, and
 * say that no daemon runs to settle what they list. Real sluiced (a process), sluice-sim over
 * Modbus TCP, Mosquitto; ground truth: the journal file and the simulator's write counter.
 */

const real = mosquittoAvailable();
const VALVE = 'mb-valve-1';

let site: Site;

const ctl = (...args: string[]): Promise<CliRun> =>
  sluicectl(['--config', site.configPath, '--no-color', ...args], { timeoutMs: 30_000 });

beforeAll(async () => {
  if (!real) return;
  // Long enough for the sluicectl runs below to see the write in doubt before the daemon's
  // confirm timeout ends it.
  site = await Site.start({
    gatewayId: 'waiting',
    timing: { confirmTimeoutMs: 30_000, defaultTtlMs: 60_000 },
    // The status page, for a viewer: its list of open commands says why each is open.
    config: { ui: { roles: { [IDENTITY]: 'viewer' } } },
  });
  await site.startDaemon();
  // sluicectl's first start compiles its sources: not while the write is in doubt.
  await sluicectl(['--config', site.configPath, 'stuck', '--json'], { timeoutMs: 30_000 });
}, 90_000);

afterAll(async () => {
  if (!real) return;
  site.plant.plc('mb').clearFaults();
  await site.kill();
  await site.close();
});

function onFile(key: string): { state: string; seq: number | null } | undefined {
  return site.records().find((r) => r.key === key);
}

describe.skipIf(!real)('sluicectl on commands that wait', () => {
  it("says what to do about a command refused for its device's fault or local mode", async () => {
    const actuator = site.plant.device('mb-actuator');
    const valve = site.plant.device('mb-valve-2');
    const writes = actuator.counters.writesReceived + valve.counters.writesReceived;
    actuator.setFault({ kind: 'position-sensor' });
    await until(() => (actuator.snapshot().state === 'FAULT' ? true : undefined), 5_000);
    const refused = await site.postCommand(
      'faulted-1',
      { device: 'mb-actuator', action: 'move', position: 40 },
      'wait=10',
    );
    expect(refused.status, refused.body).toBe(409);
    valve.setLocal(true);
    await until(() => (valve.snapshot().state === 'LOCAL' ? true : undefined), 5_000);
    const local = await site.postCommand(
      'local-1',
      { device: 'mb-valve-2', action: 'open' },
      'wait=10',
    );
    expect(local.status, local.body).toBe(409);
    // Ground truth: both refused on file, nothing written.
    expect(site.records().find((r) => r.key === 'faulted-1')).toMatchObject({
      state: 'rejected',
      code: 'ILLEGAL_TRANSITION',
    });
    expect(site.records().find((r) => r.key === 'local-1')).toMatchObject({
      state: 'rejected',
      code: 'LOCAL_MODE',
    });
    expect(actuator.counters.writesReceived + valve.counters.writesReceived).toBe(writes);

    const [faulted, inHand, json] = await Promise.all([
      ctl('show', 'faulted-1'),
      ctl('show', 'local-1'),
      ctl('show', 'faulted-1', '--json'),
    ]);
    expect(faulted.stdout).toMatch(
      /^ {2}what to do +the device is in FAULT \(fault 0x82: position sensor disagreement\), where it refuses move; once its cause is fixed, clear it: sluicectl --config \S+ send mb-actuator reset; then send the command again$/m,
    );
    // With the --config this run was given: the reset goes to this site's daemon.
    expect(faulted.stdout).toContain(
      `clear it: sluicectl --config ${site.configPath} send mb-actuator reset;`,
    );
    expect(inHand.stdout).toMatch(
      /^ {2}what to do +the device is in LOCAL: switched to local \(hand\) control at its panel, it takes no remote command; once it is switched back to remote, send the command again$/m,
    );
    expect(json.json<{ advice: string }>().advice).toMatch(/^the device is in FAULT \(fault 0x82/);

    // The advice works: the cause fixed, a reset clears the fault (one write), and the valve
    // switched back takes the open.
    actuator.clearFault('position-sensor');
    valve.setLocal(false);
    const reset = await site.postCommand(
      'reset-1',
      { device: 'mb-actuator', action: 'reset' },
      'wait=10',
    );
    expect(reset.status, reset.body).toBe(200);
    expect(actuator.snapshot().state).toBe('IDLE');
    const again = await site.postCommand(
      'local-2',
      { device: 'mb-valve-2', action: 'open' },
      'wait=10',
    );
    expect(again.status, again.body).toBe(200);
    expect(actuator.counters.writesReceived + valve.counters.writesReceived).toBe(writes + 2);
  }, 60_000);

  it('says what a command in doubt and one behind it wait for; and that no daemon runs once it died', async () => {
    const plc = site.plant.plc('mb');
    const valve = site.plant.device(VALVE);
    const writes = valve.counters.writesReceived;
    plc.setFault({ kind: 'stall', on: 'write' });
    expect((await site.postCommand('doubt-1', { device: VALVE, action: 'open' })).status).toBe(202);
    await until(() => (onFile('doubt-1')?.state === 'dispatched' ? true : undefined), 10_000);
    plc.setFault({ kind: 'stall', on: 'both' });
    expect((await site.postCommand('behind-1', { device: VALVE, action: 'close' })).status).toBe(
      202,
    );
    await until(() => (onFile('behind-1')?.state === 'accepted' ? true : undefined), 10_000);
    // The write is held on the link: it reached no controller, and the journal says dispatched.
    expect(valve.counters.writesReceived).toBe(writes);
    expect(onFile('doubt-1')).toMatchObject({ state: 'dispatched', seq: 1 });

    const [doubt, behind, behindJson, stuck] = await Promise.all([
      ctl('show', 'doubt-1'),
      ctl('show', 'behind-1'),
      ctl('show', 'behind-1', '--json'),
      ctl('stuck', '--older-than', '0s', '--json'),
    ]);
    // Both still open: what was said was said of commands in doubt and waiting.
    expect(onFile('doubt-1')?.state).toBe('dispatched');
    expect(onFile('behind-1')?.state).toBe('accepted');
    for (const run of [doubt, behind, behindJson]) {
      expect({ code: run.code, stderr: run.stderr }).toEqual({ code: 0, stderr: '' });
    }
    expect(doubt.stdout).toMatch(
      /^ {2}waiting for +a readback that settles its write \(seq 1\), sent \d+(?:ms|s) ago: until one does, the write's effect is unknown \(the device may move\)\. Read it now: sluicectl --config \S+ reverify doubt-1$/m,
    );
    expect(doubt.stdout).toContain(
      `Read it now: sluicectl --config ${site.configPath} reverify doubt-1`,
    );
    expect(behind.stdout).toMatch(
      /^ {2}waiting for +doubt-1 \(dispatched\) on its device, which runs one command at a time$/m,
    );
    expect(
      behindJson.json<{ open: { waitsBehind: unknown; waitsBehindCount: number } }>().open,
    ).toMatchObject({
      waitsBehind: [{ key: 'doubt-1', scope: 'plant', state: 'dispatched' }],
      waitsBehindCount: 1,
    });
    // The status page's open commands: why the one behind is open, in the same words.
    const origin = `https://127.0.0.1:${site.httpsEndpoint.port}`;
    const login = await site.https(
      'POST',
      '/ui/api/login',
      { origin, 'content-type': 'application/json' },
      JSON.stringify({ token: TOKEN }),
    );
    expect(login.status, login.body).toBe(200);
    const setCookie = login.headers['set-cookie'] as string[] | undefined;
    const cookie = setCookie?.[0]?.split(';')[0] ?? '';
    const page = await site.https('GET', '/ui/api/commands', { cookie });
    expect(page.status, page.body).toBe(200);
    const listed = (JSON.parse(page.body) as { open: { key: string; why: string }[] }).open;
    const why = listed.find((c) => c.key === 'behind-1')?.why;
    // The PLC answers nothing: once the daemon's driver has given its connection up (its reads
    // time out), the page says that the device cannot be read (ui-open-why.ts), after the reason.
    const unread =
      '(?:; the device cannot be read now: (?:its PLC is not connected|its reads fail) \\(.+\\))?';
    expect(why).toMatch(
      new RegExp(
        `^waits behind doubt-1 \\(dispatched\\) on its device, which runs one command at a time${unread}$`,
      ),
    );
    // And why the one in doubt is open, as show says it: its write's readback. Its last event,
    // the dispatch's line about the clocks, was given as the reason.
    expect(listed.find((c) => c.key === 'doubt-1')?.why).toMatch(
      new RegExp(
        `^waits for a readback that settles its write \\(seq 1\\): until one does, the write's effect is unknown \\(the device may move\\)${unread}; last event: seq 1; `,
      ),
    );
    expect(stuck.code).toBe(3);
    expect(
      stuck
        .json<{ commands: { key: string; waitsBehind: { key: string }[] }[] }>()
        .commands.map((c) => [c.key, c.waitsBehind.map((w) => w.key)]),
    ).toEqual([
      ['doubt-1', []],
      ['behind-1', ['doubt-1']],
    ]);

    // The daemon dies with both open. The journal still answers; the tools say nothing runs.
    await site.kill();
    expect(onFile('doubt-1')?.state).toBe('dispatched');
    const [deadStuck, deadShow, noneListed] = await Promise.all([
      ctl('stuck', '--older-than', '0s'),
      ctl('show', 'behind-1'),
      ctl('stuck', '--older-than', '1h'),
    ]);
    const absent = new RegExp(
      `^sluicectl: sluiced is not running \\(nothing listens at \\S+admin\\.sock\\): no open command is being settled; when it starts it takes each one up by reading its device, never by writing it again\\. reverify and resolve need it running \\(systemctl status sluiced\\)\\n$`,
    );
    expect(deadStuck.code).toBe(3);
    expect(deadStuck.stdout).toMatch(/^doubt-1\s+plant\s+mb-valve-1\s+open\s+dispatched\s/m);
    expect(deadStuck.stderr).toMatch(absent);
    expect(deadShow.code).toBe(0);
    expect(deadShow.stdout).toMatch(/^ {2}state +accepted$/m);
    expect(deadShow.stderr).toMatch(absent);
    // Nothing listed, nothing to warn of.
    expect({ code: noneListed.code, stderr: noneListed.stderr }).toEqual({ code: 0, stderr: '' });
    expect(valve.counters.writesReceived).toBe(writes);
  }, 90_000);
});
