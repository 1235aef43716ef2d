import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { Daemon } from '../../src/daemon/daemon.js';
import type { Plant } from '../../simulators/plant.js';
import { startModbusPlant, writeTokenSite } from '../helpers/daemon-site.js';
import { tempDir } from '../helpers/fixtures.js';
import { httpsRequest, metricSample, type HttpsAnswer } from '../helpers/loopback-https.js';
import { until } from '../helpers/mosquitto.js';

/**
 * What became of a device's writes, in /metrics of a real daemon against sluice-sim over real
 * sockets, read over HTTPS: writes sent again after the controller answered busy (Modbus
 * exception 0x06) and writes given up busy at the deadline. Each count is checked against the
 * simulator's own record of the requests it refused and the writes it took.
 */

const TOKEN = 'write-metrics-token';

let plant: Plant;
let daemon: Daemon;
let cert: string;
let configPath: string;
let cleanup: () => void;

function post(key: string, body: unknown): Promise<HttpsAnswer> {
  return httpsRequest(
    { port: daemon.https!.port, ca: cert, token: TOKEN },
    'POST',
    '/v1/commands',
    { 'idempotency-key': key },
    body,
  );
}

/** The sample of `name` with exactly these labels; 0 when the scrape has none. */
function sample(name: string, labels: Record<string, string>): Promise<number> {
  return metricSample({ port: daemon.https!.port, ca: cert }, name, labels);
}

/** Requests of the device the simulator answered busy: a `count` fault wears down by one each. */
function busyAnswered(device: string, setTo: number): number {
  const fault = plant
    .device(device)
    .faults()
    .find((f) => f.kind === 'exception');
  return setTo - (fault === undefined ? 0 : (fault.remaining ?? setTo));
}

beforeAll(async () => {
  const made = tempDir('sluice-metrics-writes-');
  cleanup = made.cleanup;
  plant = await startModbusPlant({
    v1: { profile: 'valve', base: 0, travelMs: 200 },
    v2: { profile: 'valve', base: 100, travelMs: 200 },
  });
  ({ configPath, cert } = await writeTokenSite(made.dir, plant, {
    gatewayId: 'writes',
    token: TOKEN,
  }));
  daemon = await Daemon.start(loadConfig(configPath, { env: {} }), {
    logger: pino({ level: 'silent' }),
    monitorIntervalMs: 200,
  });
  await until(
    () => (daemon.readiness().ready ? true : undefined),
    20_000,
    'the daemon ready (both valves read)',
  );
}, 60_000);

afterAll(async () => {
  await daemon.stop();
  await plant.stop();
  cleanup();
}, 30_000);

describe('writes answered busy (Modbus exception 0x06) in /metrics', () => {
  it('counts each write sent again after a busy answer, for its device only', async () => {
    const valve = plant.device('v1');
    valve.setFault({ kind: 'exception', code: 6, on: 'write', count: 2 });
    const answer = await post('busy-twice', { device: 'v1', action: 'open' });
    expect(answer.status, answer.body).toBe(200);
    // Ground truth: both busy answers used up, then the write taken once.
    expect(busyAnswered('v1', 2)).toBe(2);
    expect(valve.writesWithSeq(answer.json().seq as number)).toBe(1);
    // Sent three times: the first and two resends; none given up.
    expect(await sample('sluice_device_write_busy_resends_total', { device: 'v1' })).toBe(2);
    expect(await sample('sluice_device_write_busy_given_up_total', { device: 'v1' })).toBe(0);
    expect(await sample('sluice_device_write_busy_resends_total', { device: 'v2' })).toBe(0);
  });

  it('counts a write given up busy at its deadline, and every resend before it', async () => {
    const valve = plant.device('v2');
    const writes = valve.writeLog.length;
    valve.setFault({ kind: 'exception', code: 6, on: 'write', count: 100_000 });
    const answer = await post('busy-to-the-end', { device: 'v2', action: 'open', ttlMs: 1_000 });
    expect(answer.status, answer.body).toBe(502);
    expect(answer.json()).toMatchObject({ code: 'DEVICE_FAULT' });
    expect(answer.json().detail).toMatch(/^the controller stayed busy/);
    // Ground truth: every write that reached the controller was refused busy; none taken.
    const refused = busyAnswered('v2', 100_000);
    valve.clearFaults();
    expect(refused).toBeGreaterThanOrEqual(3);
    expect(valve.writeLog.length).toBe(writes);
    expect(await sample('sluice_device_write_busy_resends_total', { device: 'v2' })).toBe(
      refused - 1,
    );
    expect(await sample('sluice_device_write_busy_given_up_total', { device: 'v2' })).toBe(1);
    // The other valve's counts stand as they were.
    expect(await sample('sluice_device_write_busy_resends_total', { device: 'v1' })).toBe(2);
    expect(await sample('sluice_device_write_busy_given_up_total', { device: 'v1' })).toBe(0);
  });
});
