import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { Daemon } from '../../src/daemon/daemon.js';
import type { DeviceDocument } from '../../src/intake/device-view.js';
import { sluicectlInProcess } from '../cli/helpers.js';
import { tempDir } from '../helpers/fixtures.js';
import { loopbackCertificate } from '../helpers/loopback-https.js';
import { until } from '../helpers/mosquitto.js';
import { SimProcess } from '../helpers/sim-process.js';

/**
 * A frozen PLC process (sluice-sim SIGSTOPped): its kernel still completes each TCP connect,
 * but nothing answers. The Modbus endpoint counted a connection as up from its TCP connect, so
 * every reconnect showed the device connected until its first read timed out, and `sluicectl
 * devices` flipped between "yes, reads fail" and "no" for as long as the PLC stayed frozen. A
 * connection counts once the PLC has answered on it: the device is steadily not connected,
 * across the reconnects (the connection epoch, seen advancing while it is watched), and
 * connected again once the process runs. Real sluiced (Daemon), sluice-sim as a process,
 * sluicectl.
 */

let sim: SimProcess | undefined;
let daemon: Daemon | undefined;
let configPath: string;
let cleanup: () => void;

beforeAll(async () => {
  let dir: string;
  ({ dir, cleanup } = tempDir('sluice-frozen-plc-'));
  sim = await SimProcess.start(dir, {
    mb: { protocol: 'modbus', scanMs: 5, devices: { v1: { profile: 'valve', base: 0 } } },
  });
  const plc = sim.plcs[0]!;
  if (plc.endpoint.protocol !== 'modbus') throw new Error('no Modbus PLC');
  await loopbackCertificate(dir);
  configPath = join(dir, 'sluice.yaml');
  writeFileSync(
    configPath,
    stringify({
      gatewayId: 'frozen',
      stateDir: 'state',
      https: { host: '127.0.0.1', port: 0, certFile: 'cert.pem', keyFile: 'key.pem' },
      identities: {},
      plcs: {
        mb: {
          protocol: 'modbus',
          host: plc.endpoint.host,
          port: plc.endpoint.port,
          unitId: plc.endpoint.unitId,
          requestTimeoutMs: 300,
        },
      },
      devices: { v1: { plc: 'mb', profile: 'valve', base: 0 } },
    }),
  );
  daemon = await Daemon.start(loadConfig(configPath, { env: {} }), {
    logger: pino({ level: 'silent' }),
    monitorIntervalMs: 100,
  });
}, 60_000);

afterAll(async () => {
  sim?.freeze(false);
  await daemon?.stop();
  await sim?.stop();
  cleanup();
}, 30_000);

/** v1 as `sluicectl devices --json` reports it. */
async function reported(): Promise<DeviceDocument['connectivity']> {
  const run = await sluicectlInProcess(['--config', configPath, 'devices', '--json']);
  expect(run.code, run.stderr).toBe(0);
  const doc = run.json<{ devices: DeviceDocument[] }>().devices.find((d) => d.id === 'v1');
  if (doc === undefined) throw new Error('no v1');
  return doc.connectivity;
}

const epoch = (): number =>
  daemon!.pipeline.devices().find((d) => d.id === 'v1')!.health.connectionEpoch;

describe('sluicectl devices on a frozen PLC process', () => {
  it('says not connected steadily while it is frozen, across reconnects; connected once it runs', async () => {
    await until(async () => ((await reported()).connected ? true : undefined), 15_000, 'up');
    sim!.freeze(true);
    await until(
      async () => ((await reported()).connected ? undefined : true),
      10_000,
      'not connected',
    );
    // Watched while the endpoint connects again (TCP completes) at least twice: sampled on each
    // of those connections.
    const from = epoch();
    const seen: { at: number; said: string }[] = [];
    while (new Set(seen.filter((s) => s.at > from).map((s) => s.at)).size < 2) {
      const at = epoch();
      const c = await reported();
      seen.push({ at, said: c.connected ? `yes (${c.readError?.message ?? 'reads fine'})` : 'no' });
      await new Promise((r) => setTimeout(r, 40));
    }
    expect(seen.filter((s) => s.said !== 'no')).toEqual([]);

    sim!.freeze(false);
    await until(async () => ((await reported()).connected ? true : undefined), 15_000, 'again');
  }, 60_000);
});
