import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { AttributeIds, DataType, type WriteValueOptions } from 'node-opcua';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { parseYamlText } from '../../src/config/yaml-text.js';
import { systemClock } from '../../src/core/clock.js';
import {
  DeviceRefusedError,
  DeviceUnreachableError,
  type DeviceDriver,
} from '../../src/core/driver.js';
import { silentLogger } from '../../src/core/logger.js';
import { parseProfile, type DeviceProfile } from '../../src/core/profile.js';
import { buildDrivers, type Drivers } from '../../src/drivers/inventory.js';
import type { OpcuaEndpoint } from '../../src/drivers/opcua.js';
import { startPlant, type Plant } from '../../simulators/plant.js';
import type { SimDevice } from '../../simulators/plc.js';
import { PROFILES, ROOT, tempDir } from '../helpers/fixtures.js';
import { inventoryFor } from '../helpers/plant-inventory.js';
import {
  connectOpcua,
  nodeId,
  releaseClientPki,
  uaRead,
  type UaConnection,
} from '../simulators/opcua-client.js';

/**
 * A profile without a sequence number (controller.echoesSeq false, no command.seq: allowed):
 * the command code is the trigger, the write the controller takes. OPC UA answers each node of a
 * Write request on its own, so the code and setpoint in one request could have the code written
 * (and taken) with the setpoint refused, answered busy (and the code sent again with it: I1), or
 * not yet written. The setpoint goes first, in a request of its own that must be answered plain
 * Good, then the code alone. And a trigger request of several nodes is refused, or busy, only
 * when none of its nodes may have been written: otherwise its outcome is unknown.
 *
 * Real parts: sluice-sim's OPC UA PLC (its bad-status fault, per variable: one node of a request
 * refused, the others written) and the real driver and endpoint, over real sockets. Ground truth:
 * the PLC's command variables, read with an independent OPC UA client.
 */

/** The shipped actuator profile with its controller's sequence number and echo taken away. */
function actuatorWithoutSeq(): DeviceProfile {
  const path = join(ROOT, 'devices', 'profiles', 'actuator.yaml');
  const yaml = parseYamlText(readFileSync(path, 'utf8'));
  if (!yaml.ok) throw new Error(yaml.errors.join('; '));
  const data = yaml.value as {
    controller: { echoesSeq: boolean };
    modbus?: unknown;
    opcua: { status: { seqEcho?: string }; command: { seq?: string } };
  };
  data.controller.echoesSeq = false;
  delete data.modbus;
  delete data.opcua.status.seqEcho;
  delete data.opcua.command.seq;
  return parseProfile(data, 'actuator without seq');
}

const DEVICE = 'ua-act';
/** The actuator's move (devices/profiles/actuator.yaml). */
const MOVE = 5;

let plant: Plant;
let drivers: Drivers;
let driver: DeviceDriver;
let endpoint: OpcuaEndpoint;
let probe: UaConnection;
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
          devices: { [DEVICE]: { profile: 'actuator', initialPosition: 0 } },
        },
      },
    },
    { ephemeralPorts: true, control: false },
  );
  const pki = tempDir('sluice-pki-');
  cleanupPki = pki.cleanup;
  drivers = await buildDrivers({
    inventory: inventoryFor(plant),
    profiles: new Map([...PROFILES, ['actuator', actuatorWithoutSeq()]]),
    pkiDir: pki.dir,
    acceptUnknownCertificates: true,
    clock: systemClock,
    logger: silentLogger,
  });
  drivers.start();
  driver = drivers.bindings[0]!.driver;
  endpoint = drivers.opcua[0]!;
  const e = plant.plc('ua').endpoint;
  if (e.protocol !== 'opcua') throw new Error('expected an OPC UA PLC');
  probe = await connectOpcua(e.endpointUrl);
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

afterEach(async () => {
  device().clearFaults();
  plant.plc('ua').clearFaults();
  // The command variables back at rest, as at power-up.
  await probe.session.write([commandValue('CommandCode', 0), setpointValue(0)]);
});

afterAll(async () => {
  await probe.close();
  await releaseClientPki();
  await drivers.close();
  await plant.stop();
  cleanupPki();
});

function device(): SimDevice {
  return plant.device(DEVICE);
}

/** The PLC's command variables, read now by the independent client. */
async function commandVariables(): Promise<{ code: number; setpoint: number }> {
  const [code, setpoint] = await uaRead(probe.session, [
    nodeId(DEVICE, 'CommandCode'),
    nodeId(DEVICE, 'Setpoint'),
  ]);
  return { code: Number(code?.value.value), setpoint: Number(setpoint?.value.value) };
}

function commandValue(name: string, value: number): WriteValueOptions {
  return {
    nodeId: nodeId(DEVICE, name),
    attributeId: AttributeIds.Value,
    value: { value: { dataType: DataType.UInt16, value } },
  };
}

function setpointValue(value: number): WriteValueOptions {
  return {
    nodeId: nodeId(DEVICE, 'Setpoint'),
    attributeId: AttributeIds.Value,
    value: { value: { dataType: DataType.Double, value } },
  };
}

async function failure(write: Promise<void>): Promise<unknown> {
  return write.then(
    () => null,
    (error: unknown) => error,
  );
}

describe('a move on a profile without a sequence number', () => {
  it('setpoint refused (BadOutOfRange): refused, and the code, the trigger, was never written', async () => {
    device().setFault({
      kind: 'bad-status',
      status: 'BadOutOfRange',
      node: 'Setpoint',
      on: 'write',
      count: 1,
    });
    const error = await failure(driver.write({ action: 'move', position: 40, seq: 1 }));
    expect(error).toBeInstanceOf(DeviceRefusedError);
    expect((error as DeviceRefusedError).busy).toBe(false);
    expect(String(error)).toMatch(
      /BadOutOfRange to the setpoint; the trigger \(the code\) was not sent/,
    );
    // The write returned: every request it sent has been answered. The PLC never got the code.
    expect(await commandVariables()).toEqual({ code: 0, setpoint: 0 });
  });

  it('setpoint answered BadServerTooBusy: busy, the code never written; sent again, setpoint then code written', async () => {
    device().setFault({
      kind: 'bad-status',
      status: 'BadServerTooBusy',
      node: 'Setpoint',
      on: 'write',
      count: 1,
    });
    const error = await failure(driver.write({ action: 'move', position: 40, seq: 1 }));
    expect(error).toBeInstanceOf(DeviceRefusedError);
    expect((error as DeviceRefusedError).busy).toBe(true);
    // Nothing the controller takes was written, so sending the write again (the core does for
    // a busy answer: src/core/busy-write.ts) cannot make it take the code twice.
    expect(await commandVariables()).toEqual({ code: 0, setpoint: 0 });
    await driver.write({ action: 'move', position: 40, seq: 1 });
    expect(await commandVariables()).toEqual({ code: MOVE, setpoint: 40 });
    const [code, setpoint] = await uaRead(probe.session, [
      nodeId(DEVICE, 'CommandCode'),
      nodeId(DEVICE, 'Setpoint'),
    ]);
    // The setpoint was in place when the code came (the PLC stamps each with its clock).
    expect(setpoint!.sourceTimestamp!.getTime()).toBeLessThanOrEqual(
      code!.sourceTimestamp!.getTime(),
    );
  });
});

describe('a trigger request of several nodes, one refused or busy', () => {
  /** The code and setpoint in one request, sent as the trigger. */
  function codeAndSetpoint(): Promise<void> {
    return endpoint.write(
      [
        {
          nodeId: endpoint.nodeId(DEVICE, 'CommandCode'),
          attributeId: AttributeIds.Value,
          value: { value: { dataType: DataType.UInt16, value: MOVE } },
        },
        {
          nodeId: endpoint.nodeId(DEVICE, 'Setpoint'),
          attributeId: AttributeIds.Value,
          value: { value: { dataType: DataType.Double, value: 40 } },
        },
      ],
      'trigger',
    );
  }

  it.each([
    { status: 'BadServerTooBusy', busy: true, every: 'busy' },
    { status: 'BadOutOfRange', busy: false, every: 'refused' },
  ] as const)(
    '[Good, $status]: outcome unknown, not $every (the code was written); every node $every: $every',
    async ({ status, busy }) => {
      device().setFault({ kind: 'bad-status', status, node: 'Setpoint', on: 'write', count: 1 });
      const error = await failure(codeAndSetpoint());
      expect(error).toBeInstanceOf(DeviceUnreachableError);
      expect(error).not.toBeInstanceOf(DeviceRefusedError);
      expect(await commandVariables()).toEqual({ code: MOVE, setpoint: 0 });
      // Every node answered so: nothing was written (and, busy, the write may be sent again).
      await probe.session.write([commandValue('CommandCode', 0)]);
      device().setFault({ kind: 'bad-status', status, on: 'write', count: 1 });
      const every = await failure(codeAndSetpoint());
      expect(every).toBeInstanceOf(DeviceRefusedError);
      expect((every as DeviceRefusedError).busy).toBe(busy);
      expect(await commandVariables()).toEqual({ code: 0, setpoint: 0 });
    },
  );

  it('[BadTimeout, BadOutOfRange]: outcome unknown, not refused (the code may have been taken)', async () => {
    // The PLC answers the code BadTimeout after writing it (its field device's answer lost);
    // the device refuses the setpoint.
    plant.plc('ua').setFault({
      kind: 'bad-status',
      status: 'BadTimeout',
      node: 'CommandCode',
      when: 'after',
      on: 'write',
      count: 1,
    });
    device().setFault({
      kind: 'bad-status',
      status: 'BadOutOfRange',
      node: 'Setpoint',
      on: 'write',
      count: 1,
    });
    const error = await failure(codeAndSetpoint());
    expect(error).toBeInstanceOf(DeviceUnreachableError);
    expect(error).not.toBeInstanceOf(DeviceRefusedError);
    expect(String(error)).toMatch(/BadOutOfRange .*BadTimeout/);
    expect(await commandVariables()).toEqual({ code: MOVE, setpoint: 0 });
  });
});
