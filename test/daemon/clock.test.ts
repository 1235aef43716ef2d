import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { Daemon } from '../../src/daemon/daemon.js';
import { sha256 } from '../../src/intake/identities.js';
import { startPlant, type Plant } from '../../simulators/plant.js';
import { tempDir } from '../helpers/fixtures.js';
import { until } from '../helpers/mosquitto.js';
import { httpsRequest, loopbackCertificate, type HttpsAnswer } from '../helpers/loopback-https.js';
import { inventoryFor } from '../helpers/plant-inventory.js';
import { ptpLabAvailable, startPtpLab, type PtpLab } from '../helpers/ptp.js';
import { sluicectlInProcess } from '../cli/helpers.js';

/**
 * SPEC §6 through the whole daemon, on real parts: the gateway clock from a real ptp4l slave
 * (pmc over its socket) in a network namespace the test creates, a grandmaster in another,
 * both free-running (this machine's clock is never adjusted); controllers from sluice-sim with
 * their clocks set off. The gateway reaches LOCKED; killing the grandmaster moves it to
 * HOLDOVER, then UNLOCKED, where timestamped commands are refused CLOCK_SKEW and never
 * written; a restarted grandmaster brings it back. A controller clock beyond its bound flags
 * the device (/readyz, /metrics, /v1/devices) and its writes are refused; a PLC allowed a
 * wider bound passes. `sluicectl clock` (the admin endpoint's GET /v1/clock) gives the time
 * of the last lock in RFC 3339. Ground truth: the simulators' write counters.
 */

const TOKEN = 'clock-token';
const real = ptpLabAvailable();
let plant: Plant;
let lab: PtpLab;
let daemon: Daemon;
let cleanup: () => void;
let cert: string;
let configPath: string;

type Answer = HttpsAnswer;

function https(
  method: string,
  path: string,
  headers: Record<string, string> = {},
  body?: unknown,
): Promise<Answer> {
  return httpsRequest(
    { port: daemon.https!.port, ca: cert, token: TOKEN },
    method,
    path,
    headers,
    body,
  );
}

const command = (key: string, body: Record<string, unknown>): Promise<Answer> =>
  https('POST', '/v1/commands', { 'idempotency-key': key, prefer: 'wait=10' }, body);

async function clockCheck(): Promise<{ ok: boolean; detail: string }> {
  const ready = await https('GET', '/readyz');
  return (ready.json().checks as Record<string, { ok: boolean; detail: string }>).clock!;
}

async function reach(state: string, withinMs: number): Promise<void> {
  await until(
    async () => ((await clockCheck()).detail.startsWith(state) ? true : undefined),
    withinMs,
    `gateway clock ${state}`,
  );
}

beforeAll(async () => {
  if (!real) return;
  const { dir, cleanup: done } = tempDir('sluice-clock-');
  cleanup = done;
  lab = await startPtpLab();
  plant = await startPlant(
    {
      control: { host: '127.0.0.1', port: 0 },
      plcs: {
        mb: {
          protocol: 'modbus',
          host: '127.0.0.1',
          port: 0,
          devices: { 'inlet-valve': { profile: 'valve', base: 0, travelMs: 200 } },
        },
        skewed: {
          protocol: 'modbus',
          host: '127.0.0.1',
          port: 0,
          clock: { offsetMs: 5_000, driftPpm: 0 },
          devices: { 'skewed-valve': { profile: 'valve', base: 0, travelMs: 200 } },
        },
        tolerant: {
          protocol: 'modbus',
          host: '127.0.0.1',
          port: 0,
          clock: { offsetMs: 5_000, driftPpm: 0 },
          devices: { 'tolerant-valve': { profile: 'valve', base: 0, travelMs: 200 } },
        },
      },
    },
    { ephemeralPorts: true, control: false },
  );
  cert = await loopbackCertificate(dir);
  const inventory = inventoryFor(plant);
  const tolerant = inventory.plcs.tolerant!;
  inventory.plcs.tolerant = { ...tolerant, maxClockSkewMs: 10_000 };
  configPath = join(dir, 'sluice.yaml');
  writeFileSync(
    configPath,
    stringify({
      gatewayId: 'clocksite',
      stateDir: 'state',
      https: { host: '127.0.0.1', port: 0, certFile: 'cert.pem', keyFile: 'key.pem' },
      clock: {
        source: 'ptp',
        pollIntervalMs: 200,
        holdoverMs: 2_000,
        maxControllerSkewMs: 1_000,
        onUnsynced: 'reject',
        // The lab's ptp4l runs free (it must never adjust this machine's clock), so its port
        // follows the grandmaster in UNCALIBRATED: see docs/clock.md.
        ptp: {
          udsPath: lab.slave.socket,
          domain: lab.domain,
          clientSocketDir: lab.dir,
          acceptUncalibrated: true,
          pmc: 'pmc',
          // Within the holdover: a poll and two runs of pmc (config.ts, holdoverProblem).
          timeoutMs: 900,
        },
      },
      identities: { ops: { tokenSha256: sha256(TOKEN).toString('hex'), devices: ['*'] } },
      plcs: inventory.plcs,
      devices: inventory.devices,
    }),
  );
  daemon = await Daemon.start(loadConfig(configPath, { env: {} }), {
    logger: pino({ level: 'silent' }),
  });
}, 60_000);

afterAll(async () => {
  if (!real) return;
  await daemon.stop();
  await plant.stop();
  await lab.close();
  cleanup();
}, 30_000);

describe.runIf(real)('clocks through the daemon (SPEC §6)', () => {
  it('a controller clock beyond its bound: flagged everywhere, its writes refused; a wider bound passes', async () => {
    const refused = await command('skewed-1', { device: 'skewed-valve', action: 'open' });
    expect(refused.status).toBe(409);
    expect(refused.json()).toMatchObject({ code: 'CLOCK_SKEW', state: 'rejected' });
    // The problem's title names the clocks, not only the issuer's issuedAt (this one had none).
    expect(String(refused.json().title)).toMatch(/controller clock/);
    expect(String(refused.json().detail)).toMatch(
      /controller clock of skewed-valve is (49|50|51)\d\d ms off/,
    );
    expect(plant.device('skewed-valve').counters.writesReceived).toBe(0);
    const device = (await https('GET', '/v1/devices/skewed-valve')).json();
    expect(device.clockOff).toMatchObject({ maxMs: 1_000 });
    const ready = (await https('GET', '/readyz')).json().checks as Record<string, { ok: boolean }>;
    expect(ready['clock:skewed-valve']?.ok).toBe(false);
    const metrics = (await https('GET', '/metrics')).body;
    expect(metrics).toMatch(/^sluice_controller_clock_ok\{device="skewed-valve"\} 0$/m);
    expect(metrics).toMatch(
      /^sluice_controller_skew_seconds\{device="skewed-valve"\} (4\.9\d*|5(\.[01]\d*)?)$/m,
    );

    const passed = await command('tolerant-1', { device: 'tolerant-valve', action: 'open' });
    expect(passed.status).toBe(200);
    expect(plant.device('tolerant-valve').counters.writesReceived).toBe(1);
  });

  it('LOCKED, then HOLDOVER and UNLOCKED without a grandmaster (timestamped commands refused), LOCKED again', async () => {
    const valve = plant.device('inlet-valve');
    await reach('LOCKED', 20_000);
    const stamped = (key: string, action: string): Promise<Answer> =>
      command(key, { device: 'inlet-valve', action, issuedAt: new Date().toISOString() });
    const locked = await stamped('locked-1', 'open');
    expect(locked.status).toBe(200);
    const history = (await https('GET', '/v1/commands/locked-1')).json().history as {
      detail: string;
    }[];
    expect(history.map((e) => e.detail).join('\n')).toMatch(
      /seq \d+; gateway clock LOCKED \(ptp\); controller skew [+-]\d+ ms/,
    );

    await lab.grandmaster.kill();
    await reach('HOLDOVER', 20_000);
    const holdover = await stamped('holdover-1', 'close');
    expect(holdover.status).toBe(200);
    await reach('UNLOCKED', 20_000);
    const before = valve.counters.writesReceived;
    const unlocked = await stamped('unlocked-1', 'open');
    expect(unlocked.status).toBe(409);
    expect(unlocked.json()).toMatchObject({ code: 'CLOCK_SKEW' });
    expect(String(unlocked.json().detail)).toMatch(/gateway clock is UNLOCKED \(ptp/);
    expect(String(unlocked.json().title)).toMatch(/gateway clock unsynced/);
    expect((await clockCheck()).ok).toBe(false);
    const metrics = (await https('GET', '/metrics')).body;
    expect(metrics).toMatch(/^sluice_gateway_clock_state\{state="UNLOCKED",source="ptp"\} 1$/m);
    // A command timed by the gateway's own receipt does not depend on its sync.
    const untimed = await command('untimed-1', { device: 'inlet-valve', action: 'open' });
    expect(untimed.status).toBe(200);
    expect(valve.counters.writesReceived).toBe(before + 1);

    await lab.grandmaster.start();
    await reach('LOCKED', 30_000);
    const back = await stamped('back-1', 'close');
    expect(back.status).toBe(200);
    expect(valve.counters.writesReceived).toBe(before + 2);
  }, 90_000);

  it('sluicectl clock gives the last lock in RFC 3339, as docs/sluicectl.md says of --json', async () => {
    await reach('LOCKED', 30_000);
    const [json, human] = await Promise.all([
      sluicectlInProcess(['--config', configPath, 'clock', '--json']),
      sluicectlInProcess(['--config', configPath, 'clock']),
    ]);
    expect(json.code).toBe(0);
    const gateway = json.json<{ gateway: Record<string, unknown> }>().gateway;
    expect(gateway).toMatchObject({ source: 'ptp', state: 'LOCKED' });
    expect(gateway).not.toHaveProperty('lastLockedMono');
    const rfc3339 = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;
    for (const field of ['checkedAt', 'since', 'lastLockedAt']) {
      expect(gateway[field], field).toMatch(rfc3339);
    }
    // The human layout: each time with its age.
    expect(human.code).toBe(0);
    expect(human.stdout).toMatch(/^\s+state\s+LOCKED$/m);
    for (const label of ['since', 'checked', 'last locked']) {
      expect(human.stdout).toMatch(
        new RegExp(`^\\s+${label}\\s+\\d{4}-\\d\\d-\\d\\dT[\\d:.]+Z \\(\\S+ ago\\)$`, 'm'),
      );
    }
  }, 60_000);
});
