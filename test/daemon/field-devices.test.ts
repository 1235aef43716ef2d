import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { cpSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import ModbusSerial from 'modbus-serial';
import type { ModbusRTU } from 'modbus-serial/ModbusRTU.js';
import { pino } from 'pino';
import { parse, stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { systemClock } from '../../src/core/clock.js';
import { parseProfile } from '../../src/core/profile.js';
import { Daemon } from '../../src/daemon/daemon.js';
import { ModbusDeviceDriver, ModbusEndpoint } from '../../src/drivers/modbus.js';
import { sha256 } from '../../src/intake/identities.js';
import { loadPlantFile, startPlant, type Plant } from '../../simulators/plant.js';
import { ROOT, tempDir } from '../helpers/fixtures.js';
import { httpsRequest, loopbackCertificate, type HttpsAnswer } from '../helpers/loopback-https.js';
import { until } from '../helpers/mosquitto.js';
import { hasCommand, realComponent } from '../helpers/real.js';
import { runSluiced } from '../config/sluiced.js';

/**
 * The field-device profiles through the whole daemon, against the simulator's field plant
 * (simulators/plants/field.yaml) and the shipped site file (devices/site.field.yaml): a
 * standard valve, a limit-switch valve whose state is a bit-packed status word with no echo,
 * no clock and no fault register, and a positioner with float32 registers (low word first),
 * vendor codes, a command block apart from its status block and a controller that goes to
 * FAULT when it refuses a command. Ground truth is the simulator: its write log and state.
 * Then the walkthrough of docs/device-profiles.md: its mbpoll cross-checks and `--check`.
 */

const TOKEN = 'field-token';
let plant: Plant;
let daemon: Daemon;
let cert: string;
let dir: string;
let cleanup: () => void;
let port: number;
const site = parse(readFileSync(join(ROOT, 'devices', 'site.field.yaml'), 'utf8')) as {
  plcs: Record<string, Record<string, unknown>>;
  devices: Record<string, Record<string, unknown>>;
};

async function https(
  method: string,
  path: string,
  headers: Record<string, string> = {},
  body?: unknown,
): Promise<HttpsAnswer> {
  return httpsRequest(
    { port: daemon.https!.port, ca: cert, token: TOKEN },
    method,
    path,
    headers,
    body,
  );
}

/** A command, answered once it settled (or 202 with respond-async). */
async function send(
  key: string,
  body: Record<string, unknown>,
  headers: Record<string, string> = {},
): Promise<Record<string, unknown>> {
  const a = await https(
    'POST',
    '/v1/commands',
    { 'idempotency-key': key, prefer: 'wait=15', ...headers },
    body,
  );
  return a.json();
}

async function settled(key: string): Promise<Record<string, unknown>> {
  return until(
    async () => {
      const a = await https('GET', `/v1/commands/${key}`);
      const doc = a.json();
      return ['confirmed', 'failed', 'rejected', 'expired'].includes(String(doc.state))
        ? doc
        : undefined;
    },
    20_000,
    `${key} settled`,
  );
}

beforeAll(async () => {
  ({ dir, cleanup } = tempDir('sluice-field-'));
  const config = await loadPlantFile(join(ROOT, 'simulators', 'plants', 'field.yaml'));
  plant = await startPlant(config, { ephemeralPorts: true, control: false });
  const endpoint = plant.plcs[0]!.endpoint;
  if (endpoint.protocol !== 'modbus') throw new Error('the field plant is Modbus');
  port = endpoint.port;
  cert = await loopbackCertificate(dir);
  const configPath = join(dir, 'sluice.yaml');
  writeFileSync(
    configPath,
    stringify({
      gatewayId: 'field',
      stateDir: 'state',
      https: { host: '127.0.0.1', port: 0, certFile: 'cert.pem', keyFile: 'key.pem' },
      identities: { scada: { tokenSha256: sha256(TOKEN).toString('hex'), devices: ['*'] } },
      // The shipped site's PLC and devices, at the port the simulator bound.
      plcs: { 'field-plc': { ...site.plcs['field-plc'], port } },
      devices: site.devices,
    }),
  );
  daemon = await Daemon.start(loadConfig(configPath, { env: {} }), {
    logger: pino({ level: 'silent' }),
  });
  for (const id of Object.keys(site.devices)) {
    await until(
      () => (daemon.readiness().checks[`device:${id}`]?.ok === true ? true : undefined),
      20_000,
      `${id} reachable`,
    );
  }
}, 60_000);

afterAll(async () => {
  await daemon.stop();
  await plant.stop();
  cleanup();
});

describe('field devices through the daemon', () => {
  it('standard valve: open confirmed by readback, one write', async () => {
    const valve = plant.device('std-valve');
    const r = await send('std-open-1', { device: 'std-valve', action: 'open' });
    expect(r).toMatchObject({ state: 'confirmed', code: 'OK' });
    expect(valve.snapshot().state).toBe('OPEN');
    expect(valve.writesWithSeq(Number(r.seq))).toBe(1);
  });

  it('limit-switch valve: states decoded from the status word, confirmed without an echo', async () => {
    const valve = plant.device('lsv-101');
    const open = await send('lsv-open-1', { device: 'lsv-101', action: 'open' });
    expect(open).toMatchObject({ state: 'confirmed', code: 'OK' });
    // No position, echo, fault code or clock in this map: the readback says so.
    expect(open.observed).toMatchObject({
      state: 'OPEN',
      position: null,
      seq: null,
      faultCode: null,
      sourceTime: null,
    });
    expect(valve.snapshot().state).toBe('OPEN');

    // Close, and stop it on the way: the status word's "running closed" bit is CLOSING.
    const close = await https(
      'POST',
      '/v1/commands',
      { 'idempotency-key': 'lsv-close-1', prefer: 'respond-async' },
      { device: 'lsv-101', action: 'close' },
    );
    expect(close.status).toBe(202);
    await until(
      () => (valve.snapshot().position <= 60 ? true : undefined),
      10_000,
      'lsv-101 at 60 %',
    );
    const stop = await send('lsv-stop-1', { device: 'lsv-101', action: 'stop' });
    expect(stop).toMatchObject({ state: 'confirmed', code: 'OK' });
    expect(stop.observed).toMatchObject({ state: 'STOPPED' });
    expect(await settled('lsv-close-1')).toMatchObject({ state: 'failed', code: 'INTERRUPTED' });
    expect(valve.snapshot().state).toBe('STOPPED');

    // Ground truth: three commands, three writes of the command register, vendor codes, no
    // sequence numbers.
    expect(valve.writeLog.map((w) => [w.code, w.seq])).toEqual([
      [1, 0],
      [2, 0],
      [3, 0],
    ]);

    // A no-op (stop while STOPPED) is confirmed by a readback and writes nothing.
    const again = await send('lsv-stop-2', { device: 'lsv-101', action: 'stop' });
    expect(again).toMatchObject({ state: 'confirmed', code: 'OK' });
    expect(valve.writeLog).toHaveLength(3);

    // LOCAL is bit 5: the bridge refuses without a write.
    valve.setLocal(true);
    await until(
      async () => {
        const d = (await https('GET', '/v1/devices/lsv-101')).json();
        return (d.mirror as { state?: string } | null)?.state === 'LOCAL' ? true : undefined;
      },
      10_000,
      'lsv-101 mirrored LOCAL',
    );
    const local = await send('lsv-open-2', { device: 'lsv-101', action: 'open' });
    expect(local).toMatchObject({ state: 'rejected', code: 'LOCAL_MODE' });
    expect(valve.writeLog).toHaveLength(3);
    valve.setLocal(false);
  });

  it('float positioner: a float32 setpoint, low word first, read back as a float', async () => {
    const positioner = plant.device('fcv-201');
    const r = await send('fcv-move-1', { device: 'fcv-201', action: 'move', position: 37.25 });
    expect(r).toMatchObject({ state: 'confirmed', code: 'OK' });
    expect((r.observed as { position: number }).position).toBe(37.25);
    expect(positioner.snapshot()).toMatchObject({ state: 'IDLE' });
    // The vendor's move code (1, not the standard 5), the exact float and the echoed seq.
    expect(positioner.writeLog.map((w) => [w.code, w.setpoint, w.seq])).toEqual([
      [1, 37.25, Number(r.seq)],
    ]);
    expect(positioner.published.seqEcho).toBe(Number(r.seq));
    // The clock at 220..223 is read: the controller skew is known.
    const view = (await https('GET', '/v1/devices/fcv-201')).json();
    expect(view.skew).not.toBeNull();
    // The limit-switch valve has no clock: no skew, and no read error for it either.
    const lsv = (await https('GET', '/v1/devices/lsv-101')).json();
    expect(lsv.skew).toBeNull();
    expect((lsv.connectivity as { clockReadError: unknown }).clockReadError).toBeNull();
  });

  it('float positioner: a refusal that puts the controller in FAULT is worded as such, and a reset clears it', async () => {
    const positioner = plant.device('fcv-201');
    // Another master and the bridge both send a move while the controller's handshake is busy
    // (the simulator's hold): the bridge read IDLE and wrote; the scan that takes both starts
    // the other master's move and refuses the bridge's, which this controller answers by
    // going to FAULT.
    positioner.setFault({ kind: 'hold' });
    const before = positioner.writeLog.length;
    const other = new (ModbusSerial as unknown as new () => ModbusRTU)();
    await other.connectTCP('127.0.0.1', { port });
    other.setID(1);
    try {
      // Move to 60 % (float 60 = 0x42700000, low word first), seq 40000.
      await other.writeRegisters(200, [1, 0x0000, 0x4270, 40_000]);
    } finally {
      other.close(() => undefined);
    }
    const accepted = await https(
      'POST',
      '/v1/commands',
      { 'idempotency-key': 'fcv-move-2', prefer: 'respond-async' },
      { device: 'fcv-201', action: 'move', position: 80 },
    );
    expect(accepted.status).toBe(202);
    await until(
      () => (positioner.writeLog.length === before + 2 ? true : undefined),
      10_000,
      'both moves at the PLC',
    );
    positioner.clearFault('hold');
    const r = await settled('fcv-move-2');
    expect(r).toMatchObject({ state: 'rejected', code: 'ILLEGAL_TRANSITION', faultCode: '0x88' });
    expect(r.detail).toBe(
      'the controller refused move from IDLE (fault 0x88) and went to FAULT, as it does with a refused command; a reset clears it',
    );
    expect(positioner.snapshot().state).toBe('FAULT');
    expect(positioner.faultCode).toBe(0x88);
    expect(positioner.writesWithSeq(Number(r.seq))).toBe(1);

    const reset = await send('fcv-reset-1', { device: 'fcv-201', action: 'reset' });
    expect(reset).toMatchObject({ state: 'confirmed', code: 'OK' });
    expect(positioner.snapshot().state).toBe('IDLE');
    expect(positioner.writesWithSeq(Number(reset.seq))).toBe(1);
  });

  it('the limit switches as discrete inputs read the same state as the status word', async () => {
    const word = parseProfile(
      parse(readFileSync(join(ROOT, 'devices', 'profiles', 'limit-switch-valve.yaml'), 'utf8')),
      'limit-switch-valve.yaml',
    );
    const inputs = parseProfile(
      {
        ...parse(
          readFileSync(join(ROOT, 'devices', 'profiles', 'limit-switch-valve.yaml'), 'utf8'),
        ),
        profile: 'limit-switch-valve-inputs',
        modbus: {
          status: {
            state: { table: 'discrete', at: 0, count: 6, bits: word.modbus!.status.state.bits },
          },
          command: { code: { at: 10 } },
        },
      },
      'inputs.yaml',
    );
    const endpoint = new ModbusEndpoint({
      name: 'field-plc',
      host: '127.0.0.1',
      port,
      unitId: 1,
      clock: systemClock,
      logger: pino({ level: 'silent' }),
    });
    try {
      const driver = (profile: typeof word) =>
        new ModbusDeviceDriver({ id: 'lsv-101', profile, endpoint, base: 100, clock: systemClock });
      const a = await driver(word).read();
      const b = await driver(inputs).read();
      expect(a.state).toBe(plant.device('lsv-101').snapshot().state);
      expect(b.state).toBe(a.state);
    } finally {
      await endpoint.close();
    }
  });
});

const mbpoll = realComponent('mbpoll', hasCommand('mbpoll'), 'apt-get install mbpoll');

describe('the walkthrough of docs/device-profiles.md', () => {
  /** The doc's mbpoll lines, run with the port the simulator bound instead of 5021. */
  const docCommands = (): string[][] => {
    const doc = readFileSync(join(ROOT, 'docs', 'device-profiles.md'), 'utf8');
    return doc
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l.startsWith('mbpoll '))
      .map((l) =>
        l
          .replace(/\s+#.*$/, '')
          .split(/\s+/)
          .slice(1),
      )
      .map((args) => args.map((a) => (a === '5021' ? String(port) : a)));
  };

  it.runIf(mbpoll)('its mbpoll cross-checks read what the profile says', async () => {
    const commands = docCommands();
    expect(commands.length).toBeGreaterThanOrEqual(4);
    // Asynchronously: the simulator answering them runs in this process.
    const out: string[] = [];
    for (const args of commands) out.push((await promisify(execFile)('mbpoll', args)).stdout);
    const positioner = plant.device('fcv-201').snapshot();
    const lsv = plant.device('lsv-101').snapshot();
    const value = (text: string | undefined, register: number): number => {
      const m = new RegExp(`\\[${register}\\]:\\s+(\\S+)`).exec(text ?? '');
      if (m?.[1] === undefined) throw new Error(`no register ${register} in:\n${text ?? ''}`);
      return Number(m[1]);
    };
    // 1: state, position (two words), fault, echo of the positioner.
    const codes: Record<string, number> = { IDLE: 1, MOVING: 2, FAULT: 3, LOCAL: 4 };
    expect(value(out[0], 210)).toBe(codes[positioner.state]);
    expect(value(out[0], 213)).toBe(positioner.faultCode);
    expect(value(out[0], 214)).toBe(plant.device('fcv-201').published.seqEcho);
    // 2 and 4: the position as a float, in mbpoll's default (low word first) order.
    expect(value(out[1], 211)).toBeCloseTo(plant.device('fcv-201').published.rawPosition, 3);
    expect(value(out[3], 211)).toBeCloseTo(plant.device('fcv-201').published.rawPosition, 3);
    // 3: the limit-switch valve's status word, as its state and position set it.
    const word =
      (lsv.position >= 100 ? 1 : 0) |
      (lsv.position <= 0 ? 2 : 0) |
      (lsv.state === 'FAULT' ? 4 : 0) |
      (lsv.state === 'OPENING' ? 8 : 0) |
      (lsv.state === 'CLOSING' ? 16 : 0) |
      (lsv.state === 'LOCAL' ? 32 : 0);
    expect(value(out[2], 100)).toBe(word);
  });

  it("sluiced --check on the field site prints each device's map and touches nothing", () => {
    // devices/site.field.yaml as shipped, next to the demo files it borrows.
    const root = join(dir, 'walkthrough');
    mkdirSync(join(root, 'devices'), { recursive: true });
    mkdirSync(join(root, '.state', 'demo', 'tls'), { recursive: true });
    cpSync(join(ROOT, 'devices', 'site.field.yaml'), join(root, 'devices', 'site.field.yaml'));
    cpSync(join(dir, 'cert.pem'), join(root, '.state', 'demo', 'tls', 'cert.pem'));
    cpSync(join(dir, 'key.pem'), join(root, '.state', 'demo', 'tls', 'key.pem'));
    writeFileSync(join(root, '.state', 'demo', 'demo-token'), `${TOKEN}\n`, { mode: 0o600 });
    const r = runSluiced(['--config', join(root, 'devices', 'site.field.yaml'), '--check']);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    for (const line of [
      'reads   holding 210+10 (maxGap 8)',
      'writes  holding 200+4 (one FC16)',
      'status  position holding (FC3) 211..212, float32, little-endian words',
      'status  state    holding (FC3) 100, uint16, bits → LOCAL, FAULT, OPENING, CLOSING, OPEN, CLOSED, STOPPED',
      'writes  holding 110+1 (one FC16)',
    ]) {
      expect(r.stdout).toContain(line);
    }
    expect(() => readFileSync(join(root, '.state', 'field', 'journal.db'))).toThrow();
  });
});
