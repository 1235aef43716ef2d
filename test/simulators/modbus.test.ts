import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ManualTime, startPlant } from '../../simulators/plant.js';
import type { Plant, PlantInput } from '../../simulators/plant.js';
import { hasCommand, realComponent } from '../helpers/real.js';
import {
  mbRead,
  mbWrite,
  mbpoll,
  modbusEndpoint,
  modbusWire,
  rawModbus,
  registersToTime,
  until,
} from './helpers.js';
import type { ModbusEndpoint } from './helpers.js';
import { BASES, runStateTable, tablePlant } from './state-table.js';

const haveMbpoll = realComponent('mbpoll', hasCommand('mbpoll'), 'apt-get install mbpoll');

const OPEN = 1;
const CLOSE = 2;
const STOP = 3;
const RESET = 4;
const MOVE = 5;

const plantInput: PlantInput = {
  plcs: {
    plc: {
      protocol: 'modbus',
      port: 0,
      unitId: 7,
      clock: { offsetMs: -2500, driftPpm: 200 },
      devices: {
        v1: { profile: 'valve', base: 0, travelMs: 200 },
        v2: { profile: 'valve', base: 100, travelMs: 200 },
        a1: { profile: 'actuator', base: 200, travelMs: 200 },
      },
    },
  },
};

describe.skipIf(!haveMbpoll)('Modbus PLC driven by mbpoll', () => {
  describe('SPEC §3 state table', () => {
    const time = new ManualTime();
    let plant: Plant;
    beforeAll(async () => {
      plant = await startPlant(tablePlant('modbus'), {
        time,
        manualScan: true,
        ephemeralPorts: true,
        control: false,
      });
    });
    afterAll(() => plant.stop());

    it('gives every cell its documented reaction, echo and fault code', async () => {
      const endpoint = modbusEndpoint(plant.plc('table').endpoint);
      await runStateTable(plant, time, modbusWire(endpoint, BASES));
    }, 45_000);
  });

  describe('one plant per test, manual time', () => {
    let time: ManualTime;
    let plant: Plant;
    let ep: ModbusEndpoint;
    /** Advances manual time and runs one scan. */
    const step = (ms = 0): void => {
      time.advance(ms);
      plant.scan();
    };

    beforeEach(async () => {
      time = new ManualTime();
      plant = await startPlant(plantInput, {
        time,
        manualScan: true,
        ephemeralPorts: true,
        control: false,
      });
      ep = modbusEndpoint(plant.plc('plc').endpoint);
    });
    afterEach(() => plant.stop());

    it('binds an ephemeral port on 127.0.0.1 and reports it with the unit id', () => {
      expect(ep.host).toBe('127.0.0.1');
      expect(ep.port).toBeGreaterThan(0);
      expect(ep.unitId).toBe(7);
    });

    it('publishes the status block at base+0..7 with the scan time, most significant word first', async () => {
      step(40);
      const block = await mbRead(ep, 100, 8);
      expect(block.slice(0, 4)).toEqual([0, 0, 0, 0]);
      expect(registersToTime(block.slice(4))).toBe(plant.plc('plc').clock.at(time.now()));
    });

    it('logs each answered read in the read log of the device whose registers it touched', async () => {
      step(40);
      await mbRead(ep, 100, 8);
      const at = plant.plc('plc').clock.at(time.now());
      expect(plant.device('v2').readLog).toEqual([at]);
      expect(plant.device('v1').readLog).toEqual([]);
      // The PLC clock belongs to no device; a refused read is no answered read.
      await mbRead(ep, 900, 4);
      await expect(mbRead(ep, 8, 2)).rejects.toThrow(/Illegal data address/);
      time.advance(5);
      await mbRead(ep, 0, 8);
      const later = plant.plc('plc').clock.at(time.now());
      expect(plant.device('v1').readLog).toEqual([later]);
      expect(plant.device('v2').readLog).toEqual([at]);
      expect(plant.device('a1').readLog).toEqual([]);
      plant.device('v2').resetCounters();
      expect(plant.device('v2').readLog).toEqual([]);
    });

    it('reports the controller clock with offset and drift at 900..903 and follows runtime changes', async () => {
      time.advance(60_000);
      // Drift accumulates from the start: 200 ppm over 60 s is 12 ms.
      expect(registersToTime(await mbRead(ep, 900, 4))).toBe(time.now() - 2500 + 12);
      plant.plc('plc').setClock({ offsetMs: 3_600_000, driftPpm: -1000 });
      expect(registersToTime(await mbRead(ep, 900, 4))).toBe(time.now() + 3_600_000);
      time.advance(10_000);
      expect(registersToTime(await mbRead(ep, 900, 4))).toBe(time.now() + 3_600_000 - 10);
      plant.plc('plc').clearFault('clock');
      expect(registersToTime(await mbRead(ep, 900, 4))).toBe(time.now() - 2500);
    });

    it('answers exception 02 for any register outside the map, reads and writes alike', async () => {
      for (const [address, count] of [
        [8, 1],
        [0, 13], // spans the gap between status and command blocks
        [13, 1],
        [899, 2],
        [903, 2],
        [65535, 1],
      ] as const) {
        const result = await mbpoll(ep, ['-r', String(address), '-c', String(count), ep.host]);
        expect(result.code, `read ${address}+${count}`).not.toBe(0);
        expect(result.stderr).toMatch(/Illegal data address/);
      }
      // The status block and the clock are read-only.
      for (const address of [0, 3, 900]) {
        const result = await mbpoll(ep, ['-r', String(address), ep.host, '1']);
        expect(result.stderr, `write ${address}`).toMatch(/Illegal data address/);
      }
      expect(plant.device('v1').counters.writesReceived).toBe(0);
    });

    it('answers only its own unit id', async () => {
      const result = await mbpoll({ ...ep, unitId: 3 }, ['-r', '0', '-c', '1', ep.host]);
      expect(result.code).not.toBe(0);
      expect(result.stderr).toMatch(/Target device failed to respond/i);
    });

    it('takes an FC16 command at the next scan, echoes its seq, and travels in the configured time', async () => {
      await mbWrite(ep, 10, [OPEN, 0, 41]);
      expect(plant.device('v1').counters).toMatchObject({ writesReceived: 1, commandsTaken: 0 });
      expect(await mbRead(ep, 0, 4)).toEqual([0, 0, 0, 0]);
      step(0);
      expect(await mbRead(ep, 0, 4)).toEqual([1, 0, 0, 41]);
      step(100);
      expect(await mbRead(ep, 0, 4)).toEqual([1, 500, 0, 41]);
      step(100);
      expect(await mbRead(ep, 0, 4)).toEqual([2, 1000, 0, 41]);
      // The command block reads back as written.
      expect(await mbRead(ep, 10, 3)).toEqual([OPEN, 0, 41]);
      expect(plant.device('v1').counters).toMatchObject({
        writesReceived: 1,
        commandsTaken: 1,
        accepted: 1,
        rejected: 0,
      });
      expect(plant.device('v2').counters.writesReceived).toBe(0);
    });

    it('counts a write with the same seq but does not take it', async () => {
      await mbWrite(ep, 10, [OPEN, 0, 9]);
      step(0);
      await mbWrite(ep, 10, [CLOSE, 0, 9]);
      step(50);
      const device = plant.device('v1');
      expect(device.state).toBe('OPENING');
      expect(device.counters).toMatchObject({
        writesReceived: 2,
        commandsTaken: 1,
        ignoredSameSeq: 1,
      });
      expect(device.log.map((e) => [e.seq, e.code, e.outcome])).toEqual([
        [9, OPEN, 'accepted'],
        [9, CLOSE, 'ignored-same-seq'],
      ]);
    });

    it('treats an FC6 write of the seq register as a command write, and of the code register as not', async () => {
      await mbWrite(ep, 10, [STOP]);
      expect(plant.device('v1').counters.writesReceived).toBe(0);
      await mbWrite(ep, 12, [65535]);
      step(0);
      const device = plant.device('v1');
      expect(device.counters).toMatchObject({ writesReceived: 1, commandsTaken: 1, noops: 1 });
      expect((await mbRead(ep, 0, 4))[3]).toBe(65535);
    });

    it('latches 0x88 for an illegal command, ignores it, echoes its seq, clears on the next accepted one', async () => {
      await mbWrite(ep, 10, [OPEN, 0, 1]);
      step(0);
      step(50);
      await mbWrite(ep, 10, [CLOSE, 0, 2]);
      step(0);
      expect(await mbRead(ep, 0, 4)).toEqual([1, 250, 0x88, 2]);
      step(50);
      expect((await mbRead(ep, 0, 4))[0]).toBe(1);
      await mbWrite(ep, 10, [OPEN, 0, 3]); // a no-op while OPENING, but accepted
      step(0);
      expect(await mbRead(ep, 0, 4)).toEqual([1, 500, 0, 3]);
      expect(plant.device('v1').counters).toMatchObject({ accepted: 2, noops: 1, rejected: 1 });
    });

    it('moves an actuator to a setpoint in 0.1 % and refuses an out-of-range one', async () => {
      await mbWrite(ep, 210, [MOVE, 250, 1]);
      step(0);
      step(25);
      expect(await mbRead(ep, 200, 4)).toEqual([1, 125, 0, 1]);
      step(100);
      expect(await mbRead(ep, 200, 4)).toEqual([0, 250, 0, 1]);
      await mbWrite(ep, 210, [MOVE, 1001, 2]);
      step(0);
      expect(await mbRead(ep, 200, 4)).toEqual([0, 250, 0x88, 2]);
    });

    it('stuck travel stops the position and ends in FAULT 0x81 after twice the travel time', async () => {
      plant.device('v1').setFault({ kind: 'stuck-travel' });
      await mbWrite(ep, 10, [OPEN, 0, 1]);
      step(0);
      step(200);
      expect(await mbRead(ep, 0, 3)).toEqual([1, 0, 0]);
      step(201);
      expect(await mbRead(ep, 0, 3)).toEqual([5, 0, 0x81]);
      plant.device('v1').clearFault('stuck-travel');
      await mbWrite(ep, 10, [RESET, 0, 2]);
      step(0);
      expect(await mbRead(ep, 0, 4)).toEqual([0, 0, 0, 2]);
    });

    it('a position sensor fault puts the device in FAULT 0x82; reset falls back while it persists', async () => {
      await mbWrite(ep, 10, [OPEN, 0, 1]);
      step(0);
      step(100);
      plant.device('v1').setFault({ kind: 'position-sensor' });
      step(0); // at once: the valve would travel on until the scan that detects the fault
      expect(await mbRead(ep, 0, 3)).toEqual([5, 500, 0x82]);
      await mbWrite(ep, 10, [RESET, 0, 2]);
      step(0);
      expect(await mbRead(ep, 0, 4)).toEqual([4, 500, 0, 2]);
      step(10);
      expect(await mbRead(ep, 0, 3)).toEqual([5, 500, 0x82]);
      plant.device('v1').clearFault('position-sensor');
      await mbWrite(ep, 10, [RESET, 0, 3]);
      step(0);
      step(10);
      expect(await mbRead(ep, 0, 3)).toEqual([4, 500, 0]);
    });

    it('in LOCAL ignores remote commands but echoes their seq; back in REMOTE settles by position', async () => {
      const device = plant.device('v1');
      await mbWrite(ep, 10, [CLOSE, 0, 1]); // CLOSED + close: accepted as a no-op
      step(0);
      device.setLocal(true);
      step(0);
      expect((await mbRead(ep, 0, 1))[0]).toBe(6);
      await mbWrite(ep, 10, [OPEN, 0, 2]);
      step(100);
      expect(await mbRead(ep, 0, 4)).toEqual([6, 0, 0, 2]);
      expect(device.log.at(-1)?.outcome).toBe('ignored-local');
      device.setLocal(true, 40);
      step(0);
      device.setLocal(false);
      step(0);
      expect(await mbRead(ep, 0, 3)).toEqual([4, 400, 0]);
      device.setLocal(true, 100);
      step(0);
      device.setLocal(false);
      step(0);
      expect((await mbRead(ep, 0, 1))[0]).toBe(2);
      device.setLocal(true, 0);
      step(0);
      device.setLocal(false);
      step(0);
      expect((await mbRead(ep, 0, 1))[0]).toBe(0);
      expect(device.counters).toMatchObject({
        writesReceived: 2,
        commandsTaken: 2,
        ignoredLocal: 1,
      });
    });

    it('a frozen device stops updating its status block, scan time included, until cleared', async () => {
      step(10);
      const before = await mbRead(ep, 0, 8);
      plant.device('v1').setFault({ kind: 'frozen' });
      await mbWrite(ep, 10, [OPEN, 0, 5]);
      step(0);
      step(100);
      expect(await mbRead(ep, 0, 8)).toEqual(before);
      expect(plant.device('v1').state).toBe('OPENING');
      // Another device of the same PLC keeps publishing.
      expect(registersToTime((await mbRead(ep, 100, 8)).slice(4))).toBe(
        plant.plc('plc').clock.at(time.now()),
      );
      plant.device('v1').clearFault('frozen');
      step(0);
      expect(await mbRead(ep, 0, 4)).toEqual([1, 500, 0, 5]);
    });

    it('an exception fault answers the configured code for reads only and wears off after `count`', async () => {
      plant.device('v1').setFault({ kind: 'exception', code: 4, on: 'read', count: 2 });
      const first = await mbpoll(ep, ['-r', '0', '-c', '4', ep.host]);
      expect(first.stderr).toMatch(/Slave device or server failure/);
      // Writes are not affected and other devices are not affected.
      await mbWrite(ep, 10, [OPEN, 0, 1]);
      expect(await mbRead(ep, 100, 1)).toEqual([0]);
      const second = await mbpoll(ep, ['-r', '0', '-c', '4', ep.host]);
      expect(second.stderr).toMatch(/Slave device or server failure/);
      expect(plant.device('v1').faults()).toEqual([]);
      step(0);
      expect((await mbRead(ep, 0, 4))[3]).toBe(1);
    });

    it('an exception on writes refuses the write: nothing applied, nothing counted', async () => {
      plant.device('v1').setFault({ kind: 'exception', code: 6, on: 'write' });
      const result = await mbpoll(ep, ['-r', '10', ep.host, String(OPEN), '0', '1']);
      expect(result.stderr).toMatch(/busy/i);
      expect(plant.device('v1').counters.writesReceived).toBe(0);
      expect(await mbRead(ep, 10, 3)).toEqual([0, 0, 0]);
    });

    it('an exception after the write: applied and counted, the exception answered', async () => {
      // A TCP/RTU gateway whose target took the write but whose answer was lost answers 0x0B.
      plant
        .device('v1')
        .setFault({ kind: 'exception', code: 0x0b, on: 'write', when: 'after', count: 1 });
      const result = await mbpoll(ep, ['-r', '10', ep.host, String(OPEN), '0', '1']);
      expect(result.code).not.toBe(0);
      expect(result.stderr).toMatch(/target/i);
      expect(plant.device('v1').counters.writesReceived).toBe(1);
      step(0);
      expect(await mbRead(ep, 0, 4)).toEqual([1, 0, 0, 1]);
      expect(plant.device('v1').faults()).toEqual([]);
    });

    it('an exception after the write applies nothing for a request addressed to another unit id', async () => {
      // 'after' applies the request to this PLC; one for unit 3 used to be applied to unit
      // 1's registers all the same: a command write counted that no master sent to it.
      plant.device('v1').setFault({ kind: 'exception', code: 0x0b, on: 'write', when: 'after' });
      const result = await mbpoll({ ...ep, unitId: 3 }, [
        '-r',
        '10',
        ep.host,
        String(OPEN),
        '0',
        '1',
      ]);
      expect(result.code).not.toBe(0);
      expect(plant.device('v1').counters.writesReceived).toBe(0);
      expect(plant.device('v1').writers).toEqual([]);
      step(0);
      expect(await mbRead(ep, 0, 4)).toEqual([0, 0, 0, 0]);
      expect(await mbRead(ep, 10, 3)).toEqual([0, 0, 0]);
    });

    it('latency holds the reply back; the write is applied on arrival', async () => {
      plant.device('v1').setFault({ kind: 'latency', ms: 300 });
      const read = await mbpoll(ep, ['-r', '0', '-c', '1', ep.host], 2);
      expect(read.code).toBe(0);
      expect(read.ms).toBeGreaterThanOrEqual(300);
      // v2 is not delayed by v1's latency.
      const other = await mbpoll(ep, ['-r', '100', '-c', '1', ep.host], 2);
      expect(other.ms).toBeLessThan(300);
      // A client that gives up early still had its write applied and counted.
      const write = await mbpoll(ep, ['-r', '10', ep.host, String(OPEN), '0', '1'], 0.1);
      expect(write.code).not.toBe(0);
      expect(plant.device('v1').counters.writesReceived).toBe(1);
      plant.device('v1').clearFault('latency');
      expect((await mbpoll(ep, ['-r', '0', '-c', '1', ep.host], 2)).ms).toBeLessThan(300);
    });

    it('a dropped reply still applies and counts the write', async () => {
      plant.device('v1').setFault({ kind: 'drop', count: 1 });
      const write = await mbpoll(ep, ['-r', '10', ep.host, String(OPEN), '0', '1'], 0.3);
      expect(write.code).not.toBe(0);
      expect(write.stderr).toMatch(/timed out/i);
      expect(plant.device('v1').counters.writesReceived).toBe(1);
      step(0);
      // The drop fault was for one request only.
      expect(await mbRead(ep, 0, 4)).toEqual([1, 0, 0, 1]);
      expect(plant.device('v1').faults()).toEqual([]);
    });

    it('a reset before processing drops the link and applies nothing', async () => {
      plant.device('v1').setFault({ kind: 'reset', when: 'before', count: 1 });
      const write = await mbpoll(ep, ['-r', '10', ep.host, String(OPEN), '0', '1']);
      expect(write.stderr).toMatch(/Connection reset by peer|Connection closed|Broken pipe/i);
      expect(plant.device('v1').counters.writesReceived).toBe(0);
      expect(await mbRead(ep, 10, 3)).toEqual([0, 0, 0]);
      expect(plant.device('v1').faults()).toEqual([]);
    });

    it('a reset after processing drops the link but the write is applied and counted', async () => {
      plant.device('v1').setFault({ kind: 'reset', when: 'after', on: 'write' });
      const write = await mbpoll(ep, ['-r', '10', ep.host, String(OPEN), '0', '1']);
      expect(write.code).not.toBe(0);
      expect(plant.device('v1').counters.writesReceived).toBe(1);
      // Reads are not affected (on: write); the fault stays until cleared.
      expect(await mbRead(ep, 10, 3)).toEqual([OPEN, 0, 1]);
      expect(plant.device('v1').faults()).toMatchObject([
        { kind: 'reset', when: 'after', on: 'write' },
      ]);
    });

    it('a PLC-level fault hits every device and the clock registers', async () => {
      plant.plc('plc').setFault({ kind: 'exception', code: 4 });
      for (const address of [0, 100, 200, 900]) {
        const result = await mbpoll(ep, ['-r', String(address), '-c', '1', ep.host]);
        expect(result.stderr, `register ${address}`).toMatch(/Slave device or server failure/);
      }
      plant.plc('plc').clearFault('exception');
      expect(await mbRead(ep, 0, 1)).toEqual([0]);
    });

    it('hold: writes are counted on receipt and wait in order; the block keeps fresh scan times; `ms` ends it', async () => {
      const device = plant.device('v1');
      device.setFault({ kind: 'hold', ms: 100 });
      await mbWrite(ep, 10, [OPEN, 0, 1]);
      await mbWrite(ep, 10, [STOP, 0, 2]);
      await mbWrite(ep, 10, [OPEN, 0, 3]);
      expect(device.counters).toMatchObject({ writesReceived: 3, commandsTaken: 0 });
      step(50);
      let block = await mbRead(ep, 0, 8);
      expect(block.slice(0, 4)).toEqual([0, 0, 0, 0]);
      expect(registersToTime(block.slice(4))).toBe(plant.plc('plc').clock.at(time.now()));
      expect(device.pendingWrites).toBe(3);
      expect(device.faults()).toEqual([{ kind: 'hold', ms: 100, remainingMs: 50 }]);
      // 100 ms after it was set the hold is over: this scan takes all three, in arrival order.
      step(50);
      expect(device.faults()).toEqual([]);
      expect(device.log.map((e) => [e.seq, e.outcome])).toEqual([
        [1, 'accepted'],
        [2, 'accepted'],
        [3, 'accepted'],
      ]);
      block = await mbRead(ep, 0, 4);
      expect(block).toEqual([1, 0, 0, 3]);
      // Other devices of the PLC were not held.
      await mbWrite(ep, 110, [OPEN, 0, 9]);
      step(0);
      expect(plant.device('v2').seqEcho).toBe(9);
    });

    it('a PLC-wide hold stays until cleared and holds every device', async () => {
      plant.plc('plc').setFault({ kind: 'hold' });
      await mbWrite(ep, 10, [OPEN, 0, 1]);
      await mbWrite(ep, 110, [OPEN, 0, 1]);
      step(10_000);
      expect([plant.device('v1').seqEcho, plant.device('v2').seqEcho]).toEqual([0, 0]);
      plant.plc('plc').clearFault('hold');
      step(0);
      expect([plant.device('v1').seqEcho, plant.device('v2').seqEcho]).toEqual([1, 1]);
    });

    it('latency before: a write held on the link lands after the client gave up and left', async () => {
      const device = plant.device('v1');
      device.setFault({ kind: 'latency', ms: 400, when: 'before', on: 'write' });
      const write = await mbpoll(ep, ['-r', '10', ep.host, String(OPEN), '0', '5'], 0.1);
      expect(write.code).not.toBe(0);
      expect(device.counters.writesReceived).toBe(0);
      expect(await mbRead(ep, 10, 3)).toEqual([0, 0, 0]);
      await until(() => device.counters.writesReceived === 1, { attempts: 100, everyMs: 10 });
      expect(device.writesWithSeq(5)).toBe(1);
      step(0);
      expect((await mbRead(ep, 0, 4))[3]).toBe(5);
    });

    it('latency before: requests behind it on the connection wait in order; other connections do not', async () => {
      plant.device('v1').setFault({ kind: 'latency', ms: 500, when: 'before', on: 'write' });
      const raw = await rawModbus(ep);
      try {
        const started = performance.now();
        const write = raw.write(10, [OPEN, 0, 1]);
        const read = raw.read(10, 3); // not faulted itself, but behind the write
        const other = await mbRead(ep, 100, 1);
        expect(other).toEqual([0]);
        expect(performance.now() - started).toBeLessThan(450);
        const [written, readBack] = await Promise.all([write, read]);
        expect(written.at - started).toBeGreaterThanOrEqual(490);
        expect(readBack.at).toBeGreaterThanOrEqual(written.at);
        // Served after the write was applied.
        expect(readBack.registers).toEqual([OPEN, 0, 1]);
      } finally {
        raw.socket.destroy();
      }
    });

    it('latency before: the held write is applied even though the client destroyed the connection', async () => {
      const device = plant.device('v1');
      device.setFault({ kind: 'latency', ms: 200, when: 'before' });
      const raw = await rawModbus(ep);
      const reply = raw.write(10, [OPEN, 0, 77]).catch((err: unknown) => err);
      await new Promise((resolve) => setTimeout(resolve, 20));
      raw.socket.destroy();
      expect(await reply).toBeInstanceOf(Error);
      expect(device.counters.writesReceived).toBe(0);
      await until(() => device.counters.writesReceived === 1, { attempts: 100, everyMs: 10 });
      expect(device.writeLog).toMatchObject([{ seq: 77, code: OPEN, outcome: null }]);
    });

    it('stall: the write it caught waits on the link until the fault is cleared; with count 1, later ones pass', async () => {
      const device = plant.device('v1');
      device.setFault({ kind: 'stall', on: 'write', count: 1 });
      const held = await rawModbus(ep);
      const other = await rawModbus(ep);
      try {
        const caught = held.write(10, [OPEN, 0, 8]);
        await until(() => device.writers.length === 1);
        // It caught its one: a write sent after it, on another connection, passes and is
        // applied while the caught one waits.
        expect((await other.write(10, [STOP, 0, 9])).exception).toBeUndefined();
        expect(device.writeLog.map((e) => e.seq)).toEqual([9]);
        expect(device.faults()).toEqual([{ kind: 'stall', on: 'write', count: 1, remaining: 0 }]);
        // Cleared: the caught write is applied, then answered.
        expect(device.clearFault('stall')).toBe(true);
        expect((await caught).exception).toBeUndefined();
        expect(device.writeLog.map((e) => e.seq)).toEqual([9, 8]);
      } finally {
        held.socket.destroy();
        other.socket.destroy();
      }
    });

    it('stall: a plant that stops releases what it holds without applying it', async () => {
      const device = plant.device('v1');
      device.setFault({ kind: 'stall', on: 'write' });
      const raw = await rawModbus(ep);
      const reply = raw.write(10, [OPEN, 0, 6]).catch((err: unknown) => err);
      await until(() => device.writers.length === 1);
      // Never cleared: stop() must not wait for it, and the link dies with what was on it.
      await plant.stop();
      expect(await reply).toBeInstanceOf(Error);
      expect(device.counters.writesReceived).toBe(0);
    });

    it('power cycle: connections reset, refused while off, volatile memory lost, clock back wrong', async () => {
      const plc = plant.plc('plc');
      const device = plant.device('v1');
      await mbWrite(ep, 10, [OPEN, 0, 40]);
      step(0);
      step(100); // OPENING at 50 %
      await mbWrite(ep, 10, [CLOSE, 0, 41]); // illegal while OPENING: 0x88
      step(0);
      device.setFault({ kind: 'hold' });
      await mbWrite(ep, 10, [STOP, 0, 42]); // waits for a scan it will never get
      step(0);
      expect(await mbRead(ep, 0, 4)).toEqual([1, 500, 0x88, 41]);
      const raw = await rawModbus(ep);

      const result = plc.powerCycle({ offMs: 1000, clockOffsetMs: -15_000 });
      expect(result).toMatchObject({ powerCycles: 1, offMs: 1000, powerUpAt: time.now() + 1000 });
      expect(await raw.closed).toBeDefined();
      expect(plc.powered).toBe(false);
      const refused = await mbpoll(ep, ['-r', '0', '-c', '1', ep.host]);
      expect(refused.code).not.toBe(0);

      time.advance(1000);
      expect(plc.powered).toBe(true);
      // Before the first scan the image already shows the power-up state, as of power-up.
      const block = await mbRead(ep, 0, 8);
      expect(block.slice(0, 4)).toEqual([4, 500, 0, 0]);
      expect(registersToTime(block.slice(4))).toBe(time.now() - 15_000);
      expect(registersToTime(await mbRead(ep, 900, 4))).toBe(time.now() - 15_000);
      expect(await mbRead(ep, 10, 3)).toEqual([0, 0, 0]);
      expect(plc.faults()).toEqual([{ kind: 'clock', offsetMs: -15_000, driftPpm: 200 }]);
      // Travel stopped; faults, counters and logs survived.
      device.clearFault('hold');
      step(500);
      expect([device.state, device.position, device.pendingWrites]).toEqual(['STOPPED', 50, 0]);
      expect(device.counters).toMatchObject({ writesReceived: 3, commandsTaken: 2, rejected: 1 });
      expect(device.writeLog.map((e) => [e.seq, e.outcome])).toEqual([
        [40, 'accepted'],
        [41, 'rejected-0x88'],
        [42, 'power-cycle'],
      ]);
    });

    it('power cycle: scans stop while off and a request held on the link dies with the link', async () => {
      const plc = plant.plc('plc');
      const device = plant.device('v1');
      device.setFault({ kind: 'latency', ms: 150, when: 'before' });
      const raw = await rawModbus(ep);
      const reply = raw.write(10, [OPEN, 0, 3]).catch((err: unknown) => err);
      // The PLC notes a write's connection when the write comes in, before the latency holds
      // it: from then on it is on the link.
      await until(() => device.writers.length === 1);
      step(10);
      const { powerUpControllerTime } = plc.powerCycle({ offMs: 50 });
      expect(await reply).toBeInstanceOf(Error);
      step(40);
      // Off: no scan; the image is the one the power-up will show.
      expect(device.published.scanTime).toBe(powerUpControllerTime);
      step(10);
      expect(device.published.scanTime).toBe(plc.clock.at(time.now()));
      expect(plc.powerCycles).toBe(1);
      // The held write's latency ends 150 ms after it came in. A marker write on a new
      // connection, sent after it and held as long, reaches the PLC after it would have: the
      // write log then holds the marker alone.
      const after = await rawModbus(ep);
      try {
        expect((await after.write(10, [STOP, 0, 4])).exception).toBeUndefined();
      } finally {
        after.socket.destroy();
      }
      expect(device.writeLog.map((e) => e.seq)).toEqual([4]);
      expect(device.counters.writesReceived).toBe(1);
    });

    it('the write log counts every write of a seq, retries and duplicates included', async () => {
      const device = plant.device('v1');
      await mbWrite(ep, 10, [OPEN, 0, 12]);
      await mbWrite(ep, 10, [OPEN, 0, 12]);
      step(0);
      await mbWrite(ep, 10, [STOP, 0, 13]);
      step(0);
      expect([
        device.writesWithSeq(12),
        device.writesWithSeq(13),
        device.writesWithSeq(14),
      ]).toEqual([2, 1, 0]);
      expect(device.writeLog.map((e) => [e.seq, e.code, e.outcome])).toEqual([
        [12, OPEN, 'accepted'],
        [12, OPEN, 'ignored-same-seq'],
        [13, STOP, 'accepted'],
      ]);
      const start = plant.plc('plc').clock.at(time.now());
      expect(device.writeLog.every((e) => e.receivedAt === start && e.settledAt === start)).toBe(
        true,
      );
      device.resetCounters();
      expect([device.writeLog, device.writesWithSeq(12)]).toEqual([[], 0]);
    });
  });

  describe('real scan cycle', () => {
    let plant: Plant;
    afterEach(() => plant.stop());

    it('scans on its own and travels a full stroke in about travelMs', async () => {
      plant = await startPlant(
        {
          plcs: {
            plc: {
              protocol: 'modbus',
              port: 0,
              scanMs: 5,
              devices: { v: { profile: 'valve', base: 0, travelMs: 150 } },
            },
          },
        },
        { ephemeralPorts: true, control: false },
      );
      const ep = modbusEndpoint(plant.plc('plc').endpoint);
      const device = plant.device('v');
      await mbWrite(ep, 10, [OPEN, 0, 1]);
      await until(() => device.state === 'OPENING', { attempts: 100, everyMs: 2 });
      const started = performance.now();
      await until(() => device.state === 'OPEN', { attempts: 500, everyMs: 2 });
      const elapsed = performance.now() - started;
      expect(elapsed).toBeGreaterThanOrEqual(140);
      expect(elapsed).toBeLessThan(600);
      const block = await mbRead(ep, 0, 8);
      expect(block.slice(0, 4)).toEqual([2, 1000, 0, 1]);
      // The scan time in the block is recent controller time.
      expect(Math.abs(registersToTime(block.slice(4)) - Date.now())).toBeLessThan(1000);
    });
  });
});
