import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { Daemon } from '../../src/daemon/daemon.js';
import { READS_FAILING_MS } from '../../src/daemon/readiness.js';
import type { DeviceDocument } from '../../src/intake/device-view.js';
import { sha256 } from '../../src/intake/identities.js';
import { startPlant, type Plant } from '../../simulators/plant.js';
import { tempDir } from '../helpers/fixtures.js';
import { httpsRequest, loopbackCertificate, type HttpsAnswer } from '../helpers/loopback-https.js';
import { until } from '../helpers/mosquitto.js';
import { inventoryFor } from '../helpers/plant-inventory.js';

/**
 * A device whose reads keep failing says why, through the whole daemon on real parts: a
 * sluice-sim plant over real sockets, the daemon's HTTPS intake, its pino log. `ghost-valve`
 * is configured at Modbus base 500, where the simulated PLC has no registers (every read is
 * answered exception 0x02) on a connection that stays up; `flaky-valve` is refused by the
 * simulator's fault injection, then recovers; `clk-valve`'s PLC refuses every read, its
 * controller clock included. /v1/devices and /readyz name the error, the log says it at warn
 * once per error (not once per poll) and says when reads recover.
 */

const TOKEN = 'read-errors-token';
const MONITOR_MS = 50;
const EXCEPTION_02 = 'Modbus exception 0x02 (illegal data address)';
const EXCEPTION_04 = 'Modbus exception 0x04 (server device failure)';

interface LogLine {
  readonly level: number;
  readonly msg: string;
  readonly device?: string;
  readonly error?: string;
  readonly previousError?: string;
  readonly failures?: number;
  readonly lastError?: string;
  readonly key?: string;
}

let plant: Plant;
let daemon: Daemon;
let cleanup: () => void;
let cert: string;
const lines: LogLine[] = [];

function https(path: string): Promise<HttpsAnswer> {
  return httpsRequest({ port: daemon.https!.port, ca: cert, token: TOKEN }, 'GET', path);
}

async function device(id: string): Promise<DeviceDocument> {
  const answer = await https(`/v1/devices/${id}`);
  expect(answer.status).toBe(200);
  return answer.json() as unknown as DeviceDocument;
}

/** The device once its failing reads have reached `failures` in a row (several polls). */
async function failingFor(
  id: string,
  failures: number,
  which: 'readError' | 'clockReadError' = 'readError',
  message?: string,
): Promise<DeviceDocument> {
  return until(
    async () => {
      const doc = await device(id);
      const error = doc.connectivity[which];
      return error !== null &&
        error.failures >= failures &&
        (message === undefined || error.message.includes(message))
        ? doc
        : undefined;
    },
    10_000,
    `${id}: ${failures} failed reads${message === undefined ? '' : ` with ${message}`}`,
  );
}

const logged = (id: string, msg: string): LogLine[] =>
  lines.filter((l) => l.device === id && l.msg === msg);

beforeAll(async () => {
  const { dir, cleanup: done } = tempDir('sluice-read-errors-');
  cleanup = done;
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
        flaky: {
          protocol: 'modbus',
          host: '127.0.0.1',
          port: 0,
          devices: {
            'flaky-valve': { profile: 'valve', base: 0, travelMs: 200 },
            'held-valve': { profile: 'valve', base: 100, travelMs: 200 },
          },
        },
        clk: {
          protocol: 'modbus',
          host: '127.0.0.1',
          port: 0,
          devices: { 'clk-valve': { profile: 'valve', base: 0, travelMs: 200 } },
        },
      },
    },
    { ephemeralPorts: true, control: false },
  );
  cert = await loopbackCertificate(dir);
  const inventory = inventoryFor(plant);
  // Refusals are the errors under test: a request timing out on a busy test machine is not.
  for (const [name, plc] of Object.entries(inventory.plcs)) {
    inventory.plcs[name] = { ...plc, requestTimeoutMs: 2_000 };
  }
  // The wrong register map: a device the PLC has no registers for, on its healthy connection.
  inventory.devices['ghost-valve'] = { plc: 'mb', profile: 'valve', base: 500 };
  const configPath = join(dir, 'sluice.yaml');
  writeFileSync(
    configPath,
    stringify({
      gatewayId: 'readerrors',
      stateDir: 'state',
      https: {
        host: '127.0.0.1',
        port: 0,
        certFile: 'cert.pem',
        keyFile: 'key.pem',
        // The test polls the devices quickly.
        rateLimit: { perSecond: 1_000, burst: 1_000 },
      },
      identities: { ops: { tokenSha256: sha256(TOKEN).toString('hex'), devices: ['*'] } },
      plcs: inventory.plcs,
      devices: inventory.devices,
    }),
  );
  const logger = pino(
    { level: 'info' },
    {
      write: (line: string) => {
        lines.push(JSON.parse(line) as LogLine);
      },
    },
  );
  daemon = await Daemon.start(loadConfig(configPath, { env: {} }), {
    logger,
    monitorIntervalMs: MONITOR_MS,
  });
}, 60_000);

afterAll(async () => {
  await daemon.stop();
  await plant.stop();
  cleanup();
}, 30_000);

describe('a device whose reads keep failing says why', () => {
  it('a wrong register map: the Modbus exception in /v1/devices, /readyz, /metrics, and one warning', async () => {
    const ghost = await failingFor('ghost-valve', 5);
    expect(ghost.mirror).toBeNull();
    // The PLC answers: the shared connection is up, and the device's own reads say otherwise.
    expect(ghost.connectivity.connected).toBe(true);
    expect(ghost.connectivity.readError?.message).toContain(EXCEPTION_02);
    expect(ghost.connectivity.readError?.message).toContain('read 500+');
    expect(Date.parse(ghost.connectivity.readError!.since)).toBeLessThanOrEqual(
      Date.parse(ghost.connectivity.readError!.lastAt),
    );
    // The controller clock is outside the device's block: its reads succeed.
    expect(ghost.connectivity.clockReadError).toBeNull();
    const list = (await https('/v1/devices')).json().devices as DeviceDocument[];
    expect(list.find((d) => d.id === 'ghost-valve')?.connectivity.readError?.message).toContain(
      EXCEPTION_02,
    );
    const inlet = list.find((d) => d.id === 'inlet-valve');
    expect(inlet?.mirror).not.toBeNull();
    expect(inlet?.connectivity.readError).toBeNull();

    const ready = await https('/readyz');
    expect(ready.status).toBe(503);
    const checks = ready.json().checks as Record<string, { ok: boolean; detail: string }>;
    expect(checks['device:ghost-valve']?.ok).toBe(false);
    expect(checks['device:ghost-valve']?.detail).toMatch(
      /^no readback for ever: reads fail since \S+Z \(\d+ in a row\): .*read 500\+\d+: Modbus exception 0x02 \(illegal data address\)$/,
    );
    expect(checks['device:inlet-valve']?.ok).toBe(true);

    const metrics = (await https('/metrics')).body;
    expect(metrics).toMatch(/^sluice_device_read_failing\{device="ghost-valve"\} 1$/m);
    expect(metrics).toMatch(/^sluice_device_read_failing\{device="inlet-valve"\} 0$/m);
    const total = /^sluice_device_read_errors_total\{device="ghost-valve"\} (\d+)$/m.exec(metrics);
    expect(Number(total?.[1])).toBeGreaterThanOrEqual(5);
    expect(metrics).toMatch(/^sluice_device_read_errors_total\{device="inlet-valve"\} 0$/m);

    // Five polls and more, one warning: at warn level, with the device and the exception.
    const warned = logged('ghost-valve', 'device reads fail');
    expect(warned).toHaveLength(1);
    expect(warned[0]).toMatchObject({ level: 40, failures: 1 });
    expect(warned[0]?.error).toContain(EXCEPTION_02);
    expect(logged('ghost-valve', 'device reads fail with another error')).toEqual([]);
    expect(lines.filter((l) => l.device === 'inlet-valve' && l.level >= 40)).toEqual([]);
  });

  it('a command on that device fails with the exception, and its reads add no warning', async () => {
    const before = (await device('ghost-valve')).connectivity.readError!.failures;
    const answer = await httpsRequest(
      { port: daemon.https!.port, ca: cert, token: TOKEN },
      'POST',
      '/v1/commands',
      { 'idempotency-key': 'ghost-open-1', prefer: 'wait=10' },
      { device: 'ghost-valve', action: 'open', ttlMs: 500 },
    );
    expect(answer.status).toBe(502);
    expect(answer.json()).toMatchObject({ code: 'DEVICE_UNREACHABLE', state: 'failed' });
    expect(String(answer.json().detail)).toContain(EXCEPTION_02);
    await failingFor('ghost-valve', before + 5);
    expect(
      lines.filter((l) => l.device === 'ghost-valve' && l.level === 40).map((l) => l.msg),
    ).toEqual(['device reads fail', 'command failed']);
  });

  it('reads that fail while a command is confirmed are said with its key, their recovery too', async () => {
    const valve = plant.device('held-valve');
    await until(
      async () => ((await device('held-valve')).mirror === null ? undefined : true),
      10_000,
      'held-valve readback',
    );
    // The controller holds the command: the bridge confirms by reading, and nothing else reads.
    valve.setFault({ kind: 'hold' });
    const accepted = await httpsRequest(
      { port: daemon.https!.port, ca: cert, token: TOKEN },
      'POST',
      '/v1/commands',
      { 'idempotency-key': 'held-open-1', prefer: 'respond-async' },
      { device: 'held-valve', action: 'open' },
    );
    expect(accepted.status).toBe(202);
    await until(
      () => (valve.counters.writesReceived === 1 ? true : undefined),
      10_000,
      'the write at the controller',
    );
    valve.setFault({ kind: 'exception', code: 2, on: 'read' });
    await failingFor('held-valve', 5);
    valve.clearFault('exception');
    valve.clearFault('hold');
    const settled = await until(
      async () => {
        const body = (await https('/v1/commands/held-open-1')).json();
        return body.state === 'dispatched' ? undefined : body;
      },
      10_000,
      'held-open-1 settled',
    );
    expect(settled).toMatchObject({ state: 'confirmed', code: 'OK' });
    expect(valve.counters.writesReceived).toBe(1);
    const warned = logged('held-valve', 'device reads fail');
    expect(warned).toHaveLength(1);
    expect(warned[0]).toMatchObject({ level: 40, key: 'held-open-1' });
    expect(warned[0]?.error).toContain(EXCEPTION_02);
    const recovered = logged('held-valve', 'device reads recovered');
    expect(recovered).toHaveLength(1);
    expect(recovered[0]).toMatchObject({ level: 30, key: 'held-open-1' });
  });

  it('refused reads: one warning per error, the change of error, and the recovery', async () => {
    const valve = plant.device('flaky-valve');
    await until(
      async () => ((await device('flaky-valve')).mirror === null ? undefined : true),
      10_000,
      'flaky-valve readback',
    );
    valve.setFault({ kind: 'exception', code: 2, on: 'read' });
    const first = await failingFor('flaky-valve', 5);
    expect(first.connectivity.readError?.message).toContain(EXCEPTION_02);
    // The mirror is young still, and the device is not ready once its reads have kept failing
    // for READS_FAILING_MS (as a command's would: readyz-failing-reads.test.ts), and /readyz
    // says so.
    const readyz = await until(
      async () => {
        const answer = await https('/readyz');
        const checks = answer.json().checks as Record<string, { ok: boolean }>;
        return checks['device:flaky-valve']?.ok === false ? answer : undefined;
      },
      READS_FAILING_MS + 10_000,
      'flaky-valve not ready',
    );
    const ready = readyz.json().checks as Record<string, { ok: boolean; detail: string }>;
    expect(ready['device:flaky-valve']?.ok).toBe(false);
    expect(ready['device:flaky-valve']?.detail).toMatch(
      /^no readback for \d+ ms: reads fail since \S+ \(\d+ in a row\): .*Modbus exception 0x02/,
    );

    // Another error: said once more; the run of failures goes on from where it was.
    valve.setFault({ kind: 'exception', code: 4, on: 'read' });
    const changed = await failingFor('flaky-valve', 1, 'readError', EXCEPTION_04);
    expect(changed.connectivity.readError?.since).toBe(first.connectivity.readError?.since);
    const changedAt = changed.connectivity.readError!.failures;
    expect(changedAt).toBeGreaterThan(first.connectivity.readError!.failures);
    await failingFor('flaky-valve', changedAt + 5);

    valve.clearFault('exception');
    await until(
      async () =>
        (await device('flaky-valve')).connectivity.readError === null ? true : undefined,
      10_000,
      'flaky-valve reads recovered',
    );
    const recovered = await until(
      () => {
        const found = logged('flaky-valve', 'device reads recovered');
        return found.length > 0 ? found : undefined;
      },
      5_000,
      'recovery logged',
    );
    expect(recovered).toHaveLength(1);
    expect(recovered[0]).toMatchObject({ level: 30 });
    expect(recovered[0]?.lastError).toContain(EXCEPTION_04);
    expect(recovered[0]?.failures).toBeGreaterThanOrEqual(changedAt + 5);

    const warned = logged('flaky-valve', 'device reads fail');
    expect(warned).toHaveLength(1);
    expect(warned[0]).toMatchObject({ level: 40 });
    expect(warned[0]?.error).toContain(EXCEPTION_02);
    const another = logged('flaky-valve', 'device reads fail with another error');
    expect(another).toHaveLength(1);
    expect(another[0]).toMatchObject({ level: 40 });
    expect(another[0]?.error).toContain(EXCEPTION_04);
    expect(another[0]?.previousError).toContain(EXCEPTION_02);
    expect(lines.filter((l) => l.device === 'flaky-valve' && l.level >= 40)).toHaveLength(2);
  });

  it('controller clock reads refused: one warning, shown in /v1/devices and /metrics, and the recovery', async () => {
    await until(
      async () => {
        const doc = await device('clk-valve');
        return doc.mirror !== null && doc.skew !== null ? true : undefined;
      },
      10_000,
      'clk-valve readback and skew',
    );
    const plc = plant.plc('clk');
    plc.setFault({ kind: 'exception', code: 4, on: 'read' });
    // A new connection voids the skew (SPEC §6): the clock is read again, and refused.
    plc.powerCycle({ offMs: 0 });
    const failing = await failingFor('clk-valve', 5, 'clockReadError', EXCEPTION_04);
    expect(failing.connectivity.clockReadError?.message).toContain('read 900+4');
    const metrics = (await https('/metrics')).body;
    const total = /^sluice_controller_clock_read_errors_total\{device="clk-valve"\} (\d+)$/m.exec(
      metrics,
    );
    expect(Number(total?.[1])).toBeGreaterThanOrEqual(5);

    plc.clearFault('exception');
    await until(
      async () => {
        const doc = await device('clk-valve');
        return doc.connectivity.clockReadError === null && doc.connectivity.readError === null
          ? true
          : undefined;
      },
      10_000,
      'clk-valve reads recovered',
    );
    await until(
      () => (logged('clk-valve', 'controller clock reads recovered').length > 0 ? true : undefined),
      5_000,
      'clock recovery logged',
    );
    // Before the exception the reconnection may have failed otherwise (connection reset):
    // each error is said once, the exception included.
    const clockWarnings = lines.filter(
      (l) => l.device === 'clk-valve' && l.level === 40 && l.msg.startsWith('controller clock'),
    );
    expect(clockWarnings.filter((l) => l.error?.includes(EXCEPTION_04) === true)).toHaveLength(1);
    expect(new Set(clockWarnings.map((l) => l.error)).size).toBe(clockWarnings.length);
    expect(logged('clk-valve', 'controller clock reads recovered')).toHaveLength(1);
    expect(logged('clk-valve', 'controller clock reads recovered')[0]).toMatchObject({
      level: 30,
    });
    const statusWarnings = lines.filter(
      (l) => l.device === 'clk-valve' && l.level === 40 && l.msg.startsWith('device reads'),
    );
    expect(statusWarnings.filter((l) => l.error?.includes(EXCEPTION_04) === true)).toHaveLength(1);
  });
});
