/**
 * The SPEC §3 state table as a contract suite, run over a real protocol (Modbus with mbpoll,
 * OPC UA with node-opcua's client). One device per table cell, so every cell starts from a
 * fresh controller; time is manual so travel is deterministic.
 *
 * The expectations below are transcribed from SPEC §3 and the simulator brief, not derived
 * from the simulator's own tables.
 */
import { expect } from 'vitest';
import type { ManualTime, Plant, PlantInput } from '../../simulators/plant.js';
import { mapLimit } from './helpers.js';
import type { Wire } from './helpers.js';

const CODES = { open: 1, close: 2, stop: 3, reset: 4, move: 5 } as const;
type Command = keyof typeof CODES;

const VALVE_CODES = { CLOSED: 0, OPENING: 1, OPEN: 2, CLOSING: 3, STOPPED: 4, FAULT: 5, LOCAL: 6 };
const ACTUATOR_CODES = { IDLE: 0, MOVING: 1, FAULT: 5, LOCAL: 6 };
type ValveState = keyof typeof VALVE_CODES;
type ActuatorState = keyof typeof ACTUATOR_CODES;

/** What the controller shows right after the scan that took the command. */
interface Expect<S> {
  state: S;
  /** accepted: changed state; noop: accepted, nothing changed; reject: 0x88; local: ignored. */
  outcome: 'accepted' | 'noop' | 'reject' | 'local';
}

const VALVE_TABLE: Record<
  'open' | 'close' | 'stop' | 'reset',
  Record<ValveState, Expect<ValveState>>
> = {
  open: {
    CLOSED: { state: 'OPENING', outcome: 'accepted' },
    OPENING: { state: 'OPENING', outcome: 'noop' },
    OPEN: { state: 'OPEN', outcome: 'noop' },
    CLOSING: { state: 'CLOSING', outcome: 'reject' },
    STOPPED: { state: 'OPENING', outcome: 'accepted' },
    FAULT: { state: 'FAULT', outcome: 'reject' },
    LOCAL: { state: 'LOCAL', outcome: 'local' },
  },
  close: {
    CLOSED: { state: 'CLOSED', outcome: 'noop' },
    OPENING: { state: 'OPENING', outcome: 'reject' },
    OPEN: { state: 'CLOSING', outcome: 'accepted' },
    CLOSING: { state: 'CLOSING', outcome: 'noop' },
    STOPPED: { state: 'CLOSING', outcome: 'accepted' },
    FAULT: { state: 'FAULT', outcome: 'reject' },
    LOCAL: { state: 'LOCAL', outcome: 'local' },
  },
  stop: {
    CLOSED: { state: 'CLOSED', outcome: 'noop' },
    OPENING: { state: 'STOPPED', outcome: 'accepted' },
    OPEN: { state: 'OPEN', outcome: 'noop' },
    CLOSING: { state: 'STOPPED', outcome: 'accepted' },
    STOPPED: { state: 'STOPPED', outcome: 'noop' },
    FAULT: { state: 'FAULT', outcome: 'noop' },
    LOCAL: { state: 'LOCAL', outcome: 'local' },
  },
  reset: {
    CLOSED: { state: 'CLOSED', outcome: 'noop' },
    OPENING: { state: 'OPENING', outcome: 'noop' },
    OPEN: { state: 'OPEN', outcome: 'noop' },
    CLOSING: { state: 'CLOSING', outcome: 'noop' },
    STOPPED: { state: 'STOPPED', outcome: 'noop' },
    // The FAULT devices sit at 0 %, so reset lands in CLOSED.
    FAULT: { state: 'CLOSED', outcome: 'accepted' },
    LOCAL: { state: 'LOCAL', outcome: 'local' },
  },
};

const ACTUATOR_TABLE: Record<
  'move' | 'stop' | 'reset' | 'open',
  Record<ActuatorState, Expect<ActuatorState>>
> = {
  move: {
    IDLE: { state: 'MOVING', outcome: 'accepted' },
    MOVING: { state: 'MOVING', outcome: 'reject' },
    FAULT: { state: 'FAULT', outcome: 'reject' },
    LOCAL: { state: 'LOCAL', outcome: 'local' },
  },
  stop: {
    IDLE: { state: 'IDLE', outcome: 'noop' },
    MOVING: { state: 'IDLE', outcome: 'accepted' },
    FAULT: { state: 'FAULT', outcome: 'noop' },
    LOCAL: { state: 'LOCAL', outcome: 'local' },
  },
  reset: {
    IDLE: { state: 'IDLE', outcome: 'noop' },
    MOVING: { state: 'MOVING', outcome: 'noop' },
    FAULT: { state: 'IDLE', outcome: 'accepted' },
    LOCAL: { state: 'LOCAL', outcome: 'local' },
  },
  // A valve command is not in the positioner's repertoire: refused like an illegal transition.
  open: {
    IDLE: { state: 'IDLE', outcome: 'reject' },
    MOVING: { state: 'MOVING', outcome: 'reject' },
    FAULT: { state: 'FAULT', outcome: 'reject' },
    LOCAL: { state: 'LOCAL', outcome: 'local' },
  },
};

interface Cell {
  device: string;
  profile: 'valve' | 'actuator';
  from: string;
  command: Command;
  expect: Expect<string>;
}

export const CELLS: readonly Cell[] = [
  ...Object.entries(VALVE_TABLE).flatMap(([command, row]) =>
    Object.entries(row).map(([from, expected]) => ({
      device: `v-${from.toLowerCase()}-${command}`,
      profile: 'valve' as const,
      from,
      command: command as Command,
      expect: expected,
    })),
  ),
  ...Object.entries(ACTUATOR_TABLE).flatMap(([command, row]) =>
    Object.entries(row).map(([from, expected]) => ({
      device: `a-${from.toLowerCase()}-${command}`,
      profile: 'actuator' as const,
      from,
      command: command as Command,
      expect: expected,
    })),
  ),
];

export const TRAVEL_MS = 1000;
/** mbpoll runs as a process per request: keep a handful in flight. */
const PARALLEL = 6;
/** Modbus base addresses, 20 registers apart; the clock at 900 stays clear. */
export const BASES: ReadonlyMap<string, number> = new Map(
  CELLS.map((cell, i) => [cell.device, i * 20]),
);

export function tablePlant(protocol: 'modbus' | 'opcua'): PlantInput {
  const devices = Object.fromEntries(
    CELLS.map((cell) => [
      cell.device,
      protocol === 'modbus'
        ? { profile: cell.profile, travelMs: TRAVEL_MS, base: BASES.get(cell.device) ?? 0 }
        : { profile: cell.profile, travelMs: TRAVEL_MS },
    ]),
  );
  return { plcs: { table: { protocol, port: 0, devices } } } as PlantInput;
}

function codeOf(cell: Cell, state: string): number {
  const codes: Record<string, number> = cell.profile === 'valve' ? VALVE_CODES : ACTUATOR_CODES;
  const code = codes[state];
  if (code === undefined) throw new Error(`no code for ${state}`);
  return code;
}

/** Runs every cell: brings each device into its state over the wire, commands it, reads it. */
export async function runStateTable(plant: Plant, time: ManualTime, wire: Wire): Promise<void> {
  const seqs = new Map<string, number>();
  const nextSeq = (device: string): number => {
    const seq = (seqs.get(device) ?? 0) + 1;
    seqs.set(device, seq);
    return seq;
  };
  const send = (cells: readonly Cell[], command: Command, setpoint = 0): Promise<unknown> =>
    mapLimit(cells, PARALLEL, (c) =>
      wire.command(c.device, CODES[command], setpoint, nextSeq(c.device)),
    );
  const from = (...states: string[]): Cell[] => CELLS.filter((c) => states.includes(c.from));
  const valves = (...states: string[]): Cell[] =>
    from(...states).filter((c) => c.profile === 'valve');
  const actuators = (...states: string[]): Cell[] =>
    from(...states).filter((c) => c.profile === 'actuator');
  const step = (ms: number): void => {
    time.advance(ms);
    plant.scan();
  };

  // Stable states first: OPEN (full stroke), STOPPED (half a stroke), FAULT, LOCAL.
  await send(valves('OPEN', 'CLOSING', 'STOPPED'), 'open');
  step(0);
  step(TRAVEL_MS / 2);
  await send(valves('STOPPED'), 'stop');
  step(0);
  step(TRAVEL_MS);
  for (const cell of from('FAULT')) plant.device(cell.device).setFault({ kind: 'position-sensor' });
  for (const cell of from('LOCAL')) plant.device(cell.device).setLocal(true);
  step(0);
  for (const cell of from('FAULT')) plant.device(cell.device).clearFault('position-sensor');
  // Then the moving states, caught a tenth of a stroke in.
  await send(valves('OPENING'), 'open');
  await send(valves('CLOSING'), 'close');
  await send(actuators('MOVING'), 'move', 80);
  step(0);
  step(TRAVEL_MS / 10);

  const before = new Map<string, { seqEcho: number; position: number }>();
  await mapLimit(CELLS, PARALLEL, async (cell) => {
    const status = await wire.status(cell.device);
    expect(status.stateCode, `${cell.device} prepared in ${cell.from}`).toBe(
      codeOf(cell, cell.from),
    );
    before.set(cell.device, { seqEcho: status.seqEcho, position: status.position });
  });

  const sent = new Map<string, number>();
  await mapLimit(CELLS, PARALLEL, (cell) => {
    const seq = nextSeq(cell.device);
    sent.set(cell.device, seq);
    return wire.command(cell.device, CODES[cell.command], cell.command === 'move' ? 30 : 0, seq);
  });
  step(0);

  await mapLimit(CELLS, PARALLEL, async (cell) => {
    const label = `${cell.command} in ${cell.from} (${cell.device})`;
    const status = await wire.status(cell.device);
    const device = plant.device(cell.device);
    expect(status.stateCode, label).toBe(codeOf(cell, cell.expect.state));
    // The handshake: the sequence number of the command just taken is echoed in every case.
    expect(status.seqEcho, label).toBe(sent.get(cell.device));
    const expectedFault =
      cell.expect.outcome === 'reject'
        ? 0x88
        : cell.from === 'FAULT' && cell.expect.state === 'FAULT'
          ? 0x82
          : 0;
    expect(status.faultCode, label).toBe(expectedFault);
    // A refused or ignored command leaves the position where it was.
    if (cell.expect.outcome === 'reject' || cell.expect.outcome === 'local') {
      expect(status.position, label).toBe(before.get(cell.device)?.position);
    }
    const last = device.log.at(-1);
    const outcome = {
      accepted: 'accepted',
      noop: 'noop',
      reject: 'rejected-0x88',
      local: 'ignored-local',
    }[cell.expect.outcome];
    expect(last?.outcome, label).toBe(outcome);
    expect(last?.seq, label).toBe(sent.get(cell.device));
    const counters = device.counters;
    expect(counters.writesReceived, label).toBe(seqs.get(cell.device));
    expect(counters.commandsTaken, label).toBe(seqs.get(cell.device));
    expect(counters.rejected, label).toBe(cell.expect.outcome === 'reject' ? 1 : 0);
    expect(counters.ignoredLocal, label).toBe(cell.expect.outcome === 'local' ? 1 : 0);
  });

  // The 0x88 latch clears on the next accepted command (here a no-op `stop` or `reset`), and
  // a FAULT device's register falls back to its own fault code.
  const rejected = CELLS.filter((c) => c.expect.outcome === 'reject');
  await mapLimit(rejected, PARALLEL, (cell) => {
    const clearing = cell.from === 'FAULT' ? CODES.stop : CODES.reset;
    return wire.command(cell.device, clearing, 0, nextSeq(cell.device));
  });
  step(0);
  await mapLimit(rejected, PARALLEL, async (cell) => {
    const status = await wire.status(cell.device);
    expect(status.faultCode, `latch cleared on ${cell.device}`).toBe(
      cell.from === 'FAULT' ? 0x82 : 0,
    );
    expect(status.seqEcho).toBe(seqs.get(cell.device));
  });
}
