import { readFileSync, writeFileSync } from 'node:fs';
import { pino } from 'pino';
import { parse, stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { Daemon } from '../../src/daemon/daemon.js';
import type { Plant } from '../../simulators/plant.js';
import { startPlant } from '../../simulators/plant.js';
import { writeDaemonSite } from '../helpers/daemon-site.js';
import { tempDir } from '../helpers/fixtures.js';
import { httpsRequest, loopbackCertificate } from '../helpers/loopback-https.js';
import { until } from '../helpers/mosquitto.js';

/**
 * SPEC §6 in /metrics and /readyz of a real daemon against sluice-sim: what they say of a
 * controller clock is what is known of it now. A clock never measured (a device without a
 * clock register) is not reported within its bound; a skew estimate that no longer stands (a
 * reconnect: the controller may have restarted with another clock) is not shown as the skew,
 * nor is the flag of a clock beyond its bound that rested on it — while the clock cannot be
 * read again, both are unknown.
 */

let plant: Plant;
let daemon: Daemon;
let cert: string;
let cleanup: () => void;

async function get(path: string): Promise<string> {
  const answer = await httpsRequest({ port: daemon.https!.port, ca: cert, token: '' }, 'GET', path);
  return answer.body;
}

/** The one sample of `name` for `device`; undefined when the scrape has none. */
async function sample(name: string, device: string): Promise<number | undefined> {
  const text = await get('/metrics');
  const m = new RegExp(`^${name}\\{device="${device}"\\} (\\S+)$`, 'm').exec(text);
  return m === null ? undefined : Number(m[1]);
}

async function clockCheck(device: string): Promise<{ ok: boolean; detail: string } | undefined> {
  const ready = JSON.parse(await get('/readyz')) as {
    checks: Record<string, { ok: boolean; detail: string }>;
  };
  return ready.checks[`clock:${device}`];
}

beforeAll(async () => {
  const { dir, cleanup: done } = tempDir('sluice-metrics-clock-');
  cleanup = done;
  plant = await startPlant(
    {
      control: { host: '127.0.0.1', port: 0 },
      plcs: {
        mb: {
          protocol: 'modbus',
          host: '127.0.0.1',
          port: 0,
          clock: { offsetMs: 5_000, driftPpm: 0 },
          devices: {
            valve: { profile: 'valve', base: 0, travelMs: 200 },
            // No clock register in its profile (limit-switch-valve): never measured.
            lsv: { profile: 'valve', layout: 'limit-switch', base: 300, travelMs: 200 },
          },
        },
      },
    },
    { ephemeralPorts: true, control: false },
  );
  const configPath = await writeDaemonSite(dir, plant, 'clockmetrics');
  cert = await loopbackCertificate(dir);
  const config = parse(readFileSync(configPath, 'utf8')) as {
    clock?: unknown;
    devices: Record<string, { profile: string }>;
  };
  config.clock = { maxControllerSkewMs: 1_000, onUnsynced: 'reject' };
  config.devices.lsv!.profile = 'limit-switch-valve';
  writeFileSync(configPath, stringify(config));
  daemon = await Daemon.start(loadConfig(configPath, { env: {} }), {
    logger: pino({ level: 'silent' }),
    monitorIntervalMs: 200,
  });
}, 60_000);

afterAll(async () => {
  await daemon.stop();
  await plant.stop();
  cleanup();
}, 30_000);

describe('controller clocks in /metrics and /readyz (SPEC §6)', () => {
  it('a device without a controller clock: its clock is not reported within its bound', async () => {
    // Read by the monitor: its readback is there, and so would any clock measurement be.
    await until(
      async () =>
        (await sample('sluice_device_readback_age_seconds', 'lsv')) !== undefined
          ? true
          : undefined,
      10_000,
      'lsv read',
    );
    expect(await sample('sluice_controller_clock_ok', 'lsv')).toBeNaN();
    expect(await sample('sluice_controller_skew_seconds', 'lsv')).toBeNaN();
    expect(await clockCheck('lsv')).toBeUndefined();
  });

  it('a clock flagged beyond its bound, then a reconnect and clock reads that fail: skew and flag unknown, not the old ones', async () => {
    await until(
      async () => ((await sample('sluice_controller_clock_ok', 'valve')) === 0 ? true : undefined),
      10_000,
      'the 5 s clock flagged',
    );
    expect(await sample('sluice_controller_skew_seconds', 'valve')).toBeCloseTo(5, 0);
    expect((await clockCheck('valve'))?.ok).toBe(false);

    const plc = plant.plc('mb');
    const connections = plc.connectionsAccepted;
    // The next read cuts the connection (the driver reconnects: a new connection epoch), and
    // every read after it is refused — the controller clock's among them.
    plc.setFault({ kind: 'exception', code: 4, on: 'read' });
    plc.setFault({ kind: 'reset', when: 'before', on: 'read', count: 1 });
    await until(
      () => (plc.connectionsAccepted > connections ? true : undefined),
      10_000,
      'the driver connected again',
    );
    const clockErrors = (await sample('sluice_controller_clock_read_errors_total', 'valve')) ?? 0;
    await until(
      async () =>
        ((await sample('sluice_controller_clock_read_errors_total', 'valve')) ?? 0) > clockErrors
          ? true
          : undefined,
      10_000,
      'a clock read failed on the new connection',
    );
    // NaN, Prometheus' "unknown" (as for the gateway clock's offset): not the last value.
    expect(await sample('sluice_controller_skew_seconds', 'valve')).toBeNaN();
    expect(await sample('sluice_controller_clock_ok', 'valve')).toBeNaN();
    const check = await clockCheck('valve');
    expect(
      check === undefined || (check.ok && /not known now/.test(check.detail)),
      JSON.stringify(check),
    ).toBe(true);

    // Readable again: measured on the new connection, and flagged again (still 5 s off).
    plc.clearFault('exception');
    await until(
      async () => ((await sample('sluice_controller_clock_ok', 'valve')) === 0 ? true : undefined),
      10_000,
      'flagged again once measured',
    );
    expect(await sample('sluice_controller_skew_seconds', 'valve')).toBeCloseTo(5, 0);
  });
});
