/**
 * The vendor register layouts of the Modbus PLC (`limit-switch`, `float`), the standard one
 * next to them, and the controller's `refusal` option, over real sockets with hand-framed
 * requests. Expected values are written out from the README's register tables (floats and
 * times encoded here with Buffer / BigInt, not with the simulator's helpers).
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { PlantFileError } from '../../simulators/errors.js';
import { packageRoot } from '../../simulators/package-root.js';
import {
  ManualTime,
  SimPlc,
  loadPlantFile,
  parsePlant,
  startPlant,
} from '../../simulators/plant.js';
import type { Plant, PlantInput, SimDevice } from '../../simulators/plant.js';
import { pino } from 'pino';
import { join } from 'node:path';
import { api, modbusEndpoint, rawModbus, registersToTime } from './helpers.js';
import type { RawModbus } from './helpers.js';

const LSV = 100;
const FCV = 200;
const FCV_KEEP = 300;
const STD = 0;

/** Limit-switch status word bits (README). */
const OPEN_LIMIT = 1 << 0;
const CLOSED_LIMIT = 1 << 1;
const FAULT_BIT = 1 << 2;
const RUN_OPEN = 1 << 3;
const RUN_CLOSE = 1 << 4;
const LOCAL_BIT = 1 << 5;

/** Limit-switch command codes. */
const LS = { open: 1, close: 2, stop: 3, reset: 4 } as const;
/** Float layout vendor codes. */
const FL = { move: 1, stop: 2, reset: 3 } as const;
const FL_STATE = { IDLE: 1, MOVING: 2, FAULT: 3, LOCAL: 4 } as const;

const ILLEGAL_FUNCTION = 0x01;
const ILLEGAL_ADDRESS = 0x02;
const ILLEGAL_VALUE = 0x03;

const plantInput: PlantInput = {
  plcs: {
    plc: {
      protocol: 'modbus',
      port: 0,
      clock: { offsetMs: 1234, driftPpm: 0 },
      devices: {
        std: { profile: 'valve', base: STD, travelMs: 1000, refusal: 'fault' },
        lsv: { profile: 'valve', layout: 'limit-switch', base: LSV, travelMs: 1000 },
        fcv: {
          profile: 'actuator',
          layout: 'float',
          base: FCV,
          travelMs: 1500,
          refusal: 'fault',
        },
        'fcv-keep': { profile: 'actuator', layout: 'float', base: FCV_KEEP, travelMs: 1500 },
      },
    },
  },
};

/** A float32 as two registers, low word first ("CDAB"). */
function floatWords(value: number): [number, number] {
  const bytes = Buffer.alloc(4);
  bytes.writeFloatBE(value, 0);
  return [bytes.readUInt16BE(2), bytes.readUInt16BE(0)];
}

/** Two registers, low word first, as a float32. */
function wordsFloat(low: number, high: number): number {
  const bytes = Buffer.alloc(4);
  bytes.writeUInt16BE(high, 0);
  bytes.writeUInt16BE(low, 2);
  return bytes.readFloatBE(0);
}

function readPdu(fc: number, address: number, quantity: number): Buffer {
  const pdu = Buffer.alloc(5);
  pdu.writeUInt8(fc, 0);
  pdu.writeUInt16BE(address, 1);
  pdu.writeUInt16BE(quantity, 3);
  return pdu;
}

function writeSinglePdu(address: number, value: number): Buffer {
  const pdu = Buffer.alloc(5);
  pdu.writeUInt8(0x06, 0);
  pdu.writeUInt16BE(address, 1);
  pdu.writeUInt16BE(value, 3);
  return pdu;
}

describe('Modbus register layouts', () => {
  let time: ManualTime;
  let plant: Plant;
  let mb: RawModbus;
  let lsv: SimDevice;
  let fcv: SimDevice;
  const step = (ms = 0): void => {
    time.advance(ms);
    plant.scan();
  };

  /** FC3 that must succeed. */
  const holding = async (address: number, count = 1): Promise<number[]> => {
    const reply = await mb.read(address, count);
    expect(reply.exception, `read ${address}+${count}`).toBeUndefined();
    return reply.registers;
  };
  /** FC16 that must succeed. */
  const write = async (address: number, values: readonly number[]): Promise<void> => {
    const reply = await mb.write(address, values);
    expect(reply.exception, `write ${address}`).toBeUndefined();
  };
  /** FC2 that must succeed: the inputs as booleans, from the packed reply. */
  const inputs = async (address: number, count: number): Promise<boolean[]> => {
    const reply = await mb.request(readPdu(0x02, address, count));
    expect(reply.exception, `FC2 ${address}+${count}`).toBeUndefined();
    expect(reply.pdu.readUInt8(1)).toBe(Math.ceil(count / 8));
    return Array.from(
      { length: count },
      (_, i) => ((reply.pdu.readUInt8(2 + (i >> 3)) >> (i & 7)) & 1) === 1,
    );
  };
  const statusWord = async (): Promise<number> => (await holding(LSV))[0] ?? -1;
  /** The status word and the six inputs must say the same. */
  const expectWord = async (word: number, why: string): Promise<void> => {
    expect(await statusWord(), why).toBe(word);
    const bits = Array.from({ length: 6 }, (_, i) => ((word >> i) & 1) === 1);
    expect(await inputs(LSV, 6), `${why}: inputs`).toEqual(bits);
  };
  /** B+10..B+14 of a float device: state, position, fault, seq echo. */
  const floatStatus = async (base = FCV) => {
    const [state, low, high, fault, echo] = await holding(base + 10, 5);
    return {
      state,
      position: wordsFloat(low ?? 0, high ?? 0),
      fault,
      echo,
    };
  };
  const floatCommand = (base: number, code: number, setpoint: number, seq: number) =>
    write(base, [code, ...floatWords(setpoint), seq]);

  beforeEach(async () => {
    time = new ManualTime();
    plant = await startPlant(plantInput, {
      time,
      manualScan: true,
      ephemeralPorts: true,
      control: false,
    });
    mb = await rawModbus(modbusEndpoint(plant.plc('plc').endpoint));
    lsv = plant.device('lsv');
    fcv = plant.device('fcv');
  });
  afterEach(async () => {
    mb.socket.destroy();
    await plant.stop();
  });

  describe('limit-switch', () => {
    it('shows each state in the status word and the same bits as discrete inputs', async () => {
      await expectWord(CLOSED_LIMIT, 'CLOSED at 0 %');
      await write(LSV + 10, [LS.open]);
      step();
      await expectWord(CLOSED_LIMIT | RUN_OPEN, 'OPENING, still on the closed switch');
      step(400);
      await expectWord(RUN_OPEN, 'OPENING mid-travel');
      await write(LSV + 10, [LS.stop]);
      step();
      expect(lsv.state).toBe('STOPPED');
      await expectWord(0, 'STOPPED mid-travel');
      await write(LSV + 10, [LS.open]);
      step();
      step(600);
      expect([lsv.state, lsv.position]).toEqual(['OPEN', 100]);
      await expectWord(OPEN_LIMIT, 'OPEN');
      await write(LSV + 10, [LS.close]);
      step();
      await expectWord(OPEN_LIMIT | RUN_CLOSE, 'CLOSING, still on the open switch');
      step(500);
      await expectWord(RUN_CLOSE, 'CLOSING mid-travel');
      lsv.setLocal(true);
      step();
      await expectWord(LOCAL_BIT, 'LOCAL mid-travel');
      lsv.setLocal(true, 0);
      step();
      await expectWord(LOCAL_BIT | CLOSED_LIMIT, 'LOCAL at 0 %');
      lsv.setLocal(false);
      step();
      expect(lsv.state).toBe('CLOSED');
      lsv.setFault({ kind: 'position-sensor' });
      step();
      expect(lsv.state).toBe('FAULT');
      await expectWord(CLOSED_LIMIT | FAULT_BIT, 'FAULT at 0 %');
    });

    it('shows FAULT without a limit switch when stuck mid-travel, and FAULT at 100 % with the open one', async () => {
      await write(LSV + 10, [LS.open]);
      step();
      step(300);
      lsv.setFault({ kind: 'stuck-travel' });
      step(2000);
      expect([lsv.state, lsv.faultCode]).toEqual(['FAULT', 0x81]);
      await expectWord(FAULT_BIT, 'FAULT mid-travel');
      lsv.clearFaults();
      await write(LSV + 10, [LS.reset]);
      step();
      await write(LSV + 10, [LS.open]);
      step();
      step(1000);
      lsv.setFault({ kind: 'position-sensor' });
      step();
      await expectWord(OPEN_LIMIT | FAULT_BIT, 'FAULT at 100 %');
    });

    it('shows the drive-trip fault on the FAULT bit in any state, LOCAL included, and leaves the program alone', async () => {
      lsv.setFault({ kind: 'drive-trip' });
      await expectWord(CLOSED_LIMIT | FAULT_BIT, 'CLOSED at 0 %, drive tripped');
      expect(lsv.state).toBe('CLOSED');
      lsv.setLocal(true);
      step();
      await expectWord(CLOSED_LIMIT | FAULT_BIT | LOCAL_BIT, 'LOCAL at 0 %, drive tripped');
      expect([lsv.state, lsv.faultCode]).toEqual(['LOCAL', 0]);
      lsv.clearFault('drive-trip');
      await expectWord(CLOSED_LIMIT | LOCAL_BIT, 'LOCAL at 0 %, trip cleared');
      // Only a limit-switch valve has a drive fault output in its word.
      expect(() => plant.device('std').setFault({ kind: 'drive-trip' })).toThrow(
        expect.objectContaining({ code: 'FAULT_NOT_APPLICABLE' }),
      );
    });

    it('reads the inputs packed from bit 0 of the first byte, across device boundaries only where mapped', async () => {
      // One input read on its own.
      expect(await inputs(LSV + 1, 1)).toEqual([true]);
      expect(await inputs(LSV, 1)).toEqual([false]);
      for (const [address, count] of [
        [LSV, 7], // B+6 is not an input
        [LSV + 6, 1],
        [LSV + 10, 1],
        [STD, 1], // the standard layout has no discrete inputs
        [FCV, 1],
        [65535, 1],
      ] as const) {
        const reply = await mb.request(readPdu(0x02, address, count));
        expect(reply.exception, `FC2 ${address}+${count}`).toBe(ILLEGAL_ADDRESS);
      }
    });

    it('logs an answered FC2 read of its inputs in the read log, as an FC3 read of its word', async () => {
      // The read log is what tests hold a readback against (taken after the write, I2); a
      // master reading this valve by its inputs alone used to leave it empty.
      step(5);
      const before = lsv.readLog.length;
      await inputs(LSV, 6);
      expect(lsv.readLog.slice(before)).toEqual([plant.plc('plc').controllerTime()]);
      step(5);
      await statusWord();
      expect(lsv.readLog.slice(before)).toHaveLength(2);
      // A refused read is no readback.
      expect((await mb.request(readPdu(0x02, LSV, 7))).exception).toBe(ILLEGAL_ADDRESS);
      expect(lsv.readLog.slice(before)).toHaveLength(2);
    });

    it('takes every non-zero write of the command register as one command, seq 0, and clears it at the scan', async () => {
      await write(LSV + 10, [LS.open]);
      expect(await holding(LSV + 10)).toEqual([LS.open]);
      expect(lsv.counters.writesReceived).toBe(1);
      expect(lsv.writeLog).toMatchObject([{ seq: 0, code: LS.open, outcome: null }]);
      step();
      expect(await holding(LSV + 10)).toEqual([0]);
      expect(lsv.state).toBe('OPENING');
      expect(lsv.writeLog).toMatchObject([{ seq: 0, code: LS.open, outcome: 'accepted' }]);

      // The same value twice more (FC6 and FC16): two more commands, no "same seq" rule.
      const single = await mb.request(writeSinglePdu(LSV + 10, LS.open));
      expect(single.exception).toBeUndefined();
      expect([...single.pdu]).toEqual([0x06, 0, LSV + 10, 0, LS.open]);
      await write(LSV + 10, [LS.open]);
      expect(lsv.counters.writesReceived).toBe(3);
      expect(await holding(LSV + 10)).toEqual([LS.open]);
      step();
      expect(await holding(LSV + 10)).toEqual([0]);
      expect(lsv.counters).toMatchObject({
        writesReceived: 3,
        commandsTaken: 3,
        accepted: 3,
        noops: 2,
        ignoredSameSeq: 0,
      });
      expect(lsv.writesWithSeq(0)).toBe(3);
      expect(lsv.writeLog.map((w) => w.outcome)).toEqual(['accepted', 'noop', 'noop']);
    });

    it('accepts 0 as no command: not counted, not logged, a waiting command keeps showing', async () => {
      await write(LSV + 10, [0]);
      expect(lsv.counters.writesReceived).toBe(0);
      expect(lsv.writeLog).toEqual([]);
      expect(await holding(LSV + 10)).toEqual([0]);
      await write(LSV + 10, [LS.open]);
      const single = await mb.request(writeSinglePdu(LSV + 10, 0));
      expect(single.exception).toBeUndefined();
      expect(await holding(LSV + 10)).toEqual([LS.open]);
      expect(lsv.counters.writesReceived).toBe(1);
      step();
      expect(lsv.state).toBe('OPENING');
      expect(await holding(LSV + 10)).toEqual([0]);
    });

    it('keeps the command showing while the handshake is held, until the scan that takes it', async () => {
      lsv.setFault({ kind: 'hold' });
      await write(LSV + 10, [LS.open]);
      step(10);
      step(10);
      expect(await holding(LSV + 10)).toEqual([LS.open]);
      expect(lsv.pendingWrites).toBe(1);
      lsv.clearFault('hold');
      step(10);
      expect(await holding(LSV + 10)).toEqual([0]);
      expect(lsv.state).toBe('OPENING');
    });

    it('refuses an undefined code with 0x88 (state kept: refusal keep) and logs the code as written', async () => {
      await write(LSV + 10, [5]);
      step();
      expect([lsv.state, lsv.faultCode]).toEqual(['CLOSED', 0x88]);
      expect(lsv.writeLog).toMatchObject([{ seq: 0, code: 5, outcome: 'rejected-0x88' }]);
      await expectWord(CLOSED_LIMIT, 'a refusal kept CLOSED');
    });

    it('answers exception 02 outside B+0 and B+10, for writes to B+0, and for FC4', async () => {
      for (const [address, count] of [
        [LSV + 1, 1],
        [LSV, 2],
        [LSV + 9, 1],
        [LSV + 9, 2],
        [LSV, 11],
        [LSV + 11, 1],
      ] as const) {
        expect((await mb.read(address, count)).exception, `read ${address}+${count}`).toBe(
          ILLEGAL_ADDRESS,
        );
      }
      for (const [address, values] of [
        [LSV, [1]],
        [LSV + 1, [1]],
        [LSV + 9, [0, 1]],
        [LSV + 10, [1, 0]],
      ] as const) {
        expect((await mb.write(address, values)).exception, `write ${address}`).toBe(
          ILLEGAL_ADDRESS,
        );
      }
      expect((await mb.request(writeSinglePdu(LSV, 1))).exception).toBe(ILLEGAL_ADDRESS);
      expect((await mb.request(readPdu(0x04, LSV, 1))).exception).toBe(ILLEGAL_ADDRESS);
      // Nothing of the refused writes reached the controller.
      expect(lsv.counters.writesReceived).toBe(0);
      expect(await holding(LSV + 10)).toEqual([0]);
    });
  });

  describe('float', () => {
    it('takes a move to 37.25 % with the setpoint low word first and publishes the position the same way', async () => {
      // 37.25 = 0x42150000: the low word (0x0000) at B+1, the high word (0x4215) at B+2.
      await write(FCV, [FL.move, 0x0000, 0x4215, 9]);
      expect(await holding(FCV, 4)).toEqual([FL.move, 0x0000, 0x4215, 9]);
      step();
      expect(await floatStatus()).toEqual({
        state: FL_STATE.MOVING,
        position: 0,
        fault: 0,
        echo: 9,
      });
      step(100);
      // 100 ms of a 1500 ms stroke: 6.666… %, published as a float32, not rounded to 0.1 %.
      const mid = await floatStatus();
      expect(mid.position).toBe(Math.fround(100 / 15));
      expect(fcv.published.position).toBe(6.7);
      step(500);
      expect(await floatStatus()).toEqual({
        state: FL_STATE.IDLE,
        position: 37.25,
        fault: 0,
        echo: 9,
      });
      expect(await holding(FCV + 11, 2)).toEqual([0x0000, 0x4215]);
      expect(fcv.writeLog).toMatchObject([{ seq: 9, code: FL.move, setpoint: 37.25 }]);
    });

    it('uses the vendor state and command codes, not the profile ones', async () => {
      expect((await floatStatus()).state).toBe(FL_STATE.IDLE);
      await floatCommand(FCV, FL.move, 80, 1);
      step();
      step(300);
      expect((await floatStatus()).state).toBe(FL_STATE.MOVING);
      await floatCommand(FCV, FL.stop, 0, 2);
      step();
      expect([fcv.state, (await floatStatus()).state]).toEqual(['IDLE', FL_STATE.IDLE]);
      expect((await floatStatus()).position).toBe(20);
      fcv.setFault({ kind: 'position-sensor' });
      step();
      expect(await floatStatus()).toMatchObject({ state: FL_STATE.FAULT, fault: 0x82 });
      fcv.clearFaults();
      await floatCommand(FCV, FL.reset, 0, 3);
      step();
      expect(await floatStatus()).toMatchObject({ state: FL_STATE.IDLE, fault: 0, echo: 3 });
      fcv.setLocal(true);
      step();
      expect((await floatStatus()).state).toBe(FL_STATE.LOCAL);
      fcv.setLocal(false);
      step();
      // The profile's codes mean nothing here: 5 (profile move) and 4 (profile reset) are illegal.
      await floatCommand(FCV_KEEP, 5, 50, 1);
      step();
      expect(await floatStatus(FCV_KEEP)).toMatchObject({
        state: FL_STATE.IDLE,
        fault: 0x88,
        echo: 1,
      });
      await floatCommand(FCV_KEEP, FL.stop, 0, 2); // accepted no-op: clears the latch
      step();
      await floatCommand(FCV_KEEP, 4, 0, 3);
      step();
      expect(await floatStatus(FCV_KEEP)).toMatchObject({ fault: 0x88, echo: 3 });
    });

    it('hands over the block when the seq is written, and ignores a repeated seq', async () => {
      await write(FCV, [FL.move, ...floatWords(50)]);
      step();
      expect(fcv.counters.writesReceived).toBe(0);
      expect(fcv.state).toBe('IDLE');
      await write(FCV + 3, [4]);
      expect(fcv.counters.writesReceived).toBe(1);
      step();
      expect(fcv.state).toBe('MOVING');
      await write(FCV + 3, [4]);
      step();
      expect(fcv.writeLog.map((w) => [w.seq, w.outcome])).toEqual([
        [4, 'accepted'],
        [4, 'ignored-same-seq'],
      ]);
    });

    it('reads 0 at B+15, the scan time at B+16..19 and the live clock at B+20..23 (as 900..903)', async () => {
      step(40);
      const scanTime = plant.plc('plc').clock.at(time.now());
      expect(scanTime).toBe(time.now() + 1234);
      time.advance(25);
      const block = await holding(FCV + 10, 14);
      expect(block[5]).toBe(0);
      expect(registersToTime(block.slice(6, 10))).toBe(scanTime);
      expect(registersToTime(block.slice(10, 14))).toBe(time.now() + 1234);
      expect(registersToTime(await holding(900, 4))).toBe(time.now() + 1234);
      // The time is most significant word first: the top word of an epoch in ms is 0.
      expect(block[6]).toBe(0);
      plant.plc('plc').setClock({ offsetMs: -60_000, driftPpm: 0 });
      expect(registersToTime(await holding(FCV + 20, 4))).toBe(time.now() - 60_000);
      expect(registersToTime(await holding(FCV + 16, 4))).toBe(scanTime);
    });

    it('answers exception 02 for B+4..B+9, writes to the status block, beyond B+23, FC4 and FC2', async () => {
      for (const [address, count] of [
        [FCV + 4, 1],
        [FCV + 9, 1],
        [FCV, 5],
        [FCV, 24],
        [FCV + 9, 2],
        [FCV + 23, 2],
        [FCV + 24, 1],
      ] as const) {
        expect((await mb.read(address, count)).exception, `read ${address}+${count}`).toBe(
          ILLEGAL_ADDRESS,
        );
      }
      for (const [address, values] of [
        [FCV + 3, [1, 0]],
        [FCV + 4, [0]],
        [FCV + 10, [1]],
        [FCV + 11, [0, 0]],
        [FCV + 15, [0]],
        [FCV + 20, [0, 0, 0, 0]],
      ] as const) {
        expect((await mb.write(address, values)).exception, `write ${address}`).toBe(
          ILLEGAL_ADDRESS,
        );
      }
      expect((await mb.request(readPdu(0x04, FCV + 10, 1))).exception).toBe(ILLEGAL_ADDRESS);
      expect((await mb.request(readPdu(0x02, FCV, 1))).exception).toBe(ILLEGAL_ADDRESS);
      // The refused write over B+3..B+4 was all or nothing.
      expect(fcv.counters.writesReceived).toBe(0);
      expect(await holding(FCV, 4)).toEqual([0, 0, 0, 0]);
    });

    it('refuses a setpoint outside 0–100 % or not a number', async () => {
      await floatCommand(FCV_KEEP, FL.move, 100.5, 1);
      step();
      expect(await floatStatus(FCV_KEEP)).toMatchObject({ state: FL_STATE.IDLE, fault: 0x88 });
      await write(FCV_KEEP, [FL.move, 0x0000, 0x7fc0, 2]); // a quiet NaN
      step();
      expect(plant.device('fcv-keep').log.at(-1)).toMatchObject({ outcome: 'rejected-0x88' });
    });
  });

  describe('refusal', () => {
    it('keep: a move while moving is refused, 0x88 latched, seq echoed, travel goes on', async () => {
      await floatCommand(FCV_KEEP, FL.move, 90, 1);
      step();
      step(150);
      await floatCommand(FCV_KEEP, FL.move, 10, 2);
      step();
      expect(await floatStatus(FCV_KEEP)).toEqual({
        state: FL_STATE.MOVING,
        position: 10,
        fault: 0x88,
        echo: 2,
      });
      step(150);
      expect((await floatStatus(FCV_KEEP)).position).toBe(20);
    });

    it('fault: the same refusal puts the positioner in FAULT where it is; reset recovers', async () => {
      await floatCommand(FCV, FL.move, 90, 1);
      step();
      step(150);
      await floatCommand(FCV, FL.move, 10, 2);
      step();
      expect(await floatStatus()).toEqual({
        state: FL_STATE.FAULT,
        position: 10,
        fault: 0x88,
        echo: 2,
      });
      step(150);
      expect((await floatStatus()).position).toBe(10);
      await floatCommand(FCV, FL.stop, 0, 3);
      step();
      expect(await floatStatus()).toEqual({
        state: FL_STATE.FAULT,
        position: 10,
        fault: 0x88,
        echo: 3,
      });
      await floatCommand(FCV, FL.reset, 0, 4);
      step();
      expect(await floatStatus()).toEqual({
        state: FL_STATE.IDLE,
        position: 10,
        fault: 0,
        echo: 4,
      });
      expect(fcv.writeLog.map((w) => w.outcome)).toEqual([
        'accepted',
        'rejected-0x88',
        'noop',
        'accepted',
      ]);
    });

    it('fault on a standard valve: close while opening → state FAULT 5, fault 0x88, seq echoed', async () => {
      await write(STD + 10, [1, 0, 11]);
      step();
      step(300);
      await write(STD + 10, [2, 0, 12]);
      step();
      step(300);
      const [state, position, fault, echo] = await holding(STD, 4);
      expect([state, position, fault, echo]).toEqual([5, 300, 0x88, 12]);
      await write(STD + 10, [4, 0, 13]);
      step();
      expect((await holding(STD, 4)).slice(0, 3)).toEqual([4, 300, 0]);
    });
  });

  describe('standard next to the vendor layouts', () => {
    it('keeps FC4 as the holding image, and the clock at 900..903', async () => {
      step(10);
      const fc3 = await holding(STD, 8);
      const fc4 = await mb.request(readPdu(0x04, STD, 8));
      expect(fc4.exception).toBeUndefined();
      expect(fc4.registers).toEqual(fc3);
      const clock = await mb.request(readPdu(0x04, 900, 4));
      expect(registersToTime(clock.registers)).toBe(time.now() + 1234);
    });

    it('answers FC1 with exception 02 (no coils), and bounds FC1 / FC2 quantities at 1..2000', async () => {
      for (const fc of [0x01, 0x02]) {
        for (const quantity of [0, 2001]) {
          const reply = await mb.request(readPdu(fc, LSV, quantity));
          expect(reply.exception, `FC${fc} quantity ${quantity}`).toBe(ILLEGAL_VALUE);
          expect(reply.pdu.readUInt8(0)).toBe(fc | 0x80);
        }
        expect((await mb.request(readPdu(fc, LSV, 2000))).exception).toBe(ILLEGAL_ADDRESS);
      }
      expect((await mb.request(readPdu(0x01, LSV, 1))).exception).toBe(ILLEGAL_ADDRESS);
      expect((await mb.request(Buffer.from([0x05, 0, 0, 0xff, 0]))).exception).toBe(
        ILLEGAL_FUNCTION,
      );
    });

    it("resets every layout's command registers on a power cycle", async () => {
      plant.device('lsv').setFault({ kind: 'hold' });
      await write(LSV + 10, [LS.close]);
      await floatCommand(FCV, FL.move, 50, 7);
      plant.plc('plc').powerCycle();
      mb = await rawModbus(modbusEndpoint(plant.plc('plc').endpoint));
      expect(await holding(LSV + 10)).toEqual([0]);
      expect(await holding(FCV, 4)).toEqual([0, 0, 0, 0]);
      expect(lsv.writeLog.map((w) => w.outcome)).toEqual(['power-cycle']);
    });
  });
});

describe('layouts in the control API', () => {
  it('shows layout and refusal in the device view', async () => {
    const plant = await startPlant(plantInput, { ephemeralPorts: true, manualScan: true });
    try {
      const url = plant.controlUrl ?? '';
      expect((await api(url, 'GET', '/devices/lsv')).body).toMatchObject({
        layout: 'limit-switch',
        refusal: 'keep',
      });
      expect((await api(url, 'GET', '/devices/fcv')).body).toMatchObject({
        layout: 'float',
        refusal: 'fault',
      });
      const all = (await api(url, 'GET', '/devices')).body.devices as Record<string, unknown>[];
      expect(all.map((d) => [d.id, d.layout, d.refusal])).toEqual([
        ['std', 'standard', 'fault'],
        ['lsv', 'limit-switch', 'keep'],
        ['fcv', 'float', 'fault'],
        ['fcv-keep', 'float', 'keep'],
      ]);
    } finally {
      await plant.stop();
    }
  });

  it('shows no layout for an OPC UA device', () => {
    const config = parsePlant({
      plcs: {
        u: {
          protocol: 'opcua',
          port: 0,
          devices: { a: { profile: 'actuator', refusal: 'fault' } },
        },
      },
    });
    const plcConfig = config.plcs.u;
    if (plcConfig === undefined) throw new Error('no PLC u');
    const plc = new SimPlc('u', plcConfig, {
      time: new ManualTime(),
      random: Math.random,
      logger: pino({ level: 'silent' }),
    });
    expect(plc.device('a')?.snapshot()).toMatchObject({ layout: null, refusal: 'fault' });
  });
});

describe('plant file: layouts and refusal', () => {
  function issuesOf(input: unknown): { path: string; message: string }[] {
    try {
      parsePlant(input);
    } catch (err) {
      expect(err).toBeInstanceOf(PlantFileError);
      return [...(err as PlantFileError).issues];
    }
    throw new Error('expected a PlantFileError');
  }
  const modbus = (devices: Record<string, unknown>) => ({
    plcs: { m: { protocol: 'modbus', port: 0, devices } },
  });

  it('defaults to the standard layout and refusal keep', () => {
    const plant = parsePlant(modbus({ v: { profile: 'valve', base: 0 } }));
    expect(plant.plcs.m?.devices.v).toMatchObject({ layout: 'standard', refusal: 'keep' });
  });

  it('ties limit-switch to valves and float to actuators', () => {
    expect(
      issuesOf(
        modbus({
          a: { profile: 'actuator', layout: 'limit-switch', base: 0 },
          v: { profile: 'valve', layout: 'float', base: 100 },
          s: { profile: 'actuator', layout: 'standard', base: 200 },
        }),
      ),
    ).toEqual([
      {
        path: 'plcs.m.devices.a.layout',
        message: 'layout limit-switch is for profile valve, not actuator',
      },
      {
        path: 'plcs.m.devices.v.layout',
        message: 'layout float is for profile actuator, not valve',
      },
    ]);
  });

  it('refuses a layout on an OPC UA device, and unknown layouts and refusals', () => {
    const issues = issuesOf({
      plcs: {
        u: {
          protocol: 'opcua',
          port: 0,
          devices: { a: { profile: 'actuator', layout: 'float' } },
        },
        m: {
          protocol: 'modbus',
          port: 0,
          devices: { v: { profile: 'valve', base: 0, layout: 'coil', refusal: 'ignore' } },
        },
      },
    });
    expect(issues).toEqual(
      expect.arrayContaining([
        {
          path: 'plcs.u.devices.a.layout',
          message: 'a register layout is for Modbus devices only',
        },
        { path: 'plcs.m.devices.v.layout', message: expect.stringMatching(/standard/) as unknown },
        { path: 'plcs.m.devices.v.refusal', message: expect.stringMatching(/keep/) as unknown },
      ]),
    );
  });

  it("checks overlaps with each layout's span: standard 13, limit-switch 11, float 24", () => {
    expect(
      issuesOf(
        modbus({
          l: { profile: 'valve', layout: 'limit-switch', base: 0 },
          s: { profile: 'valve', base: 10 },
          f: { profile: 'actuator', layout: 'float', base: 100 },
          t: { profile: 'valve', base: 123 },
          c: { profile: 'actuator', layout: 'float', base: 880 },
          e: { profile: 'actuator', layout: 'float', base: 65513 },
        }),
      ),
    ).toEqual([
      { path: 'plcs.m.devices.s.base', message: 'registers 10..22 overlap device l (0..10)' },
      { path: 'plcs.m.devices.t.base', message: 'registers 123..135 overlap device f (100..123)' },
      {
        path: 'plcs.m.devices.c.base',
        message: 'registers 880..903 overlap the PLC clock (900..903)',
      },
      {
        path: 'plcs.m.devices.e.base',
        message: 'registers 65513..65536 (layout float) run past 65535',
      },
    ]);
  });

  it('accepts adjacent blocks of every layout up to the last register', () => {
    expect(() =>
      parsePlant(
        modbus({
          l: { profile: 'valve', layout: 'limit-switch', base: 0 }, // 0..10
          s: { profile: 'valve', base: 11 }, // 11..23
          f: { profile: 'actuator', layout: 'float', base: 24 }, // 24..47
          g: { profile: 'actuator', layout: 'float', base: 876 }, // 876..899, below the clock
          h: { profile: 'actuator', layout: 'float', base: 65512 }, // 65512..65535
        }),
      ),
    ).not.toThrow();
  });

  it('loads plants/field.yaml: one Modbus PLC with the three layouts', async () => {
    const plant = await loadPlantFile(join(packageRoot(), 'simulators', 'plants', 'field.yaml'));
    expect(plant.control).toEqual({ host: '127.0.0.1', port: 5081 });
    expect(plant.plcs['field-plc']).toMatchObject({
      protocol: 'modbus',
      port: 5021,
      scanMs: 10,
      devices: {
        'std-valve': { profile: 'valve', layout: 'standard', base: 0, refusal: 'keep' },
        'lsv-101': { profile: 'valve', layout: 'limit-switch', base: 100, travelMs: 1500 },
        'fcv-201': {
          profile: 'actuator',
          layout: 'float',
          base: 200,
          refusal: 'fault',
          travelMs: 1500,
        },
      },
    });
  });
});
