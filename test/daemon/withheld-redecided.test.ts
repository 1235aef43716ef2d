import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig, type SluiceConfig } from '../../src/config/config.js';
import type { CommandRecord } from '../../src/core/journal.js';
import { Daemon } from '../../src/daemon/daemon.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import type { Plant } from '../../simulators/plant.js';
import { startModbusPlant, writeTokenSite } from '../helpers/daemon-site.js';
import { failFdatasync } from '../helpers/failing-fdatasync.js';
import { tempDir } from '../helpers/fixtures.js';
import { httpsRequest, metricSample } from '../helpers/loopback-https.js';
import { until } from '../helpers/mosquitto.js';

/**
 * A command whose write was withheld — its dispatch could not be made durable, so the write was
 * never sent (src/core/lane.ts, `withheld`) — is decided again on a fresh read and written once
 * the journal is back, by a real daemon (its HTTPS intake, sweep, journal and Modbus driver)
 * against sluice-sim over real sockets, while another master moves the valve: a stop is written
 * and stops the travel; an open, the valve opened and stopped by the other master meanwhile,
 * opens it.
 * Settled by readback instead, each waited for a write that never was (nothing proves a write
 * unapplied once the valve has moved): the stop was never written and the valve travelled on,
 * the open ended READBACK_TIMEOUT "whether the write was applied is unknown". Ground truth: the
 * simulator's write log and state, the journal file (read through a connection of its own) and
 * /metrics.
 *
 * The one double is a failing fdatasync (test/helpers/failing-fdatasync.ts): a disk's EIO,
 * which neither the simulator nor any other real part here produces on demand. It makes the
 * command's dispatch barrier fail once; the daemon runs in this process so that it reaches its
 * journal.
 */

const TOKEN = 'withheld-redecided-token';
const SCOPE = 'scada';
/** Another master's writes (sequence numbers no command of the daemon's carries). */
const OTHER_OPEN = { code: 1, setpoint: 0, seq: 60_001 } as const;
const OTHER_STOP = { code: 3, setpoint: 0, seq: 60_002 } as const;

let plant: Plant;
let config: SluiceConfig;
let daemon: Daemon;
let cert: string;
let cleanup: () => void;

function post(key: string, body: unknown) {
  return httpsRequest(
    { port: daemon.https!.port, ca: cert, token: TOKEN },
    'POST',
    '/v1/commands',
    { 'idempotency-key': key, prefer: 'respond-async' },
    body,
  );
}

async function settled(key: string): Promise<CommandRecord> {
  const record = await daemon.pipeline.waitForSettled({ scope: SCOPE, key }, 20_000);
  if (record === undefined) throw new Error(`${key} did not settle`);
  return record;
}

/** The command's history lines (dispatched → dispatched), from the journal file. */
function notesOnFile(key: string): string[] {
  const journal = SqliteJournal.open({ path: config.journal.path!, readonly: true });
  try {
    return journal
      .history({ scope: SCOPE, key })
      .filter((e) => e.from === 'dispatched' && e.to === 'dispatched')
      .map((e) => e.detail);
  } finally {
    journal.close();
  }
}

/**
 * `key` (on `device`) accepted (202), then its dispatch's barrier failed: its fresh read is held on
 * the link so that the failing flush is armed after its claim's barrier and before its
 * dispatch's.
 */
async function withheld(device: string, key: string, action: 'open' | 'stop'): Promise<void> {
  const valve = plant.device(device);
  valve.setFault({ kind: 'stall', on: 'read', count: 1 });
  const accepted = await post(key, { device, action, ttlMs: 15_000 });
  expect(accepted.status, accepted.body).toBe(202);
  const disk = failFdatasync(1);
  try {
    valve.clearFaults();
    await until(() => (disk.failures === 1 ? true : undefined), 10_000, 'the failed flush');
  } finally {
    disk.restore();
  }
}

/** The device's second writes sent for a write withheld, by /metrics. */
function withheldRedispatches(device: string): Promise<number> {
  return metricSample({ port: daemon.https!.port, ca: cert }, 'sluice_device_redispatches_total', {
    device,
    reason: 'withheld',
  });
}

beforeAll(async () => {
  const made = tempDir('sluice-withheld-redecided-');
  cleanup = made.cleanup;
  // v1's stroke long enough to be stopped mid-way; v2's short, so that its open is confirmed
  // within the confirm timeout.
  plant = await startModbusPlant({
    v1: { profile: 'valve', base: 0, travelMs: 20_000 },
    v2: { profile: 'valve', base: 100, travelMs: 1_000 },
  });
  let configPath: string;
  ({ configPath, cert } = await writeTokenSite(made.dir, plant, {
    gatewayId: 'withheld',
    token: TOKEN,
    scope: SCOPE,
  }));
  config = loadConfig(configPath, { env: {} });
  daemon = await Daemon.start(config, {
    logger: pino({ level: 'silent' }),
    monitorIntervalMs: 200,
  });
}, 60_000);

afterAll(async () => {
  await daemon.stop();
  await plant.stop();
  cleanup();
}, 30_000);

// In turn: the fdatasync double is the process's.
describe('a withheld command taken up by the daemon, the valve moved by another master', () => {
  it('a stop: decided again and written once; the valve stops mid-stroke', async () => {
    const v1 = plant.device('v1');
    v1.receiveWrite(OTHER_OPEN);
    await until(() => (v1.position >= 5 ? true : undefined), 10_000, 'the valve travelling');
    await withheld('v1', 'stop', 'stop');
    const record = await settled('stop');
    expect(record).toMatchObject({ state: 'confirmed', code: 'OK', attempts: 2 });
    // Ground truth: the other master's open, then the stop, once; the valve rests mid-stroke.
    expect(v1.writeLog.map((w) => w.seq)).toEqual([OTHER_OPEN.seq, record.seq]);
    expect(v1.state).toBe('STOPPED');
    expect(v1.position).toBeLessThan(60);
    expect(notesOnFile('stop')).toContain(
      `taken up: sequence number ${record.seq}, never sent by this process (the journal failed before its dispatch was on disk), so the stop is handled as one not yet written: a fresh read decides, then its write`,
    );
    expect(await withheldRedispatches('v1')).toBe(1);
  });

  it('an open, the valve opened and stopped by the other master before its take-up: decided again and written once; the valve opens', async () => {
    const v2 = plant.device('v2');
    await withheld('v2', 'open', 'open');
    // Its take-up's reads dropped until the other master has moved the valve from the CLOSED
    // it was decided at: open, then stop a little way into the stroke.
    v2.setFault({ kind: 'drop', on: 'read' });
    v2.receiveWrite(OTHER_OPEN);
    await until(() => (v2.position >= 5 ? true : undefined), 10_000, 'the valve travelling');
    v2.receiveWrite(OTHER_STOP);
    await until(() => (v2.state === 'STOPPED' ? true : undefined), 10_000, 'the valve stopped');
    v2.clearFaults();
    const record = await settled('open');
    expect(record, record.detail ?? '').toMatchObject({
      state: 'confirmed',
      code: 'OK',
      attempts: 2,
    });
    // Ground truth: the other master's open and stop, then the open, once; the valve open.
    expect(v2.writeLog.map((w) => w.seq)).toEqual([OTHER_OPEN.seq, OTHER_STOP.seq, record.seq]);
    expect(v2.state).toBe('OPEN');
    expect(notesOnFile('open')).toContain(
      `taken up: sequence number ${record.seq}, never sent by this process (the journal failed before its dispatch was on disk), so the command is handled as one not yet written: a fresh read decides, then its write`,
    );
    expect(await withheldRedispatches('v2')).toBe(1);
  });
});
