import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { systemClock } from '../../src/core/clock.js';
import { WriteNotSentError, type DeviceDriver } from '../../src/core/driver.js';
import { silentLogger } from '../../src/core/logger.js';
import { buildDrivers, type Drivers } from '../../src/drivers/inventory.js';
import { startPlant, type Plant } from '../../simulators/plant.js';
import { PROFILES, tempDir } from '../helpers/fixtures.js';
import { inventoryFor } from '../helpers/plant-inventory.js';

/**
 * An OPC UA server that lost the gateway's session (timed out on its side, its session layer
 * restarted) while the secure channel stays up, and refuses new sessions for a while (its table
 * still full). node-opcua repairs the session by itself, and holds every request a caller sends
 * meanwhile to send it again once the session is back; the driver's read gives up on such a
 * request at its timeout, but node-opcua keeps it: a read a monitor period for as long as the
 * server refuses, all sent at once when it accepts. A read asked for during the repair must not
 * go out at all. Real parts: sluice-sim's OPC UA PLC, the real driver; ground truth is what
 * reached the server: the Read requests on the wire, counted by a proxy in front of it.
 */

/** ReadRequest's binary encoding id (OPC 10000-6, NodeIds.csv: ReadRequest_Encoding_DefaultBinary). */
const READ_REQUEST = 631;

/**
 * A TCP proxy in front of the PLC that counts the Read requests the client sends: every OPC UA
 * TCP chunk of the client's stream (an 8-byte header: type, chunk kind, size), and in each MSG
 * chunk (security None: plain) the request's encoding id after the sequence header.
 */
class ReadCounter {
  reads = 0;
  private readonly sockets = new Set<Socket>();
  private constructor(
    private readonly server: Server,
    readonly port: number,
  ) {}

  static async open(target: number): Promise<ReadCounter> {
    const holder: { c: ReadCounter | null } = { c: null };
    const server = createServer((inbound) => {
      const counter = holder.c!;
      const outbound = createConnection({ host: '127.0.0.1', port: target });
      counter.sockets.add(inbound).add(outbound);
      const close = (): void => {
        inbound.destroy();
        outbound.destroy();
      };
      inbound.on('error', close).on('close', close);
      outbound.on('error', close).on('close', close);
      let pending = Buffer.alloc(0);
      inbound.on('data', (chunk: Buffer) => {
        pending = Buffer.concat([pending, chunk]);
        while (pending.length >= 8 && pending.length >= pending.readUInt32LE(4)) {
          const size = pending.readUInt32LE(4);
          const message = pending.subarray(0, size);
          // MSG header 8, secure channel id 4, token id 4, sequence number 4, request id 4,
          // then the type id as a four-byte NodeId (0x01, namespace 0, uint16 id).
          if (message.toString('latin1', 0, 3) === 'MSG' && message.length >= 28) {
            if (message[24] === 0x01 && message.readUInt16LE(26) === READ_REQUEST) counter.reads++;
          }
          pending = pending.subarray(size);
        }
        outbound.write(chunk);
      });
      outbound.pipe(inbound);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const address = server.address();
    const counter = new ReadCounter(
      server,
      typeof address === 'object' && address !== null ? address.port : 0,
    );
    holder.c = counter;
    return counter;
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise((resolve) => this.server.close(resolve));
  }
}

let plant: Plant;
let counter: ReadCounter;
let drivers: Drivers;
let driver: DeviceDriver;
let cleanupPki: () => void;

beforeAll(async () => {
  plant = await startPlant(
    {
      control: { host: '127.0.0.1', port: 0 },
      plcs: {
        ua: {
          protocol: 'opcua',
          host: '127.0.0.1',
          port: 0,
          scanMs: 10,
          devices: { 'ua-valve': { profile: 'valve' } },
        },
      },
    },
    { ephemeralPorts: true, control: false },
  );
  const e = plant.plc('ua').endpoint as { endpointUrl: string };
  counter = await ReadCounter.open(Number(new URL(e.endpointUrl).port));
  const inventory = inventoryFor(plant);
  const ua = inventory.plcs.ua!;
  if (ua.protocol !== 'opcua') throw new Error('expected an OPC UA PLC');
  inventory.plcs.ua = {
    ...ua,
    endpointUrl: `opc.tcp://127.0.0.1:${counter.port}`,
    requestTimeoutMs: 300,
  };
  const pki = tempDir('sluice-pki-');
  cleanupPki = pki.cleanup;
  drivers = await buildDrivers({
    inventory,
    profiles: PROFILES,
    pkiDir: pki.dir,
    acceptUnknownCertificates: true,
    clock: systemClock,
    logger: silentLogger,
  });
  drivers.start();
  driver = drivers.bindings[0]!.driver;
  const end = Date.now() + 20_000;
  for (;;) {
    try {
      await driver.read();
      break;
    } catch (error) {
      if (Date.now() > end) throw error;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}, 60_000);

afterAll(async () => {
  await drivers.close();
  await counter.close();
  await plant.stop();
  cleanupPki();
});

it('a write or reads asked for while node-opcua repairs a lost session do not reach the server, then or after the repair', async () => {
  // The server forgets the session and refuses a new one for 3 s; node-opcua learns of it from
  // the next request's BadSessionIdInvalid and tries again every 2 s.
  plant.plc('ua').loseSessions({ refuseMs: 3_000 });
  await expect(driver.read()).rejects.toThrow();
  // The repair is under way (the next attempt 2 s after the first, refused): a write asked for
  // now is never sent, and says so (it would be answered BadSessionIdInvalid, its outcome left
  // unknown to the core, or held and sent after the repair); reads asked for now neither.
  const before = counter.reads;
  const write = driver.write({ action: 'open', position: null, seq: 4711 });
  await expect(write).rejects.toThrow(WriteNotSentError);
  await expect(write).rejects.toMatchObject({ reason: 'no-connection' });
  for (let i = 0; i < 4; i++) {
    await expect(driver.read()).rejects.toMatchObject({ code: 'DEVICE_UNREACHABLE' });
  }
  expect(counter.reads - before).toBe(0);
  // Once the session is back, a read is answered again.
  const end = Date.now() + 15_000;
  let ok = 0;
  for (;;) {
    try {
      await driver.read();
      ok++;
      if (ok === 2) break;
    } catch (error) {
      if (Date.now() > end) throw error;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  // The second read went out behind anything node-opcua sent again at the repair (one channel,
  // in order): none of the reads refused during the repair was sent then either. Each read the
  // driver sent on the restored session is one request; the first, which met the lost session,
  // node-opcua's own read of the server's limits at the repair, and the driver's read of the
  // NamespaceArray on the new session (before anything else is sent on it) are the only others.
  const after = counter.reads;
  expect(after - before).toBeLessThanOrEqual(ok + 3);
  // Ground truth for the write: the controller never received it.
  expect(plant.device('ua-valve').counters.writesReceived).toBe(0);
}, 40_000);
