import { request } from 'node:http';
import ModbusSerial from 'modbus-serial';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ManualTime, startPlant } from '../../simulators/plant.js';
import type { Plant } from '../../simulators/plant.js';
import { api, modbusEndpoint } from './helpers.js';

/**
 * modbus-serial's typings declare an ES default export, but the package is CommonJS with
 * `module.exports = ModbusRTU`: under NodeNext the default import *is* the client class.
 */
const ModbusRTU = ModbusSerial as unknown as typeof ModbusSerial.default;

/** The control API over real HTTP; commands arrive over real Modbus (modbus-serial's client). */
describe('control API', () => {
  let time: ManualTime;
  let plant: Plant;
  let url: string;

  beforeEach(async () => {
    time = new ManualTime();
    plant = await startPlant(
      {
        control: { port: 5080 },
        plcs: {
          plc: {
            protocol: 'modbus',
            port: 0,
            devices: {
              v1: { profile: 'valve', base: 0, travelMs: 100 },
              a1: { profile: 'actuator', base: 100, travelMs: 100 },
            },
          },
        },
      },
      { time, manualScan: true, ephemeralPorts: true },
    );
    url = plant.controlUrl ?? '';
  });
  afterEach(() => plant.stop());

  async function command(code: number, seq: number): Promise<void> {
    const ep = modbusEndpoint(plant.plc('plc').endpoint);
    const client = new ModbusRTU();
    await client.connectTCP(ep.host, { port: ep.port });
    try {
      client.setID(ep.unitId);
      client.setTimeout(1000);
      await client.writeRegisters(10, [code, 0, seq]);
    } finally {
      await new Promise((resolve) => {
        client.close(resolve);
      });
    }
  }

  it('listens on an ephemeral loopback port', () => {
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(url).not.toBe('http://127.0.0.1:5080');
  });

  it('lists devices with state, position, fault, seq echo, counters, clock and faults', async () => {
    await command(1, 17);
    time.advance(10);
    plant.scan();
    const { status, body } = await api(url, 'GET', '/devices');
    expect(status).toBe(200);
    const devices = body.devices as Record<string, unknown>[];
    expect(devices.map((d) => d.id)).toEqual(['v1', 'a1']);
    expect(devices[0]).toMatchObject({
      id: 'v1',
      profile: 'valve',
      plc: 'plc',
      state: 'OPENING',
      position: 0,
      faultCode: 0,
      fault: null,
      seqEcho: 17,
      local: false,
      counters: { writesReceived: 1, commandsTaken: 1, accepted: 1, rejected: 0 },
      controllerTime: time.now(),
      faults: [],
      plcFaults: [],
    });
    const one = await api(url, 'GET', '/devices/v1');
    expect(one.body.log).toEqual([
      {
        controllerTime: time.now(),
        seq: 17,
        code: 1,
        setpoint: 0,
        outcome: 'accepted',
        from: 'CLOSED',
        to: 'OPENING',
      },
    ]);
  });

  it('sets, lists and clears device faults with parameters from the body', async () => {
    let res = await api(url, 'PUT', '/devices/v1/faults/drop', { count: 3, on: 'write' });
    expect(res.status).toBe(200);
    expect(res.body.fault).toEqual({ kind: 'drop', count: 3, on: 'write' });
    res = await api(url, 'PUT', '/devices/v1/faults/stuck-travel');
    expect(res.status).toBe(200);
    expect((await api(url, 'GET', '/devices/v1')).body.faults).toEqual([
      { kind: 'drop', count: 3, on: 'write', remaining: 3 },
      { kind: 'stuck-travel' },
    ]);
    res = await api(url, 'DELETE', '/devices/v1/faults/drop');
    expect(res.body).toMatchObject({ cleared: true, faults: [{ kind: 'stuck-travel' }] });
    res = await api(url, 'DELETE', '/devices/v1/faults/drop');
    expect(res.body).toMatchObject({ cleared: false });
    res = await api(url, 'DELETE', '/devices/v1/faults');
    expect(res.body).toMatchObject({ faults: [] });
  });

  it('injects a position sensor fault that the controller shows after its next scan', async () => {
    await api(url, 'PUT', '/devices/v1/faults/position-sensor', {});
    plant.scan();
    expect((await api(url, 'GET', '/devices/v1')).body).toMatchObject({
      state: 'FAULT',
      fault: '0x82',
    });
  });

  it('sets the PLC clock and restores the plant file clock on DELETE', async () => {
    let res = await api(url, 'PUT', '/plcs/plc/faults/clock', { offsetMs: 1500, driftPpm: 100 });
    expect(res.status).toBe(200);
    time.advance(10_000);
    res = await api(url, 'GET', '/plcs/plc');
    expect(res.body).toMatchObject({
      name: 'plc',
      protocol: 'modbus',
      controllerTime: time.now() + 1500 + 1,
      clock: { offsetMs: 1500, driftPpm: 100 },
      faults: [{ kind: 'clock', offsetMs: 1500, driftPpm: 100 }],
      devices: ['v1', 'a1'],
    });
    expect((res.body.endpoint as Record<string, unknown>).port).toBe(
      modbusEndpoint(plant.plc('plc').endpoint).port,
    );
    await api(url, 'DELETE', '/plcs/plc/faults/clock');
    res = await api(url, 'GET', '/plcs');
    expect((res.body.plcs as Record<string, unknown>[])[0]).toMatchObject({
      controllerTime: time.now(),
      faults: [],
    });
  });

  it('leaves a drifting clock alone when faults are cleared and the clock was never set', async () => {
    const drifting = await startPlant(
      {
        plcs: {
          plc: {
            protocol: 'modbus',
            port: 0,
            clock: { offsetMs: 2000, driftPpm: 1000 },
            devices: { v1: { profile: 'valve', base: 0 } },
          },
        },
      },
      { time, manualScan: true, ephemeralPorts: true },
    );
    const base = drifting.controlUrl ?? '';
    const ep = modbusEndpoint(drifting.plc('plc').endpoint);
    const client = new ModbusRTU();
    await client.connectTCP(ep.host, { port: ep.port });
    client.setID(ep.unitId);
    client.setTimeout(1000);
    const clockRegisters = async (): Promise<number> =>
      (await client.readHoldingRegisters(900, 4)).data.reduce((acc, word) => acc * 65536 + word, 0);
    try {
      // 1000 ppm over 100 s: the controller is 100 ms ahead of its offset.
      time.advance(100_000);
      expect(await clockRegisters()).toBe(time.now() + 2000 + 100);
      await api(base, 'PUT', '/plcs/plc/faults/latency', { ms: 1 });
      expect((await api(base, 'DELETE', '/plcs/plc/faults')).status).toBe(200);
      expect(await clockRegisters()).toBe(time.now() + 2000 + 100);
      const res = await api(base, 'DELETE', '/plcs/plc/faults/clock');
      expect(res.body).toMatchObject({ cleared: false });
      time.advance(10_000);
      expect(await clockRegisters()).toBe(time.now() + 2000 + 110);
    } finally {
      await new Promise((resolve) => {
        client.close(resolve);
      });
      await drifting.stop();
    }
  });

  it('applies PLC faults to every device and shows them per device', async () => {
    await api(url, 'PUT', '/plcs/plc/faults/frozen');
    const res = await api(url, 'GET', '/devices/a1');
    expect(res.body.plcFaults).toEqual([{ kind: 'frozen' }]);
    await api(url, 'DELETE', '/plcs/plc/faults');
    expect((await api(url, 'GET', '/devices/a1')).body.plcFaults).toEqual([]);
  });

  it('switches LOCAL and back, moving the device by hand while local', async () => {
    let res = await api(url, 'POST', '/devices/v1/local', { local: true, position: 55 });
    expect(res.status).toBe(200);
    plant.scan();
    expect((await api(url, 'GET', '/devices/v1')).body).toMatchObject({
      state: 'LOCAL',
      local: true,
      position: 55,
    });
    res = await api(url, 'POST', '/devices/v1/local', { local: false });
    expect(res.status).toBe(200);
    plant.scan();
    expect((await api(url, 'GET', '/devices/v1')).body).toMatchObject({
      state: 'STOPPED',
      local: false,
    });
    res = await api(url, 'POST', '/devices/v1/local', { local: 'yes' });
    expect(res).toMatchObject({ status: 400, body: { code: 'INVALID_REQUEST' } });
    res = await api(url, 'POST', '/devices/v1/local', { local: false, position: 10 });
    expect(res).toMatchObject({ status: 400, body: { code: 'INVALID_REQUEST' } });
  });

  it('resets counters and the command log', async () => {
    await command(3, 1);
    plant.scan();
    const res = await api(url, 'POST', '/devices/v1/counters/reset');
    expect(res.body.counters).toMatchObject({
      writesReceived: 0,
      commandsTaken: 0,
      accepted: 0,
      noops: 0,
    });
    expect((await api(url, 'GET', '/devices/v1')).body.log).toEqual([]);
  });

  it('serves the full write log, all of it or one seq, and resets it with the counters', async () => {
    await command(1, 17);
    await command(1, 17);
    time.advance(10);
    plant.scan();
    await command(3, 18);
    const receivedAt = time.now();
    let res = await api(url, 'GET', '/devices/v1/writes');
    expect(res).toMatchObject({
      status: 200,
      body: { device: 'v1', writesReceived: 3, dropped: 0 },
    });
    expect(res.body.writes).toEqual([
      {
        receivedAt: receivedAt - 10,
        seq: 17,
        code: 1,
        setpoint: 0,
        outcome: 'accepted',
        settledAt: receivedAt,
      },
      {
        receivedAt: receivedAt - 10,
        seq: 17,
        code: 1,
        setpoint: 0,
        outcome: 'ignored-same-seq',
        settledAt: receivedAt,
      },
      { receivedAt, seq: 18, code: 3, setpoint: 0, outcome: null, settledAt: null },
    ]);
    res = await api(url, 'GET', '/devices/v1/writes?seq=17');
    expect(res.body).toMatchObject({ seq: 17, count: 2 });
    expect((res.body.writes as unknown[]).length).toBe(2);
    expect((await api(url, 'GET', '/devices/v1/writes?seq=99')).body).toMatchObject({
      count: 0,
      writes: [],
    });
    for (const bad of ['x', '-1', '65536', '1.5', '']) {
      expect(await api(url, 'GET', `/devices/v1/writes?seq=${bad}`), bad).toMatchObject({
        status: 400,
        body: { code: 'INVALID_REQUEST' },
      });
    }
    await api(url, 'POST', '/devices/v1/counters/reset');
    expect((await api(url, 'GET', '/devices/v1/writes')).body).toMatchObject({
      writesReceived: 0,
      writes: [],
    });
  });

  it('holds the handshake for `ms` and shows the time left', async () => {
    let res = await api(url, 'PUT', '/devices/v1/faults/hold', { ms: 500 });
    expect(res).toMatchObject({ status: 200, body: { fault: { kind: 'hold', ms: 500 } } });
    await command(1, 5);
    time.advance(200);
    plant.scan();
    res = await api(url, 'GET', '/devices/v1');
    expect(res.body).toMatchObject({
      seqEcho: 0,
      pendingWrites: 1,
      faults: [{ kind: 'hold', ms: 500, remainingMs: 300 }],
    });
    time.advance(300);
    plant.scan();
    expect((await api(url, 'GET', '/devices/v1')).body).toMatchObject({
      seqEcho: 5,
      pendingWrites: 0,
      faults: [],
    });
    res = await api(url, 'PUT', '/plcs/plc/faults/hold', {});
    expect(res.body.faults).toEqual([{ kind: 'hold' }]);
    for (const body of [{ ms: 0 }, { ms: 'long' }, { count: 1 }]) {
      expect(await api(url, 'PUT', '/devices/v1/faults/hold', body)).toMatchObject({
        status: 400,
        body: { code: 'INVALID_FAULT' },
      });
    }
  });

  it('takes latency `when` (default after) and refuses anything else', async () => {
    let res = await api(url, 'PUT', '/devices/v1/faults/latency', { ms: 50 });
    expect(res.body.fault).toEqual({ kind: 'latency', ms: 50, on: 'both', when: 'after' });
    res = await api(url, 'PUT', '/devices/v1/faults/latency', { ms: 50, when: 'before' });
    expect(res.body.fault).toMatchObject({ when: 'before' });
    res = await api(url, 'PUT', '/devices/v1/faults/latency', { ms: 50, when: 'sometimes' });
    expect(res).toMatchObject({ status: 400, body: { code: 'INVALID_FAULT' } });
  });

  it('power cycles a PLC: volatile memory lost, clock offset, off for offMs, counted', async () => {
    await command(1, 17);
    plant.scan();
    let res = await api(url, 'POST', '/plcs/plc/power-cycle', {
      offMs: 1000,
      clockOffsetMs: -15_000,
    });
    expect(res).toMatchObject({
      status: 200,
      body: {
        plc: 'plc',
        powerCycles: 1,
        offMs: 1000,
        powerUpAt: time.now() + 1000,
        powerUpControllerTime: time.now() + 1000 - 15_000,
        powered: false,
      },
    });
    expect((await api(url, 'GET', '/plcs/plc')).body).toMatchObject({
      powered: false,
      powerCycles: 1,
    });
    time.advance(1000);
    expect((await api(url, 'GET', '/plcs/plc')).body).toMatchObject({
      powered: true,
      controllerTime: time.now() - 15_000,
      clock: { offsetMs: -15_000, driftPpm: 0 },
      faults: [{ kind: 'clock', offsetMs: -15_000, driftPpm: 0 }],
    });
    // Volatile memory lost; counters and logs kept.
    expect((await api(url, 'GET', '/devices/v1')).body).toMatchObject({
      state: 'CLOSED',
      seqEcho: 0,
      counters: { writesReceived: 1, accepted: 1 },
    });
    // An empty body is a power cycle with offMs 0 and the clock left alone.
    res = await api(url, 'POST', '/plcs/plc/power-cycle');
    expect(res.body).toMatchObject({ powerCycles: 2, offMs: 0, powered: true });
    for (const body of [{ offMs: -1 }, { offMs: 'soon' }, { clockOffsetMs: 'x' }, { off: 1 }]) {
      expect(await api(url, 'POST', '/plcs/plc/power-cycle', body)).toMatchObject({
        status: 400,
        body: { code: 'INVALID_REQUEST' },
      });
    }
    expect(await api(url, 'POST', '/plcs/nope/power-cycle', {})).toMatchObject({
      status: 404,
      body: { code: 'UNKNOWN_PLC' },
    });
  });

  it('answers errors as JSON with a code', async () => {
    const cases: [string, string, unknown, number, string][] = [
      ['GET', '/devices/nope', undefined, 404, 'UNKNOWN_DEVICE'],
      ['GET', '/plcs/nope', undefined, 404, 'UNKNOWN_PLC'],
      ['PUT', '/devices/v1/faults/gremlins', {}, 404, 'UNKNOWN_FAULT'],
      ['PUT', '/devices/v1/faults/latency', { ms: -5 }, 400, 'INVALID_FAULT'],
      ['PUT', '/devices/v1/faults/latency', { ms: 5, extra: 1 }, 400, 'INVALID_FAULT'],
      ['PUT', '/devices/v1/faults/reset', {}, 400, 'INVALID_FAULT'],
      ['PUT', '/devices/v1/faults/latency', '{not json', 400, 'INVALID_JSON'],
      ['PUT', '/devices/v1/faults/latency', '[1]', 400, 'INVALID_FAULT'],
      ['PUT', '/devices/v1/faults/clock', {}, 422, 'FAULT_NOT_APPLICABLE'],
      ['PUT', '/devices/v1/faults/bad-status', {}, 422, 'FAULT_NOT_APPLICABLE'],
      ['GET', '/nowhere', undefined, 404, 'NOT_FOUND'],
      ['POST', '/devices', {}, 405, 'METHOD_NOT_ALLOWED'],
      // A malformed percent escape in a device id was a 500 INTERNAL "URI malformed".
      ['GET', '/devices/v%E0', undefined, 400, 'INVALID_REQUEST'],
      ['DELETE', '/devices/v1/faults/%ZZ', undefined, 400, 'INVALID_REQUEST'],
    ];
    for (const [method, path, body, status, code] of cases) {
      const res = await api(url, method, path, body);
      expect(res, `${method} ${path}`).toMatchObject({ status, body: { code } });
      expect(typeof res.body.message).toBe('string');
    }
    const invalid = await api(url, 'PUT', '/devices/v1/faults/latency', { ms: 'slow' });
    const anyString: unknown = expect.any(String);
    expect(invalid.body.issues).toEqual([{ path: 'ms', message: anyString }]);
  });

  it('refuses requests addressed to a non-loopback Host (DNS rebinding)', async () => {
    const { port } = new URL(url);
    const status = await new Promise<number | undefined>((resolve, reject) => {
      const req = request(
        { host: '127.0.0.1', port, path: '/devices', headers: { Host: 'evil.example' } },
        (res) => {
          res.resume();
          resolve(res.statusCode);
        },
      );
      req.on('error', reject);
      req.end();
    });
    expect(status).toBe(403);
  });
});
