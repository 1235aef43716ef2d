/**
 * The write log's heldOnLinkMs counts a write's whole time on the link from its arrival at the
 * PLC, the time it waited behind a request held before it on its connection included, so that
 * receivedAt − heldOnLinkMs is when its master sent it (write-log.ts). Proven on real-time
 * sluice-sim plants, through a raw Modbus TCP socket and node-opcua's client (one session, so
 * one secure channel): a write not faulted itself, sent right behind a read a latency fault
 * holds, and an OPC UA write held itself, sent right behind another held write.
 */
import { afterAll, afterEach, expect, it } from 'vitest';
import { startPlant, type Plant } from '../../simulators/plant.js';
import { modbusEndpoint, rawModbus } from './helpers.js';
import {
  connectOpcua,
  nodeId,
  opcuaEndpoint,
  releaseClientPki,
  uaCommand,
  uaRead,
} from './opcua-client.js';

const OPEN = 1;
const STOP = 3;

let plant: Plant | undefined;
afterEach(async () => {
  await plant?.stop();
  plant = undefined;
});
afterAll(() => releaseClientPki());

async function opcuaPlant(): Promise<Plant> {
  return startPlant(
    {
      plcs: {
        ua: { protocol: 'opcua', port: 0, devices: { v1: { profile: 'valve', travelMs: 200 } } },
      },
    },
    { ephemeralPorts: true, control: false },
  );
}

it('Modbus: a write sent right behind a held read records the time the read held it', async () => {
  plant = await startPlant(
    {
      plcs: {
        plc: {
          protocol: 'modbus',
          port: 0,
          devices: { v1: { profile: 'valve', base: 0, travelMs: 200 } },
        },
      },
    },
    { ephemeralPorts: true, control: false },
  );
  const device = plant.device('v1');
  // Reads are held 1 s on the link before they reach the PLC; writes are not.
  device.setFault({ kind: 'latency', ms: 1000, when: 'before', on: 'read' });
  const raw = await rawModbus(modbusEndpoint(plant.plc('plc').endpoint));
  try {
    const sentAt = performance.now();
    const read = raw.read(0, 8);
    const write = raw.write(10, [OPEN, 0, 7]); // seq 7, sent right behind the read
    const [, written] = await Promise.all([read, write]);
    expect(written.at - sentAt).toBeGreaterThanOrEqual(1000); // it did wait behind the read
    const entry = device.writesOfSeq(7)[0]!;
    expect(entry.heldOnLinkMs, JSON.stringify(entry)).toBeGreaterThanOrEqual(900);
  } finally {
    raw.socket.destroy();
  }
});

it('OPC UA: a write sent right behind a held read on its channel records the time the read held it', async () => {
  plant = await opcuaPlant();
  const device = plant.device('v1');
  device.setFault({ kind: 'latency', ms: 1000, when: 'before', on: 'read' });
  const ua = await connectOpcua(opcuaEndpoint(plant.plc('ua').endpoint).endpointUrl);
  try {
    const sentAt = performance.now();
    const read = uaRead(ua.session, [nodeId('v1', 'State')]);
    const write = uaCommand(ua.session, 'v1', OPEN, 0, 7).then(() => performance.now());
    const [, writtenAt] = await Promise.all([read, write]);
    expect(writtenAt - sentAt).toBeGreaterThanOrEqual(1000); // it did wait behind the read
    const entry = device.writesOfSeq(7)[0]!;
    expect(entry.heldOnLinkMs, JSON.stringify(entry)).toBeGreaterThanOrEqual(900);
  } finally {
    await ua.close();
  }
});

it('OPC UA: a held write sent right behind another held write counts from its arrival', async () => {
  plant = await opcuaPlant();
  const device = plant.device('v1');
  // Each write is held 1 s itself; the second one waits behind the first one's hold first.
  device.setFault({ kind: 'latency', ms: 1000, when: 'before', on: 'write' });
  const ua = await connectOpcua(opcuaEndpoint(plant.plc('ua').endpoint).endpointUrl);
  try {
    await Promise.all([
      uaCommand(ua.session, 'v1', OPEN, 0, 31),
      uaCommand(ua.session, 'v1', STOP, 0, 32),
    ]);
    const first = device.writesOfSeq(31)[0]!;
    const second = device.writesOfSeq(32)[0]!;
    const log = JSON.stringify([first, second]);
    expect(second.receivedAt - first.receivedAt, log).toBeGreaterThanOrEqual(990);
    // Sent back to back: their sending, receivedAt − heldOnLinkMs, is well under a hold apart.
    const sentFirst = first.receivedAt - first.heldOnLinkMs!;
    const sentSecond = second.receivedAt - second.heldOnLinkMs!;
    expect(Math.abs(sentSecond - sentFirst), log).toBeLessThan(500);
  } finally {
    await ua.close();
  }
});
