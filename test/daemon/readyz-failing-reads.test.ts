import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { Daemon } from '../../src/daemon/daemon.js';
import {
  READ_FAILURES_UNREACHABLE,
  READBACK_STALE_MS,
  READS_FAILING_MS,
} from '../../src/daemon/readiness.js';
import type { DeviceDocument } from '../../src/intake/device-view.js';
import { startPlant, type Plant } from '../../simulators/plant.js';
import type { DeviceFaultInput } from '../../simulators/plc.js';
import { sluicectlInProcess } from '../cli/helpers.js';
import { tempDir } from '../helpers/fixtures.js';
import { writeTokenSite } from '../helpers/daemon-site.js';
import { httpsRequest, type HttpsAnswer } from '../helpers/loopback-https.js';
import { until } from '../helpers/mosquitto.js';

/**
 * A device whose reads keep failing is not ready once they have failed for READS_FAILING_MS,
 * as a command finds it (it writes nothing until a read succeeds). /readyz judged the device by
 * its last readback's age alone and called it ready, "readback 3000 ms ago; reads fail since …",
 * for up to READBACK_STALE_MS (15 s) while the PLC answered nothing. One failed read between
 * good ones does not turn it: counted unreachable from the first failed read, the gateway was
 * not ready for a read cycle at every blip, and a load balancer or a systemd consumer saw it
 * flap. Through the whole daemon on a real sluice-sim plant, each fault on its own PLC (a reset
 * takes the PLC's connection down, and the other devices would fail with it): the PLC resetting
 * the connection at every read, not answering (reads dropped), holding every read (a stall); a
 * refused read (exception) on a healthy connection; and one refused read among good ones. The
 * idle-device monitor reads every MONITOR_MS (DaemonOptions.monitorIntervalMs; 1 s by default),
 * the Modbus requests time out at their default (1 s). The rule's bound is shortened to
 * FAILING_MS (DaemonOptions.readsFailingMs), so that the five cases wait seconds, not the
 * gateway's READS_FAILING_MS each: still longer than a read cycle, so that one failed read is no
 * run, and still bound to two failed reads in a row.
 */

/** The daemon's bound for these tests, in place of READS_FAILING_MS. */
const FAILING_MS = 1_500;
/** The idle-device monitor's pace: a read cycle, well under FAILING_MS. */
const MONITOR_MS = 250;

const TOKEN = 'readyz-failing-token';

/**
 * The time the check has to turn after the fault is set: a read and a request timeout before
 * the first failed read, READS_FAILING_MS of them, with room for a loaded machine, and under
 * READBACK_STALE_MS — the bound the check turned at before.
 */
const TURN_WITHIN_MS = READS_FAILING_MS + 6_000;

let plant: Plant;
let daemon: Daemon;
let cleanup: () => void;
let cert: string;
let configPath: string;

function https(
  method: 'GET' | 'POST',
  path: string,
  body?: unknown,
  key?: string,
): Promise<HttpsAnswer> {
  return httpsRequest(
    { port: daemon.https!.port, ca: cert, token: TOKEN },
    method,
    path,
    key === undefined ? {} : { 'idempotency-key': key, prefer: 'wait=10' },
    body,
  );
}

interface Check {
  readonly status: number;
  readonly ok: boolean;
  readonly detail: string;
}

async function deviceCheck(id: string): Promise<Check> {
  const answer = await https('GET', '/readyz');
  const checks = answer.json().checks as Record<string, { ok: boolean; detail: string }>;
  return { status: answer.status, ...checks[`device:${id}`]! };
}

/** The device's check once it is ok: read, and every read since succeeded. */
function readyAgain(id: string, ms = 15_000): Promise<Check> {
  return until(
    async () => {
      const check = await deviceCheck(id);
      return check.ok ? check : undefined;
    },
    ms,
    `${id} ready`,
  );
}

beforeAll(async () => {
  const { dir, cleanup: done } = tempDir('sluice-readyz-failing-');
  cleanup = done;
  const plc = (device: string) => ({
    protocol: 'modbus' as const,
    host: '127.0.0.1',
    port: 0,
    devices: { [device]: { profile: 'valve' as const, base: 0, travelMs: 200 } },
  });
  plant = await startPlant(
    {
      control: { host: '127.0.0.1', port: 0 },
      plcs: {
        resets: plc('reset-valve'),
        silent: plc('silent-valve'),
        stalls: plc('stalled-valve'),
        refuses: plc('refused-valve'),
        steady: plc('steady-valve'),
        blips: plc('blip-valve'),
      },
    },
    { ephemeralPorts: true, control: false },
  );
  // The test asks /readyz every 20 ms.
  ({ configPath, cert } = await writeTokenSite(dir, plant, {
    gatewayId: 'readyzfailing',
    token: TOKEN,
    scope: 'ops',
    https: { rateLimit: { perSecond: 1_000, burst: 1_000 } },
  }));
  daemon = await Daemon.start(loadConfig(configPath, { env: {} }), {
    logger: pino({ level: 'silent' }),
    readsFailingMs: FAILING_MS,
    monitorIntervalMs: MONITOR_MS,
  });
  for (const id of [
    'reset-valve',
    'silent-valve',
    'stalled-valve',
    'refused-valve',
    'blip-valve',
  ]) {
    await readyAgain(id);
  }
}, 60_000);

afterAll(async () => {
  await daemon.stop();
  await plant.stop();
  cleanup();
}, 30_000);

/**
 * Sets `fault` on the device and waits for its /readyz check to fail: the answer's status, the
 * check, and how long after the fault it turned.
 */
async function turnsOn(id: string, fault: DeviceFaultInput): Promise<Check & { afterMs: number }> {
  const set = Date.now();
  plant.device(id).setFault(fault);
  const check = await until(
    async () => {
      const c = await deviceCheck(id);
      return c.ok ? undefined : c;
    },
    TURN_WITHIN_MS,
    `${id}'s /readyz check failing after ${fault.kind}`,
  );
  return { ...check, afterMs: Date.now() - set };
}

/** The not-ready detail: when reads began to fail, how many, the error; the readback's age. */
const FAILING = /^no readback for (\d+) ms: reads fail since (\S+Z) \((\d+) in a row\): (.+)$/;

describe('/readyz: a device whose reads keep failing is not ready; one failed read does not turn it', () => {
  it('one refused read between good ones: ready throughout, the failed read said; refused reads that go on turn it', async () => {
    const valve = plant.device('blip-valve');
    const answers: Check[] = [];
    /** The device's check, every answer kept: none may have been not ready. */
    const observed = async (): Promise<Check> => {
      const check = await deviceCheck('blip-valve');
      answers.push(check);
      return check;
    };
    valve.setFault({ kind: 'exception', code: 4, on: 'read', count: 1 });
    // The event: /readyz shows the failed read (it stands until the next read succeeds, a
    // read cycle later).
    const blip = await until(
      async () => {
        const c = await observed();
        return c.detail.includes('reads fail since') ? c : undefined;
      },
      TURN_WITHIN_MS,
      "blip-valve's failed read in /readyz",
    );
    expect(blip).toMatchObject({ status: 200, ok: true });
    expect(blip.detail).toMatch(
      /^readback \d+ ms ago; reads fail since \S+Z \(1 in a row\): .*Modbus exception 0x04 \(server device failure\); unreachable if they fail for 1500 ms$/,
    );
    // Ground truth: the PLC refused that one read (the fault has cleared itself) ...
    expect(valve.faults()).toEqual([]);
    const served = valve.readLog.length;
    // ... and the next read is answered: the failure ends, without the check having turned.
    const recovered = await until(
      async () => {
        const c = await observed();
        return c.detail.includes('reads fail') ? undefined : c;
      },
      TURN_WITHIN_MS,
      'blip-valve read again',
    );
    expect(recovered.detail).toMatch(/^readback \d+ ms ago$/);
    expect(valve.readLog.length).toBeGreaterThan(served);
    expect(answers.filter((a) => !a.ok || a.status !== 200)).toEqual([]);

    // Refused reads that go on: not ready, once they have failed for the bound.
    const check = await turnsOn('blip-valve', { kind: 'exception', code: 4, on: 'read' });
    expect(check.status).toBe(503);
    const [, , since, failures] = FAILING.exec(check.detail) ?? [];
    expect(check.detail).toMatch(FAILING);
    expect(Number(failures)).toBeGreaterThanOrEqual(READ_FAILURES_UNREACHABLE);
    // Counted from the first failed read (the daemon's wall clock, this process's).
    expect(Date.now() - Date.parse(since!)).toBeGreaterThanOrEqual(FAILING_MS - 50);
    valve.clearFault('exception');
    expect((await readyAgain('blip-valve')).detail).toMatch(/^readback \d+ ms ago$/);
  }, 60_000);

  it('the PLC resets the connection at every read: not ready, a command on it writes nothing; ready once it answers', async () => {
    const valve = plant.device('reset-valve');
    const check = await turnsOn('reset-valve', { kind: 'reset', when: 'before', on: 'read' });
    expect(check.status).toBe(503);
    const [, ageMs, since, failures] = FAILING.exec(check.detail) ?? [];
    expect(check.detail).toMatch(FAILING);
    // The last readback is young: the age alone called it ready.
    expect(Number(ageMs)).toBeLessThan(READBACK_STALE_MS);
    expect(Number(failures)).toBeGreaterThanOrEqual(1);
    expect(Date.parse(since!)).toBeGreaterThan(Date.now() - check.afterMs - 1_000);
    // Ground truth: the PLC has served no read of the device since the check turned.
    const served = valve.readLog.length;
    // The other devices are not affected.
    expect((await deviceCheck('steady-valve')).ok).toBe(true);

    // The daemon's verdict is the command path's: a command on the device is not written.
    const refused = await https(
      'POST',
      '/v1/commands',
      { device: 'reset-valve', action: 'open', ttlMs: 2_000 },
      'reset-open-1',
    );
    expect(refused.json()).toMatchObject({ state: 'failed', code: 'DEVICE_UNREACHABLE' });
    expect(valve.counters.writesReceived).toBe(0);
    expect(valve.readLog.length).toBe(served);

    // sluicectl health says the same, from the same checks.
    const health = await sluicectlInProcess(['--config', configPath, 'health']);
    expect(health.code, health.stderr).toBe(1);
    expect(health.stdout).toMatch(
      /^device:reset-valve\s+FAIL\s+no readback for \d+ ms: reads fail since /m,
    );
    expect(health.stdout).toMatch(/^device:steady-valve\s+ok\s+readback \d+ ms ago/m);

    valve.clearFault('reset');
    expect((await readyAgain('reset-valve')).detail).toMatch(/^readback \d+ ms ago$/);
  }, 60_000);

  it('the PLC does not answer the reads (dropped): not ready; ready once it answers', async () => {
    const check = await turnsOn('silent-valve', { kind: 'drop', on: 'read' });
    expect(check.status).toBe(503);
    expect(check.detail).toMatch(FAILING);
    expect(Number(FAILING.exec(check.detail)?.[1])).toBeLessThan(READBACK_STALE_MS);
    // The PLC took the reads and never answered them: they time out.
    expect(FAILING.exec(check.detail)?.[4]).toMatch(/timed out|timeout/i);
    plant.device('silent-valve').clearFault('drop');
    expect((await readyAgain('silent-valve')).detail).toMatch(/^readback \d+ ms ago$/);
  }, 60_000);

  it('the PLC holds every read (stalled): not ready; ready once it lets them go', async () => {
    const valve = plant.device('stalled-valve');
    const check = await turnsOn('stalled-valve', { kind: 'stall', on: 'read' });
    expect(check.status).toBe(503);
    expect(check.detail).toMatch(FAILING);
    expect(Number(FAILING.exec(check.detail)?.[1])).toBeLessThan(READBACK_STALE_MS);
    expect(FAILING.exec(check.detail)?.[4]).toMatch(/timed out|timeout/i);
    valve.clearFault('stall');
    expect((await readyAgain('stalled-valve')).detail).toMatch(/^readback \d+ ms ago$/);
  }, 60_000);

  it('the PLC refuses the reads on a connection that stays up: not ready, the refusal named', async () => {
    const check = await turnsOn('refused-valve', { kind: 'exception', code: 4, on: 'read' });
    expect(check.status).toBe(503);
    expect(check.detail).toMatch(FAILING);
    expect(check.detail).toContain('Modbus exception 0x04 (server device failure)');
    const doc = (
      await https('GET', '/v1/devices/refused-valve')
    ).json() as unknown as DeviceDocument;
    expect(doc.connectivity.connected).toBe(true);
    plant.device('refused-valve').clearFault('exception');
    expect((await readyAgain('refused-valve')).detail).toMatch(/^readback \d+ ms ago$/);
    // Every device ready again: the gateway is.
    const all = await until(
      async () => {
        const answer = await https('GET', '/readyz');
        return answer.status === 200 ? answer : undefined;
      },
      15_000,
      'the gateway ready',
    );
    expect(all.json().status).toBe('ready');
  }, 60_000);
});
