import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { afterEach, expect, it } from 'vitest';
import { systemClock } from '../../src/core/clock.js';
import type { DeviceDriver, Readback } from '../../src/core/driver.js';
import { silentLogger } from '../../src/core/logger.js';
import { buildDrivers, type Drivers } from '../../src/drivers/inventory.js';
import { startPlant, type Plant } from '../../simulators/plant.js';
import { PROFILES, tempDir } from '../helpers/fixtures.js';
import { inventoryFor } from '../helpers/plant-inventory.js';

/**
 * An OPC UA server that loses the gateway's session while the endpoint takes up a re-established
 * connection. node-opcua reconnects by itself (a new session: the server lost the old one) and
 * reports the connection re-established; before the link is used the endpoint reads the
 * server's NamespaceArray again. Answered BadSessionIdInvalid (the server's session layer lost
 * the session meanwhile), that read makes node-opcua make yet another session, say so
 * (session_restored) and send the read again. The endpoint must take that session up and use the
 * link: it stayed "not connected" until the daemon restarted, every write of the PLC not sent.
 *
 * Real parts: sluice-sim's OPC UA PLC (its own faults: connections refused for a while, then its
 * sessions lost) and the real driver. The loss is placed in that window by a TCP relay in front
 * of the PLC: when the first Read of the NamespaceArray after the refusal comes by, it has the
 * PLC lose its sessions before passing it on, so the server answers it BadSessionIdInvalid. The
 * window lasts from a few ms to the request timeout; only its placement is the relay's. Ground
 * truth: what the relay saw on the wire (a new session made after the loss) and the simulator's
 * write log (a write sent on the restored link reached the controller).
 */

/** Binary encoding ids (OPC 10000-6, NodeIds.csv: <Request>_Encoding_DefaultBinary). */
const READ_REQUEST = 631;
const CREATE_SESSION_REQUEST = 461;
/** A ReadValueId of Server_NamespaceArray's value: NodeId ns=0;i=2255 (four-byte form), attribute 13. */
const NAMESPACE_ARRAY_VALUE = Buffer.from([0x01, 0x00, 0xcf, 0x08, 0x0d, 0x00, 0x00, 0x00]);

/**
 * A TCP relay in front of the PLC that reads the client's OPC UA TCP chunks (security None:
 * plain), counts its CreateSession requests and, once armed, runs `onNamespaceRead` just before
 * it passes on the next Read of the NamespaceArray.
 */
class Relay {
  createSessions = 0;
  onNamespaceRead: (() => void) | null = null;
  private readonly sockets = new Set<Socket>();
  private constructor(
    private readonly server: Server,
    readonly port: number,
  ) {}

  static async open(target: number): Promise<Relay> {
    const holder: { relay: Relay | null } = { relay: null };
    const server = createServer((inbound) => {
      const relay = holder.relay!;
      const outbound = createConnection({ host: '127.0.0.1', port: target });
      relay.sockets.add(inbound).add(outbound);
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
          const message = pending.subarray(0, pending.readUInt32LE(4));
          pending = pending.subarray(message.length);
          // MSG header 8, secure channel id 4, token id 4, sequence number 4, request id 4,
          // then the type id as a four-byte NodeId (0x01, namespace 0, uint16 id).
          if (message.toString('latin1', 0, 3) !== 'MSG' || message.length < 28) continue;
          if (message[24] !== 0x01) continue;
          const type = message.readUInt16LE(26);
          if (type === CREATE_SESSION_REQUEST) relay.createSessions++;
          const hook = relay.onNamespaceRead;
          if (
            hook !== null &&
            type === READ_REQUEST &&
            message.indexOf(NAMESPACE_ARRAY_VALUE, 28) >= 0
          ) {
            relay.onNamespaceRead = null;
            hook();
          }
        }
        outbound.write(chunk);
      });
      outbound.pipe(inbound);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const address = server.address();
    const relay = new Relay(
      server,
      typeof address === 'object' && address !== null ? address.port : 0,
    );
    holder.relay = relay;
    return relay;
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise((resolve) => this.server.close(resolve));
  }
}

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** The first readback that `until` accepts; the last error past `ms`. */
async function readWithin(
  driver: DeviceDriver,
  until: (r: Readback) => boolean,
  ms: number,
): Promise<Readback> {
  const end = Date.now() + ms;
  for (;;) {
    try {
      const r = await driver.read();
      if (until(r)) return r;
      if (Date.now() > end) throw new Error(`readback never matched: ${JSON.stringify(r)}`);
    } catch (error) {
      if (Date.now() > end) throw error;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

it('a session lost while a re-established connection is taken up: the link is used again, a write reaches the controller', async () => {
  const plant: Plant = await startPlant(
    {
      control: { host: '127.0.0.1', port: 0 },
      plcs: {
        ua: {
          protocol: 'opcua',
          host: '127.0.0.1',
          port: 0,
          scanMs: 10,
          devices: { 'ua-valve': { profile: 'valve', initialPosition: 0 } },
        },
      },
    },
    { ephemeralPorts: true, control: false },
  );
  cleanups.push(() => plant.stop());
  const e = plant.plc('ua').endpoint;
  if (e.protocol !== 'opcua') throw new Error('expected an OPC UA PLC');
  const relay = await Relay.open(Number(new URL(e.endpointUrl).port));
  cleanups.push(() => relay.close());
  const inventory = inventoryFor(plant);
  const ua = inventory.plcs.ua!;
  if (ua.protocol !== 'opcua') throw new Error('expected an OPC UA PLC');
  inventory.plcs.ua = { ...ua, endpointUrl: `opc.tcp://127.0.0.1:${relay.port}` };
  const pki = tempDir('sluice-pki-');
  cleanups.push(pki.cleanup);
  const drivers: Drivers = await buildDrivers({
    inventory,
    profiles: PROFILES,
    pkiDir: pki.dir,
    acceptUnknownCertificates: true,
    clock: systemClock,
    logger: silentLogger,
  });
  cleanups.push(() => drivers.close());
  drivers.start();
  const driver = drivers.bindings[0]!.driver;
  await readWithin(driver, () => true, 20_000);

  // The PLC's communication module drops off the network for 300 ms; node-opcua reconnects by
  // itself. The first NamespaceArray read after it is the endpoint's, taking the link up: the
  // PLC loses its sessions just before that read reaches it.
  let sessionsBefore = -1;
  const lost = new Promise<void>((resolve) => {
    relay.onNamespaceRead = () => {
      sessionsBefore = relay.createSessions;
      plant.plc('ua').loseSessions();
      resolve();
    };
  });
  plant.plc('ua').refuseConnections({ ms: 300 });
  await lost;

  // The link is used again: a write goes out on it and the controller takes it.
  const end = Date.now() + 15_000;
  for (;;) {
    try {
      await driver.write({ action: 'open', position: null, seq: 7 });
      break;
    } catch (error) {
      if (Date.now() > end) throw error;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  const device = plant.device('ua-valve');
  const taken = await readWithin(driver, (r) => r.seq === 7, 5_000);
  expect(taken.state).not.toBe('CLOSED');
  expect(device.writesWithSeq(7)).toBe(1);
  // node-opcua made a new session for the read the server answered BadSessionIdInvalid: the
  // race took place.
  expect(relay.createSessions).toBeGreaterThan(sessionsBefore);
}, 60_000);
