import { connect } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ManualTime, startPlant } from '../../simulators/plant.js';
import type { Plant } from '../../simulators/plant.js';
import { SimHarness } from '../helpers/sim-harness.js';
import { api, until } from './helpers.js';
import {
  connectOpcua,
  nodeId,
  opcuaEndpoint,
  releaseClientPki,
  uaCommand,
  uaRead,
} from './opcua-client.js';
import type { UaConnection } from './opcua-client.js';

const OPEN = 1;
const STOP = 3;
// Server_ServerDiagnostics_ServerDiagnosticsSummary_CurrentSessionCount: the sessions the
// server holds, whatever became of their channels.
const SESSION_COUNT = 'ns=0;i=2277';
const CURRENT_TIME = 'ns=0;i=2258';

afterAll(() => releaseClientPki());

/** How a plain TCP connect to the endpoint ends: 'connected', or the error's code. */
function tcpConnect(endpointUrl: string): Promise<string> {
  const { hostname, port } = new URL(endpointUrl.replace('opc.tcp:', 'http:'));
  return new Promise((resolve) => {
    const socket = connect({ host: hostname, port: Number(port) });
    socket.once('connect', () => {
      socket.destroy();
      resolve('connected');
    });
    socket.once('error', (err: NodeJS.ErrnoException) => {
      resolve(err.code ?? err.message);
    });
  });
}

/**
 * An OPC UA PLC whose communication module drops off the network for a while
 * (SimPlc.refuseConnections, POST /plcs/{id}/refuse-connections; simulators/opcua-refusal.ts):
 * its sessions are closed, its channels aborted and a connect meets ECONNREFUSED, while the
 * controller goes on with nothing lost. Over real sockets with an independent node-opcua client;
 * the controller on manual time, the refusal on real time.
 */
describe('an OPC UA PLC that refuses connections for a while', () => {
  const time = new ManualTime();
  let plant: Plant;
  let endpointUrl: string;
  let url: string;
  const opened: UaConnection[] = [];

  // One plant for the cases (an OPC UA server takes seconds to start); each case leaves it
  // listening, with no fault, no session of its own and its ground truth cleared.
  beforeAll(async () => {
    plant = await startPlant(
      {
        control: { host: '127.0.0.1', port: 0 },
        plcs: {
          ua: {
            protocol: 'opcua',
            port: 0,
            devices: {
              v1: { profile: 'valve', travelMs: 200 },
              v2: { profile: 'valve', travelMs: 200 },
            },
          },
        },
      },
      { time, manualScan: true, ephemeralPorts: true },
    );
    endpointUrl = opcuaEndpoint(plant.plc('ua').endpoint).endpointUrl;
    url = plant.controlUrl ?? '';
  });
  afterEach(async () => {
    for (const ua of opened.splice(0)) await ua.close().catch(() => undefined);
    await until(() => !plant.plc('ua').refusingConnections, { attempts: 500 });
    for (const device of plant.devices()) {
      device.clearFaults();
      device.resetCounters();
    }
  });
  afterAll(() => plant.stop());

  const step = (ms: number): void => {
    time.advance(ms);
    plant.scan();
  };
  const session = async (): Promise<UaConnection> => {
    const ua = await connectOpcua(endpointUrl);
    opened.push(ua);
    return ua;
  };
  /** Connects every 10 ms until the PLC accepts; the moment (performance.now()) it did. */
  async function listeningAgain(): Promise<number> {
    for (let i = 0; i < 500; i++) {
      const outcome = await tcpConnect(endpointUrl);
      if (outcome === 'connected') return performance.now();
      expect(outcome).toBe('ECONNREFUSED');
      await new Promise((r) => setTimeout(r, 10));
    }
    throw new Error('the PLC did not accept connections again within 5 s');
  }

  it('drops its sessions and channels and refuses connects for ms; the controller goes on', async () => {
    const plc = plant.plc('ua');
    const device = plant.device('v2');
    const ua = await session();
    expect((await uaCommand(ua.session, 'v2', OPEN, 0, 5)).every((s) => s.isGood())).toBe(true);
    step(10); // OPENING, echo 5
    let lost = false;
    ua.client.on('connection_lost', () => {
      lost = true;
    });

    const started = performance.now();
    // Long enough for the checks below on a loaded machine (they ran past 400 ms there).
    plc.refuseConnections({ ms: 1_000 });
    expect(plc.refusingConnections).toBe(true);
    await until(() => lost);
    expect(await tcpConnect(endpointUrl)).toBe('ECONNREFUSED');
    expect((await api(url, 'GET', '/plcs/ua')).body).toMatchObject({
      refusingConnections: true,
      powered: true,
      powerCycles: 0,
    });

    // The controller runs on meanwhile: travel goes on.
    step(50);
    expect([device.state, device.position, device.seqEcho]).toEqual(['OPENING', 25, 5]);

    const back = await listeningAgain();
    expect(back - started).toBeGreaterThanOrEqual(999);
    await until(() => !plc.refusingConnections);
    // A new session finds the old one gone (a module that rebooted keeps none), and the
    // command variables as they were (a power cycle would have cleared them).
    const again = await session();
    const [count, code, seq, echo] = await uaRead(again.session, [
      SESSION_COUNT,
      nodeId('v2', 'CommandCode'),
      nodeId('v2', 'CommandSeq'),
      nodeId('v2', 'SeqEcho'),
    ]);
    expect([count, code, seq, echo].map((v): unknown => v?.value.value)).toEqual([1, OPEN, 5, 5]);
    expect(device.writeLog.map((w) => [w.seq, w.outcome])).toEqual([[5, 'accepted']]);
  }, 20_000);

  it('refused again while refusing, it listens again at the later end', async () => {
    const plc = plant.plc('ua');
    const started = performance.now();
    plc.refuseConnections({ ms: 150 });
    await new Promise((r) => setTimeout(r, 50));
    plc.refuseConnections({ ms: 300 }); // ends ~350 ms after the first
    expect((await listeningAgain()) - started).toBeGreaterThanOrEqual(349);
    await session(); // and serves sessions again
  }, 20_000);

  it('armed after a read of a device: the Read is answered, then the session and channel go', async () => {
    const plc = plant.plc('ua');
    const ua = await session();
    let lost = false;
    ua.client.on('connection_lost', () => {
      lost = true;
    });
    plc.refuseConnections({ ms: 1_000, afterReadOf: 'v1' });
    expect(plc.refusingConnections).toBe(false);
    // Another device's variables, the server clock, a write of v1: answered, nothing refused.
    expect((await uaRead(ua.session, [nodeId('v2', 'State')]))[0]?.statusCode.isGood()).toBe(true);
    expect((await uaRead(ua.session, [CURRENT_TIME]))[0]?.statusCode.isGood()).toBe(true);
    expect((await uaCommand(ua.session, 'v1', STOP, 0, 3)).every((s) => s.isGood())).toBe(true);
    step(10);
    expect([plc.refusingConnections, lost]).toEqual([false, false]);
    const started = performance.now();
    // The Read of v1 is answered; the session and the connection go right after it.
    const [state] = await uaRead(ua.session, [nodeId('v1', 'State'), nodeId('v1', 'SeqEcho')]);
    expect(state?.value.value).toBe('CLOSED');
    await until(() => lost);
    expect(plc.refusingConnections).toBe(true);
    expect(await tcpConnect(endpointUrl)).toBe('ECONNREFUSED');
    expect((await listeningAgain()) - started).toBeGreaterThanOrEqual(999);
    // Used up: the next reads of v1 refuse nothing.
    const again = await session();
    expect((await uaRead(again.session, [nodeId('v1', 'State')]))[0]?.value.value).toBe('CLOSED');
    expect((await uaRead(again.session, [nodeId('v1', 'State')]))[0]?.value.value).toBe('CLOSED');
    expect(plc.refusingConnections).toBe(false);
  }, 20_000);

  it('a write held on the link when the module drops off dies with its session', async () => {
    const device = plant.device('v1');
    const ua = await session();
    device.setFault({ kind: 'latency', ms: 150, when: 'before', on: 'write' });
    const write = uaCommand(ua.session, 'v1', OPEN, 0, 7).catch((err: unknown) => err);
    await new Promise((r) => setTimeout(r, 30)); // on the link
    plant.plc('ua').refuseConnections({ ms: 300 });
    expect(await write).toBeInstanceOf(Error);
    device.clearFault('latency');
    await listeningAgain();
    // A marker write on a new session, sent once the held write's hold had ended: only the
    // marker reaches the controller.
    const again = await session();
    expect((await uaCommand(again.session, 'v1', STOP, 0, 8)).every((s) => s.isGood())).toBe(true);
    step(10);
    expect(device.writeLog.map((w) => w.seq)).toEqual([8]);
  }, 20_000);

  it('refused again and again, it leaks no listeners', async () => {
    // node-opcua's listen() adds listeners to its net.Server at each resume: the eleventh
    // refusal warned MaxListenersExceededWarning.
    const warnings: string[] = [];
    const onWarning = (warning: Error): void => {
      warnings.push(`${warning.name}: ${warning.message}`);
    };
    process.on('warning', onWarning);
    try {
      const plc = plant.plc('ua');
      for (let i = 0; i < 12; i++) {
        plc.refuseConnections({ ms: 1 });
        await until(() => !plc.refusingConnections, { attempts: 500, everyMs: 2 });
      }
      await session(); // and serves sessions after them
      // A warning is emitted on the next turn of the event loop.
      await new Promise((r) => setImmediate(r));
    } finally {
      process.off('warning', onWarning);
    }
    expect(warnings).toEqual([]);
  }, 20_000);

  it('through the control API: answered with the refusal, validated as on Modbus', async () => {
    expect(
      await api(url, 'POST', '/plcs/ua/refuse-connections', { ms: 10, afterReadOf: 'nope' }),
    ).toMatchObject({ status: 400, body: { code: 'INVALID_REQUEST' } });
    const started = performance.now();
    expect(await api(url, 'POST', '/plcs/ua/refuse-connections', { ms: 1_000 })).toEqual({
      status: 200,
      body: { plc: 'ua', ms: 1_000, refusingConnections: true },
    });
    expect(await tcpConnect(endpointUrl)).toBe('ECONNREFUSED');
    expect((await listeningAgain()) - started).toBeGreaterThanOrEqual(999);
  }, 20_000);
});

it('an OPC UA plant stopped while it refuses stops at once and listens no more', async () => {
  const plant = await startPlant(
    { plcs: { ua: { protocol: 'opcua', port: 0, devices: { v1: { profile: 'valve' } } } } },
    { ephemeralPorts: true, control: false },
  );
  const { endpointUrl } = opcuaEndpoint(plant.plc('ua').endpoint);
  plant.plc('ua').refuseConnections({ ms: 60_000 });
  const started = performance.now();
  await plant.stop();
  expect(performance.now() - started).toBeLessThan(2_000);
  expect(await tcpConnect(endpointUrl)).toBe('ECONNREFUSED');
}, 20_000);

/**
 * The real OPC UA driver (one long-lived session per endpoint) and pipeline, on a SQLite
 * journal, against the PLC refusing connections right after the command's fresh read: the write
 * finds no session, is reported unsent, and goes round again once the driver has reconnected
 * (a new session: the old one is gone). Ground truth: the simulator's write log, the journal.
 */
describe('the OPC UA driver against a PLC that refuses connections', () => {
  let h: SimHarness | undefined;
  afterEach(async () => {
    await h?.close();
    h = undefined;
  });

  it('a write after the refusal starts is reported unsent, and written once after reconnecting', async () => {
    h = await SimHarness.start({ opcua: true });
    const harness = h;
    const binding = harness.drivers.bindings.find((b) => b.id === 'u1')!;
    await harness.until(() => binding.driver.health().connected, 30_000, 'the first session');
    const plc = harness.plant.plc('ua');
    plc.refuseConnections({ ms: 300, afterReadOf: 'u1' });
    harness.submit('ua-refused', { device: 'u1', action: 'open', ttlMs: 30_000 });
    const r = await harness.settled('ua-refused', 30_000);
    const notes = harness.notes('ua-refused');
    expect(r, notes.join('\n')).toMatchObject({ state: 'confirmed', attempts: 2 });
    const seq = r.seq!;
    expect(notes).toContainEqual(
      expect.stringMatching(
        new RegExp(
          `^dispatched: the write \\(sequence number ${seq}\\) was not sent: no connection to the controller `,
        ),
      ),
    );
    expect(notes).toContainEqual(expect.stringMatching(/^dispatched: redispatch: /));
    // One write of its number reached the controller, on the session made after the refusal.
    const u1 = harness.device('u1');
    expect(u1.writesOfSeq(seq)).toHaveLength(1);
    expect(u1.counters.writesReceived).toBe(1);
    expect(plc.refusingConnections).toBe(false);
    expect(binding.driver.health().connected).toBe(true);
  }, 60_000);
});
