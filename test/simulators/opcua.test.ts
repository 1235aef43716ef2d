import { AttributeIds, ClientSecureChannelLayer, DataType, StatusCodes } from 'node-opcua';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ManualTime, startPlant } from '../../simulators/plant.js';
import type { Plant } from '../../simulators/plant.js';
import { until } from './helpers.js';
import {
  connectOpcua,
  nodeId,
  opcuaEndpoint,
  opcuaWire,
  releaseClientPki,
  uaCommand,
  uaCommandWrites,
  uaRead,
} from './opcua-client.js';
import type { UaConnection } from './opcua-client.js';
import { runStateTable, tablePlant } from './state-table.js';

const OPEN = 1;
const STOP = 3;
const MOVE = 5;
const CURRENT_TIME = 'ns=0;i=2258';
const NAMESPACE_ARRAY = 'ns=0;i=2255';

afterAll(() => releaseClientPki());

describe('OPC UA PLC: SPEC §3 state table over node-opcua', () => {
  const time = new ManualTime();
  let plant: Plant;
  let ua: UaConnection;
  beforeAll(async () => {
    plant = await startPlant(tablePlant('opcua'), {
      time,
      manualScan: true,
      ephemeralPorts: true,
      control: false,
    });
    ua = await connectOpcua(opcuaEndpoint(plant.plc('table').endpoint).endpointUrl);
  });
  afterAll(async () => {
    await ua.close();
    await plant.stop();
  });

  it('gives every cell its documented reaction, echo and fault code', async () => {
    await runStateTable(plant, time, opcuaWire(ua.session));
  }, 45_000);
});

describe('OPC UA PLC: address space, handshake, clock and faults', () => {
  const time = new ManualTime();
  let plant: Plant;
  let ua: UaConnection;
  let endpointUrl: string;
  const step = (ms = 0): void => {
    time.advance(ms);
    plant.scan();
  };
  const controllerTime = (): number => plant.plc('ua').controllerTime();
  const valves = [
    'v-browse',
    'v-ts',
    'v-hs',
    'v-order',
    'v-pipe',
    'v-twice',
    'v-bad',
    'v-bad2',
    'v-lat',
    'v-drop',
    'v-rst',
    'v-rst2',
    'v-frz',
  ];

  beforeAll(async () => {
    plant = await startPlant(
      {
        plcs: {
          ua: {
            protocol: 'opcua',
            port: 0,
            clock: { offsetMs: 90_000, driftPpm: 500 },
            devices: {
              ...Object.fromEntries(valves.map((id) => [id, { profile: 'valve', travelMs: 200 }])),
              'a-move': { profile: 'actuator', travelMs: 200 },
            },
          },
        },
      },
      { time, manualScan: true, ephemeralPorts: true, control: false },
    );
    endpointUrl = opcuaEndpoint(plant.plc('ua').endpoint).endpointUrl;
    ua = await connectOpcua(endpointUrl);
  });
  afterEach(() => {
    plant.plc('ua').clearFaults();
    for (const device of plant.devices()) device.clearFaults();
  });
  afterAll(async () => {
    await ua.close();
    await plant.stop();
  });

  it('reports its endpoint and the plant namespace at index 1', async () => {
    expect(endpointUrl).toMatch(/^opc\.tcp:\/\/127\.0\.0\.1:\d+$/);
    expect(plant.plc('ua').endpoint).toMatchObject({ namespaceUri: 'urn:sluice:sim:ua' });
    const [namespaces] = await uaRead(ua.session, [NAMESPACE_ARRAY]);
    expect((namespaces?.value.value as string[])[1]).toBe('urn:sluice:sim:ua');
  });

  it('exposes one object per device with the profile variables and data types', async () => {
    const browsed = await ua.session.browse('ns=1;s=v-browse');
    const names = (browsed.references ?? []).map((r) => r.browseName.name).sort();
    expect(names).toEqual(
      [
        'CommandCode',
        'CommandSeq',
        'FaultCode',
        'Position',
        'ScanTime',
        'SeqEcho',
        'Setpoint',
        'State',
        'StateCode',
      ].sort(),
    );
    const types = await ua.session.read(
      [
        'State',
        'StateCode',
        'Position',
        'FaultCode',
        'SeqEcho',
        'ScanTime',
        'CommandCode',
        'Setpoint',
        'CommandSeq',
      ].map((name) => ({ nodeId: nodeId('v-browse', name), attributeId: AttributeIds.DataType })),
    );
    expect(types.map((t) => String(t.value.value))).toEqual([
      'ns=0;i=12', // String
      'ns=0;i=6', // Int32
      'ns=0;i=11', // Double
      'ns=0;i=5', // UInt16
      'ns=0;i=5',
      'ns=0;i=13', // DateTime
      'ns=0;i=5',
      'ns=0;i=11',
      'ns=0;i=5',
    ]);
    const values = await uaRead(ua.session, [
      nodeId('v-browse', 'State'),
      nodeId('v-browse', 'StateCode'),
    ]);
    expect(values.map((v): unknown => v.value.value)).toEqual(['CLOSED', 0]);
    // ScanTime moves with every scan even when nothing changes; a frozen image stops it.
    const scanTime = async (): Promise<number> =>
      (
        (await uaRead(ua.session, [nodeId('v-browse', 'ScanTime')]))[0]?.value.value as Date
      ).getTime();
    const first = await scanTime();
    time.advance(50);
    plant.scan();
    expect(await scanTime()).toBe(first + 50);
    plant.device('v-browse').setFault({ kind: 'frozen' });
    time.advance(50);
    plant.scan();
    expect(await scanTime()).toBe(first + 50);
    plant.device('v-browse').clearFault('frozen');
  });

  it('reports the controller clock, offset and drift included, as ServerStatus.CurrentTime', async () => {
    time.advance(100_000);
    const [current] = await uaRead(ua.session, [CURRENT_TIME]);
    // Drift runs from the plant start: 500 ppm over 100 s is 50 ms.
    expect((current?.value.value as Date).getTime()).toBe(time.now() + 90_000 + 50);
    plant.plc('ua').setClock({ offsetMs: -7_000, driftPpm: 0 });
    const [status] = await uaRead(ua.session, ['ns=0;i=2256']);
    expect((status?.value.value as { currentTime: Date }).currentTime.getTime()).toBe(
      time.now() - 7_000,
    );
  });

  it('stamps every status variable with the controller time of the scan that changed it', async () => {
    const ids = ['State', 'Position', 'SeqEcho'].map((n) => nodeId('v-ts', n));
    await uaCommand(ua.session, 'v-ts', OPEN, 0, 1);
    step(0);
    const taken = controllerTime();
    step(100);
    const midway = controllerTime();
    const [state, position, seqEcho] = await uaRead(ua.session, ids);
    expect(state?.value.value).toBe('OPENING');
    expect(state?.sourceTimestamp?.getTime()).toBe(taken);
    expect(seqEcho?.sourceTimestamp?.getTime()).toBe(taken);
    expect(position?.value.value).toBe(50);
    expect(position?.sourceTimestamp?.getTime()).toBe(midway);
    step(100);
    const [arrived, fullyOpen] = await uaRead(ua.session, ids);
    expect(arrived?.value.value).toBe('OPEN');
    expect(arrived?.sourceTimestamp?.getTime()).toBe(controllerTime());
    expect(fullyOpen?.sourceTimestamp?.getTime()).toBe(controllerTime());
  });

  it('takes a command written in one request at the next scan and echoes its seq', async () => {
    const device = plant.device('v-hs');
    const results = await uaCommand(ua.session, 'v-hs', OPEN, 0, 300);
    expect(results.map((r) => r.name)).toEqual(['Good', 'Good', 'Good']);
    expect(device.counters).toMatchObject({ writesReceived: 1, commandsTaken: 0 });
    step(0);
    const [seqEcho, seqWritten] = await uaRead(ua.session, [
      nodeId('v-hs', 'SeqEcho'),
      nodeId('v-hs', 'CommandSeq'),
    ]);
    expect(seqEcho?.value.value).toBe(300);
    expect(seqWritten?.value.value).toBe(300);
    // Same seq again: counted, not taken.
    await uaCommand(ua.session, 'v-hs', STOP, 0, 300);
    step(0);
    expect(device.state).toBe('OPENING');
    expect(device.counters).toMatchObject({
      writesReceived: 2,
      commandsTaken: 1,
      ignoredSameSeq: 1,
    });
    // CommandCode alone is not a command write; a wrong data type is refused and not counted.
    await ua.session.write(uaCommandWrites('v-hs', STOP, 0, 301).slice(0, 1));
    const [wrongType] = await ua.session.write([
      {
        nodeId: nodeId('v-hs', 'CommandSeq'),
        attributeId: AttributeIds.Value,
        value: { value: { dataType: DataType.Int32, value: 301 } },
      },
    ]);
    expect(wrongType?.isGood()).toBe(false);
    expect(device.counters.writesReceived).toBe(2);
  });

  it('keeps two Write requests sent back to back apart: each hands over its own seq and code', async () => {
    // node-opcua processes concurrent requests node by node, interleaved: the first request's
    // CommandSeq used to be handed over with the second one's code and seq (seq 42 logged
    // twice, 41 never), a false duplicate and a lost write in the I1 ground truth.
    const device = plant.device('v-pipe');
    const results = await Promise.all([
      ua.session.write(uaCommandWrites('v-pipe', OPEN, 0, 41)),
      ua.session.write(uaCommandWrites('v-pipe', STOP, 0, 42)),
    ]);
    expect(results.flat().map((r) => r.name)).toEqual(new Array(6).fill('Good'));
    expect(device.writeLog.map(({ seq, code }) => ({ seq, code }))).toEqual([
      { seq: 41, code: OPEN },
      { seq: 42, code: STOP },
    ]);
    expect([device.writesWithSeq(41), device.writesWithSeq(42)]).toEqual([1, 1]);
    step(0);
    expect(device.log.map(({ seq, outcome, to }) => ({ seq, outcome, to }))).toEqual([
      { seq: 41, outcome: 'accepted', to: 'OPENING' },
      { seq: 42, outcome: 'accepted', to: 'STOPPED' },
    ]);
    const [code, seq] = await uaRead(ua.session, [
      nodeId('v-pipe', 'CommandCode'),
      nodeId('v-pipe', 'CommandSeq'),
    ]);
    expect([code?.value.value, seq?.value.value]).toEqual([STOP, 42]);
  });

  it('logs each seq a Write request wrote when it writes CommandSeq twice', async () => {
    const device = plant.device('v-twice');
    const [code, setpoint, first] = uaCommandWrites('v-twice', OPEN, 0, 51);
    const [, , second] = uaCommandWrites('v-twice', OPEN, 0, 52);
    if (
      code === undefined ||
      setpoint === undefined ||
      first === undefined ||
      second === undefined
    ) {
      throw new Error('uaCommandWrites gave fewer nodes');
    }
    await ua.session.write([code, setpoint, first, second]);
    expect(device.writeLog.map(({ seq, code: written }) => ({ seq, code: written }))).toEqual([
      { seq: 51, code: OPEN },
      { seq: 52, code: OPEN },
    ]);
    step(0);
    expect(device.log.map(({ seq, outcome }) => ({ seq, outcome }))).toEqual([
      { seq: 51, outcome: 'accepted' },
      { seq: 52, outcome: 'noop' },
    ]);
  });

  it('takes the whole command block whatever the order of the nodes in the Write request', async () => {
    await ua.session.write(uaCommandWrites('v-order', OPEN, 0, 5).reverse());
    step(0);
    expect(plant.device('v-order').state).toBe('OPENING');
    expect(plant.device('v-order').log.at(-1)).toMatchObject({
      seq: 5,
      code: OPEN,
      outcome: 'accepted',
    });
  });

  it('moves an actuator to a Double setpoint', async () => {
    await uaCommand(ua.session, 'a-move', MOVE, 42.5, 1);
    step(0);
    step(1000);
    const [state, position] = await uaRead(ua.session, [
      nodeId('a-move', 'State'),
      nodeId('a-move', 'Position'),
    ]);
    expect([state?.value.value, position?.value.value]).toEqual(['IDLE', 42.5]);
  });

  it('answers Bad status on the faulted device only, and refuses writes without applying them', async () => {
    plant.device('v-bad').setFault({ kind: 'bad-status', status: 'BadDeviceFailure' });
    const reads = await uaRead(ua.session, [
      nodeId('v-bad', 'State'),
      nodeId('v-bad2', 'State'),
      CURRENT_TIME,
    ]);
    expect(reads.map((r) => r.statusCode.name)).toEqual(['BadDeviceFailure', 'Good', 'Good']);
    const results = await ua.session.write([
      ...uaCommandWrites('v-bad', OPEN, 0, 1),
      ...uaCommandWrites('v-bad2', OPEN, 0, 1),
    ]);
    expect(results.map((r) => r.name)).toEqual([
      'BadDeviceFailure',
      'BadDeviceFailure',
      'BadDeviceFailure',
      'Good',
      'Good',
      'Good',
    ]);
    expect(plant.device('v-bad').counters.writesReceived).toBe(0);
    expect(plant.device('v-bad2').counters.writesReceived).toBe(1);
    plant.device('v-bad').clearFault('bad-status');
    const [cleared] = await uaRead(ua.session, [nodeId('v-bad', 'State')]);
    expect(cleared?.statusCode).toBe(StatusCodes.Good);
    // A PLC-level Bad status also covers the clock; `count` makes it wear off.
    plant
      .plc('ua')
      .setFault({ kind: 'bad-status', status: 'BadCommunicationError', on: 'read', count: 1 });
    const [clock] = await uaRead(ua.session, [CURRENT_TIME]);
    expect(clock?.statusCode.name).toBe('BadCommunicationError');
    const [again] = await uaRead(ua.session, [CURRENT_TIME]);
    expect(again?.statusCode).toBe(StatusCodes.Good);
    expect(() =>
      plant.plc('ua').setFault({ kind: 'bad-status', status: 'BadNoSuchStatus' }),
    ).toThrow(expect.objectContaining({ code: 'FAULT_NOT_APPLICABLE' }));
    expect(() => plant.plc('ua').setFault({ kind: 'exception', code: 4 })).toThrow(
      expect.objectContaining({ code: 'FAULT_NOT_APPLICABLE' }),
    );
  });

  it('with when: after applies the write, then answers the status; node picks the variable', async () => {
    const device = plant.device('v-bad');
    device.setFault({
      kind: 'bad-status',
      status: 'BadTimeout',
      on: 'write',
      when: 'after',
      node: 'CommandSeq',
      count: 1,
    });
    const before = device.counters.writesReceived;
    // The code alone does not carry CommandSeq: not hit, and the count is not used up.
    const [code] = await ua.session.write(uaCommandWrites('v-bad', STOP, 0, 501).slice(0, 1));
    expect(code?.name).toBe('Good');
    const [seq] = await ua.session.write(uaCommandWrites('v-bad', STOP, 0, 501).slice(2));
    expect(seq?.name).toBe('BadTimeout');
    // Applied all the same: the controller received the command.
    expect(device.counters.writesReceived).toBe(before + 1);
    expect(device.faults()).toEqual([]);
    // A status that is not Bad answers a request that was applied, so it needs when: after.
    expect(() =>
      device.setFault({ kind: 'bad-status', status: 'GoodCompletesAsynchronously' }),
    ).toThrow(expect.objectContaining({ code: 'FAULT_NOT_APPLICABLE' }));
  });

  it('holds replies back by the injected latency', async () => {
    plant.device('v-lat').setFault({ kind: 'latency', ms: 300 });
    let started = performance.now();
    await uaRead(ua.session, [nodeId('v-lat', 'State')]);
    expect(performance.now() - started).toBeGreaterThanOrEqual(290);
    started = performance.now();
    await uaRead(ua.session, [nodeId('v-ts', 'State')]);
    expect(performance.now() - started).toBeLessThan(290);
  });

  it('drops the reply to a write it applied and counted', async () => {
    // node-opcua's client refuses transaction timeouts under 5 s unless told otherwise.
    const minimum = ClientSecureChannelLayer.minTransactionTimeout;
    ClientSecureChannelLayer.minTransactionTimeout = 300;
    const own = await connectOpcua(endpointUrl, { transactionTimeoutMs: 400 });
    try {
      plant.device('v-drop').setFault({ kind: 'drop', count: 1, on: 'write' });
      await expect(uaCommand(own.session, 'v-drop', OPEN, 0, 1)).rejects.toThrow(
        /timed out|timeout/i,
      );
      expect(plant.device('v-drop').counters.writesReceived).toBe(1);
      step(0);
      expect(plant.device('v-drop').state).toBe('OPENING');
    } finally {
      ClientSecureChannelLayer.minTransactionTimeout = minimum;
      await own.close().catch(() => undefined);
    }
  });

  it('resets the connection before or after processing, as configured', async () => {
    for (const [when, device, applied] of [
      ['before', 'v-rst', 0],
      ['after', 'v-rst2', 1],
    ] as const) {
      const own = await connectOpcua(endpointUrl);
      try {
        plant.device(device).setFault({ kind: 'reset', when, count: 1 });
        await expect(uaCommand(own.session, device, OPEN, 0, 1)).rejects.toThrow();
        expect(plant.device(device).counters.writesReceived, when).toBe(applied);
      } finally {
        await own.close().catch(() => undefined);
      }
    }
  });

  it('freezes values and timestamps of a frozen device until cleared', async () => {
    const ids = ['State', 'Position'].map((n) => nodeId('v-frz', n));
    step(10);
    const before = await uaRead(ua.session, ids);
    plant.device('v-frz').setFault({ kind: 'frozen' });
    await uaCommand(ua.session, 'v-frz', OPEN, 0, 1);
    step(0);
    step(100);
    const frozen = await uaRead(ua.session, ids);
    expect(frozen.map((v): unknown[] => [v.value.value, v.sourceTimestamp?.getTime()])).toEqual(
      before.map((v): unknown[] => [v.value.value, v.sourceTimestamp?.getTime()]),
    );
    plant.device('v-frz').clearFault('frozen');
    step(0);
    const thawed = await uaRead(ua.session, ids);
    expect(thawed.map((v): unknown => v.value.value)).toEqual(['OPENING', 50]);
    expect(thawed[1]?.sourceTimestamp?.getTime()).toBe(controllerTime());
  });
});

describe('OPC UA PLC: requests held on the link, power cycle', () => {
  const time = new ManualTime();
  let plant: Plant;
  let endpointUrl: string;
  const step = (ms = 0): void => {
    time.advance(ms);
    plant.scan();
  };

  beforeAll(async () => {
    plant = await startPlant(
      {
        plcs: {
          ua: {
            protocol: 'opcua',
            port: 0,
            devices: {
              h1: { profile: 'valve', travelMs: 200 },
              h2: { profile: 'valve', travelMs: 200 },
              p1: { profile: 'valve', travelMs: 200 },
              p2: { profile: 'valve', travelMs: 200 },
            },
          },
        },
      },
      { time, manualScan: true, ephemeralPorts: true, control: false },
    );
    endpointUrl = opcuaEndpoint(plant.plc('ua').endpoint).endpointUrl;
  });
  afterEach(() => {
    plant.plc('ua').clearFaults();
    for (const device of plant.devices()) device.clearFaults();
  });
  afterAll(() => plant.stop());

  it('latency before: a write held on the link lands after the client timed out and left', async () => {
    const minimum = ClientSecureChannelLayer.minTransactionTimeout;
    ClientSecureChannelLayer.minTransactionTimeout = 200;
    const own = await connectOpcua(endpointUrl, { transactionTimeoutMs: 300 });
    const device = plant.device('h1');
    try {
      device.setFault({ kind: 'latency', ms: 800, when: 'before', on: 'write' });
      await expect(uaCommand(own.session, 'h1', OPEN, 0, 21)).rejects.toThrow(/timed out|timeout/i);
      expect(device.counters.writesReceived).toBe(0);
    } finally {
      ClientSecureChannelLayer.minTransactionTimeout = minimum;
      await own.close().catch(() => undefined);
    }
    await until(() => device.counters.writesReceived === 1, { attempts: 150, everyMs: 10 });
    expect(device.writesWithSeq(21)).toBe(1);
    step(0);
    expect([device.state, device.seqEcho]).toEqual(['OPENING', 21]);
  });

  it('latency before: the held write lands even though the client broke the connection', async () => {
    const own = await connectOpcua(endpointUrl);
    const device = plant.device('h1');
    const before = device.counters.writesReceived;
    try {
      device.setFault({ kind: 'latency', ms: 300, when: 'before', on: 'write' });
      const write = uaCommand(own.session, 'h1', STOP, 0, 23).catch((err: unknown) => err);
      await new Promise((resolve) => setTimeout(resolve, 50));
      // node-opcua's client has no public way to drop its TCP connection; its channel has.
      const channel = (own.client as unknown as { _secureChannel: ClientSecureChannelLayer | null })
        ._secureChannel;
      channel?.forceConnectionBreak();
      expect(String(await write)).toMatch(/Connection Break/i);
      expect(device.counters.writesReceived).toBe(before);
      await until(() => device.counters.writesReceived === before + 1, {
        attempts: 100,
        everyMs: 10,
      });
      expect(device.writesWithSeq(23)).toBe(1);
    } finally {
      await own.close().catch(() => undefined);
    }
  });

  it('latency before: requests behind it on the channel wait in order; other connections do not', async () => {
    const own = await connectOpcua(endpointUrl);
    const other = await connectOpcua(endpointUrl);
    try {
      plant.device('h2').setFault({ kind: 'latency', ms: 500, when: 'before', on: 'write' });
      const started = performance.now();
      const write = uaCommand(own.session, 'h2', OPEN, 0, 5).then(() => performance.now());
      // Not faulted itself, but sent after the write on the same channel.
      const read = uaRead(own.session, [nodeId('h2', 'CommandSeq')]).then((values) => ({
        at: performance.now(),
        seq: values[0]?.value.value as unknown,
      }));
      await uaRead(other.session, [nodeId('h2', 'State')]);
      expect(performance.now() - started).toBeLessThan(450);
      const [writtenAt, readBack] = await Promise.all([write, read]);
      expect(writtenAt - started).toBeGreaterThanOrEqual(490);
      expect(readBack.at - started).toBeGreaterThanOrEqual(490);
      expect(readBack.seq).toBe(5);
    } finally {
      await own.close();
      await other.close();
    }
  });

  it('stall: the write it caught lands when the fault is cleared; with count 1, later ones pass', async () => {
    const own = await connectOpcua(endpointUrl);
    const other = await connectOpcua(endpointUrl);
    const device = plant.device('h1');
    const logged = device.writeLog.length;
    try {
      device.setFault({ kind: 'stall', on: 'write', count: 1 });
      const caught = uaCommand(own.session, 'h1', OPEN, 0, 51);
      await until(() => device.faults()[0]?.remaining === 0, { attempts: 200, everyMs: 10 });
      // It caught its one: a write sent after it, on another channel, passes and is applied
      // while the caught one waits.
      expect((await uaCommand(other.session, 'h1', STOP, 0, 52)).every((r) => r.isGood())).toBe(
        true,
      );
      expect(device.writeLog.slice(logged).map((e) => e.seq)).toEqual([52]);
      // Cleared: the caught write is applied, then answered.
      expect(device.clearFault('stall')).toBe(true);
      expect((await caught).every((r) => r.isGood())).toBe(true);
      expect(device.writeLog.slice(logged).map((e) => e.seq)).toEqual([52, 51]);
    } finally {
      await own.close();
      await other.close();
    }
  });

  it('power cycle: sessions and channels closed, connections refused while off, volatile memory lost', async () => {
    const plc = plant.plc('ua');
    const device = plant.device('p1');
    const own = await connectOpcua(endpointUrl);
    let lost = false;
    own.client.on('connection_lost', () => {
      lost = true;
    });
    try {
      await uaCommand(own.session, 'p1', OPEN, 0, 31);
      step(0);
      step(100);
      expect([device.state, device.seqEcho]).toEqual(['OPENING', 31]);

      const result = plc.powerCycle({ offMs: 1000, clockOffsetMs: -15_000 });
      expect(result.powerCycles).toBe(1);
      await until(() => lost, { attempts: 100, everyMs: 10 });
      await expect(connectOpcua(endpointUrl)).rejects.toThrow();

      time.advance(1000);
      const again = await connectOpcua(endpointUrl);
      try {
        const values = await uaRead(again.session, [
          nodeId('p1', 'State'),
          nodeId('p1', 'Position'),
          nodeId('p1', 'SeqEcho'),
          nodeId('p1', 'CommandSeq'),
          nodeId('p1', 'CommandCode'),
          CURRENT_TIME,
        ]);
        expect(values.slice(0, 5).map((v): unknown => v.value.value)).toEqual([
          'STOPPED',
          50,
          0,
          0,
          0,
        ]);
        expect((values[5]?.value.value as Date).getTime()).toBe(time.now() - 15_000);
        expect(values[2]?.sourceTimestamp?.getTime()).toBe(time.now() - 15_000);
      } finally {
        await again.close();
      }
      step(100);
      expect([device.state, device.position]).toEqual(['STOPPED', 50]);
      expect(device.counters.writesReceived).toBe(1);
    } finally {
      await own.close().catch(() => undefined);
    }
  });

  it('power cycle: every status variable is stamped with the power-up time, none from before', async () => {
    // The image is rebuilt at power-up. A value the restart left as it was (OPEN, 100 %)
    // used to keep its SourceTimestamp from before, taken by a clock that came back 15 s
    // slow: a change 10 s in the controller's future.
    const own = await connectOpcua(endpointUrl);
    await uaCommand(own.session, 'p2', OPEN, 0, 41);
    step(0);
    step(200);
    expect(plant.device('p2').state).toBe('OPEN');
    time.advance(5000);
    await own.close();
    const { powerUpControllerTime } = plant.plc('ua').powerCycle({ clockOffsetMs: -15_000 });
    expect(powerUpControllerTime).toBe(time.now() - 15_000);
    const again = await connectOpcua(endpointUrl);
    try {
      const names = ['State', 'StateCode', 'Position', 'FaultCode', 'SeqEcho', 'ScanTime'];
      const values = await uaRead(
        again.session,
        names.map((name) => nodeId('p2', name)),
      );
      expect(values.slice(0, 3).map((v): unknown => v.value.value)).toEqual(['OPEN', 2, 100]);
      expect(values.map((v) => v.sourceTimestamp?.getTime())).toEqual(
        names.map(() => powerUpControllerTime),
      );
    } finally {
      await again.close();
    }
  });

  it('session loss: channels stay up, the next request is answered BadSessionIdInvalid, new sessions refused for a while', async () => {
    const plc = plant.plc('ua');
    const device = plant.device('p2');
    const own = await connectOpcua(endpointUrl);
    const answers: string[] = [];
    let lost = false;
    own.client.on(
      'receive_response',
      (response: { responseHeader: { serviceResult: { name: string } } }) => {
        answers.push(response.responseHeader.serviceResult.name);
      },
    );
    own.client.on('connection_lost', () => {
      lost = true;
    });
    try {
      const before = { state: device.state, writes: device.counters.writesReceived };
      plc.loseSessions({ refuseMs: 1000 });
      // A client of its own cannot have a session until the refusal ends (time source).
      await expect(connectOpcua(endpointUrl)).rejects.toThrow(/BadTooManySessions/);
      // The old session's next request: refused, the client makes a new session on the same
      // channel once the server takes one, and its read goes through then.
      const read = uaRead(own.session, [nodeId('p2', 'State')]);
      await until(() => answers.includes('BadSessionIdInvalid'), { attempts: 200, everyMs: 10 });
      time.advance(1000);
      const values = await read;
      expect(values[0]?.value.value).toBe(before.state);
      expect(lost).toBe(false);
      expect([device.state, device.counters.writesReceived]).toEqual([before.state, before.writes]);
    } finally {
      await own.close().catch(() => undefined);
    }
  }, 20_000);

  it('power cycle: a write held on the link dies with the link', async () => {
    const plc = plant.plc('ua');
    const device = plant.device('h1');
    const before = device.counters.writesReceived;
    const own = await connectOpcua(endpointUrl);
    try {
      device.setFault({ kind: 'latency', ms: 200, when: 'before', on: 'write' });
      const write = uaCommand(own.session, 'h1', STOP, 0, 22).catch((err: unknown) => err);
      await new Promise((resolve) => setTimeout(resolve, 50));
      plc.powerCycle();
      expect(await write).toBeInstanceOf(Error);
      // The held write's latency ends 200 ms after it came in. A marker write on a new
      // session, sent after the power cycle and held as long, reaches the PLC after it would
      // have: then only the marker is in the write log.
      const marker = await connectOpcua(endpointUrl);
      try {
        await uaCommand(marker.session, 'h1', STOP, 0, 24);
      } finally {
        await marker.close();
      }
      expect([device.writesWithSeq(22), device.writesWithSeq(24)]).toEqual([0, 1]);
      expect(device.counters.writesReceived).toBe(before + 1);
    } finally {
      await own.close().catch(() => undefined);
    }
  });
});
