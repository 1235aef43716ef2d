import { DataType, DataValue, StatusCodes, Variant } from 'node-opcua';
import { describe, expect, it } from 'vitest';
import { systemClock } from '../../src/core/clock.js';
import type { Readback } from '../../src/core/driver.js';
import { OpcuaDeviceDriver, type OpcuaEndpoint } from '../../src/drivers/opcua.js';
import { profile } from '../helpers/fixtures.js';

/**
 * The OPC UA driver reads a device's status in one Read request, the image time first, then the
 * echo, then state, position and fault (as the Modbus driver orders its requests). OPC UA makes
 * only each Variable's read atomic: a server may read the nodes of one request one by one, and
 * a controller scan may fall between two of them. Wherever it falls, the readback never pairs
 * a command's echo with the state from before the controller took it (a reset's echo with the
 * FAULT it cleared: DEVICE_FAULT at once), nor a scan time with an older state (an image from
 * before a write looking fresh). In the order state, position, fault, echo, time it did both.
 *
 * A test double in place of the server: sluice-sim answers every Read from one scan, and
 * cannot show a request read across a scan. The double answers each node of the request, in
 * the request's order, from the image before a scan for the first `k` nodes and from the
 * image after it for the rest, for every `k`; the real driver builds the request and decodes
 * the answer.
 */

const BEFORE = { ScanTime: 1_000, SeqEcho: 10, State: 'FAULT', Position: 0, FaultCode: 0x82 };
/** The next scan took the reset (sequence number 11): CLOSED, fault cleared. */
const AFTER = { ScanTime: 1_010, SeqEcho: 11, State: 'CLOSED', Position: 0, FaultCode: 0 };
type Image = typeof BEFORE;

function dataValue(name: keyof Image, image: Image): DataValue {
  const value = image[name];
  return new DataValue({
    value:
      name === 'ScanTime'
        ? new Variant({ dataType: DataType.DateTime, value: new Date(value) })
        : name === 'State'
          ? new Variant({ dataType: DataType.String, value })
          : new Variant({ dataType: DataType.Double, value }),
    sourceTimestamp: new Date(image.ScanTime),
    statusCode: StatusCodes.Good,
  });
}

/** Reads with the scan falling after the first `k` nodes of the request. */
async function readAcrossScan(k: number): Promise<Readback> {
  const endpoint = {
    sessionOpening: () => Promise.resolve(),
    read: (nodes: readonly { object: string; name: string }[]) =>
      Promise.resolve({
        values: nodes.map((n, i) => dataValue(n.name as keyof Image, i < k ? BEFORE : AFTER)),
        requestedAt: 0,
        receivedAt: 0,
      }),
  } as unknown as OpcuaEndpoint;
  const driver = new OpcuaDeviceDriver({
    id: 'u1',
    profile: profile('valve'),
    endpoint,
    clock: systemClock,
  });
  return driver.read();
}

describe('an OPC UA status read that a controller scan splits', () => {
  it('never pairs an echo or a scan time with a state older than them', async () => {
    for (let k = 0; k <= 5; k++) {
      const r = await readAcrossScan(k);
      const why = `scan after ${k} of the request's nodes: ${JSON.stringify(r)}`;
      if (r.seq === AFTER.SeqEcho) expect(r.state, why).toBe(AFTER.State);
      if (r.sourceTime === AFTER.ScanTime) {
        expect([r.seq, r.state, r.faultCode], why).toEqual([AFTER.SeqEcho, AFTER.State, null]);
      }
    }
  });
});
