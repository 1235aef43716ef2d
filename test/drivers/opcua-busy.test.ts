import { afterEach, describe, expect, it } from 'vitest';
import { SimHarness } from '../helpers/sim-harness.js';

/**
 * An OPC UA server that answers a write busy: BadServerTooBusy ("the Server does not have the
 * resources to process the request at this time"), as a ServiceFault (OPC 10000-4 §5.3: the
 * Service itself failed, nothing of the request processed) or as the status of the nodes. Such a
 * write was not applied, so it is sent again as a Modbus write answered 0x06 is
 * (src/core/busy-write.ts), within the command's deadline. A status that does not say the write
 * was not carried out (BadResourceUnavailable: "an operating system resource is not available")
 * leaves its outcome unknown, for the readback to settle, never "refused".
 *
 * Real parts: the pipeline with the real OPC UA driver against sluice-sim over real sockets, a
 * real journal file. Ground truth: the simulator's write log (writes applied) and its fault
 * counts (requests refused).
 */

let h: SimHarness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

/** The bad-status faults still active on the device (a `count` one is gone once used up). */
function faultLeft(harness: SimHarness, device: string): number | undefined {
  const fault = harness
    .device(device)
    .faults()
    .find((f) => f.kind === 'bad-status');
  return fault === undefined ? undefined : (fault.remaining ?? Infinity);
}

describe('an OPC UA write answered BadServerTooBusy', () => {
  it('as a ServiceFault to two writes, then free: the same write is sent again and confirmed; one write applied', async () => {
    h = await SimHarness.start({ opcua: true });
    const valve = h.device('u1');
    valve.setFault({
      kind: 'bad-status',
      status: 'BadServerTooBusy',
      service: true,
      on: 'write',
      count: 2,
    });
    h.submit('ua-busy', { device: 'u1', action: 'open' });
    const r = await h.settled('ua-busy');
    expect(r, h.notes('ua-busy').join('\n')).toMatchObject({ state: 'confirmed', attempts: 1 });
    expect(faultLeft(h, 'u1')).toBeUndefined();
    expect(valve.writeLog).toHaveLength(1);
    expect(valve.writesWithSeq(r.seq!)).toBe(1);
    const busyNotes = h.notes('ua-busy').filter((n) => n.includes('BadServerTooBusy'));
    expect(busyNotes).toHaveLength(2);
    for (const note of busyNotes) expect(note).toMatch(/answered busy to the write/);
  });

  it('as the status of the trigger node: sent again and confirmed; one write applied', async () => {
    h = await SimHarness.start({ opcua: true });
    const valve = h.device('u1');
    valve.setFault({
      kind: 'bad-status',
      status: 'BadServerTooBusy',
      node: 'CommandSeq',
      on: 'write',
      count: 1,
    });
    h.submit('ua-busy-node', { device: 'u1', action: 'open' });
    const r = await h.settled('ua-busy-node');
    expect(r, h.notes('ua-busy-node').join('\n')).toMatchObject({
      state: 'confirmed',
      attempts: 1,
    });
    expect(faultLeft(h, 'u1')).toBeUndefined();
    expect(valve.writeLog).toHaveLength(1);
    expect(valve.writesWithSeq(r.seq!)).toBe(1);
  });

  it('busy past the deadline: failed, the detail says busy, nothing applied', async () => {
    h = await SimHarness.start({ opcua: true });
    // The session up first (a stop at rest: no write), so that the deadline is spent busy.
    h.submit('ua-up', { device: 'u1', action: 'stop' });
    expect(await h.settled('ua-up')).toMatchObject({ state: 'confirmed' });
    const valve = h.device('u1');
    valve.setFault({
      kind: 'bad-status',
      status: 'BadServerTooBusy',
      service: true,
      on: 'write',
      count: 100_000,
    });
    h.submit('ua-busy-ttl', { device: 'u1', action: 'open', ttlMs: 1_000 });
    const r = await h.settled('ua-busy-ttl');
    expect(r).toMatchObject({ state: 'failed', code: 'DEVICE_FAULT' });
    expect(r.detail).toMatch(
      /^the controller stayed busy: .*BadServerTooBusy.*nothing was applied$/,
    );
    const refused = 100_000 - faultLeft(h, 'u1')!;
    expect(refused).toBeGreaterThanOrEqual(3);
    expect(valve.writeLog).toHaveLength(0);
    valve.clearFaults();
  });
});

it('a trigger answered BadResourceUnavailable after the controller took it: outcome unknown, settled by readback as confirmed, never refused', async () => {
  h = await SimHarness.start({ opcua: true });
  const valve = h.device('u1');
  valve.setFault({
    kind: 'bad-status',
    status: 'BadResourceUnavailable',
    node: 'CommandSeq',
    when: 'after',
    on: 'write',
    count: 1,
  });
  h.submit('ua-resource', { device: 'u1', action: 'open' });
  const r = await h.settled('ua-resource');
  expect(r, h.notes('ua-resource').join('\n')).toMatchObject({ state: 'confirmed' });
  expect(valve.writeLog).toHaveLength(1);
  expect(valve.writesWithSeq(r.seq!)).toBe(1);
});

it('a ServiceFault other than busy to the trigger the controller took (BadTimeout): outcome unknown, settled by readback as confirmed, one write', async () => {
  h = await SimHarness.start({ opcua: true });
  const valve = h.device('u1');
  valve.setFault({
    kind: 'bad-status',
    status: 'BadTimeout',
    service: true,
    node: 'CommandSeq',
    when: 'after',
    on: 'write',
    count: 1,
  });
  h.submit('ua-service-timeout', { device: 'u1', action: 'open' });
  const r = await h.settled('ua-service-timeout');
  expect(r, h.notes('ua-service-timeout').join('\n')).toMatchObject({ state: 'confirmed' });
  expect(faultLeft(h, 'u1')).toBeUndefined();
  expect(valve.writeLog).toHaveLength(1);
  expect(valve.writesWithSeq(r.seq!)).toBe(1);
});
