/**
 * The controller side of the device profiles (devices/profiles/valve.yaml, actuator.yaml):
 * state codes, command codes, fault codes and the register / node layout. They are written
 * out here on purpose instead of being read from the profiles or imported from src/: the
 * simulators play the controllers the bridge mirrors, and a shared definition would let a bug
 * on one side hide itself on the other. test/simulators/profile-map.test.ts checks that these
 * constants still equal the profile files.
 */

export const VALVE_STATES = [
  'CLOSED',
  'OPENING',
  'OPEN',
  'CLOSING',
  'STOPPED',
  'FAULT',
  'LOCAL',
] as const;
export type ValveState = (typeof VALVE_STATES)[number];

export const ACTUATOR_STATES = ['IDLE', 'MOVING', 'FAULT', 'LOCAL'] as const;
export type ActuatorState = (typeof ACTUATOR_STATES)[number];

export type DeviceState = ValveState | ActuatorState;

export const VALVE_STATE_CODES: Readonly<Record<ValveState, number>> = {
  CLOSED: 0,
  OPENING: 1,
  OPEN: 2,
  CLOSING: 3,
  STOPPED: 4,
  FAULT: 5,
  LOCAL: 6,
};

export const ACTUATOR_STATE_CODES: Readonly<Record<ActuatorState, number>> = {
  IDLE: 0,
  MOVING: 1,
  FAULT: 5,
  LOCAL: 6,
};

/** Command codes written to the command register / CommandCode variable. */
export const COMMAND_CODES = { open: 1, close: 2, stop: 3, reset: 4, move: 5 } as const;
export type CommandName = keyof typeof COMMAND_CODES;

export const FAULT_NONE = 0;
/** Travel did not reach its end within the travel time limit (stuck). */
export const FAULT_TRAVEL_TIMEOUT = 0x81;
/** Position sensors disagree. */
export const FAULT_POSITION_SENSOR = 0x82;
/** Illegal state transition: the command was refused and ignored. */
export const FAULT_ILLEGAL_TRANSITION = 0x88;

export type DeviceProfile = 'valve' | 'actuator';

/**
 * Modbus holding-register layout, as offsets from the device's base address
 * (profile `modbus:` section), and the PLC-wide clock registers.
 */
export const MODBUS_STATUS_OFFSET = 0;
export const MODBUS_STATUS_LENGTH = 8;
export const MODBUS_STATUS = { state: 0, position: 1, fault: 2, seqEcho: 3, time: 4 } as const;
export const MODBUS_COMMAND_OFFSET = 10;
export const MODBUS_COMMAND_LENGTH = 3;
export const MODBUS_COMMAND = { code: 0, setpoint: 1, seq: 2 } as const;
/** Register units per percent: positions and setpoints travel in 0.1 %. */
export const MODBUS_POSITION_SCALE = 10;
/** Registers a standard-layout device occupies from its base: status block, gap, command block. */
export const MODBUS_DEVICE_SPAN = MODBUS_COMMAND_OFFSET + MODBUS_COMMAND_LENGTH;
/** Live controller clock: unsigned 64-bit epoch ms, most significant word first. */
export const MODBUS_CLOCK_ADDRESS = 900;
export const MODBUS_CLOCK_LENGTH = 4;

/**
 * Register layouts of simulated Modbus devices. `standard` is the map of the device profiles
 * above; the others play field devices with their vendor's own map and codes, which the
 * bridge has to translate (nothing in them is shared with the profiles).
 */
export const MODBUS_LAYOUTS = ['standard', 'limit-switch', 'float'] as const;
export type ModbusLayout = (typeof MODBUS_LAYOUTS)[number];

/** The device profile each vendor layout fits; `standard` serves both. */
export const MODBUS_LAYOUT_PROFILE: Readonly<Record<ModbusLayout, DeviceProfile | undefined>> = {
  standard: undefined,
  'limit-switch': 'valve',
  float: 'actuator',
};

/**
 * `limit-switch`: a motorised on/off valve. Holding register B+0 is a read-only status word
 * whose bits are also discrete inputs B+0..B+5; B+10 is the command register.
 */
export const LIMIT_SWITCH_STATUS_WORD = 0;
/** Bit numbers of the status word (= discrete input offsets). */
export const LIMIT_SWITCH_BITS = {
  openLimit: 0,
  closedLimit: 1,
  fault: 2,
  runningOpen: 3,
  runningClosed: 4,
  local: 5,
} as const;
export const LIMIT_SWITCH_INPUT_COUNT = 6;
export const LIMIT_SWITCH_COMMAND_REGISTER = 10;
/** Vendor command codes of the command register; 0 is "no command". */
export const LIMIT_SWITCH_COMMAND_CODES = { open: 1, close: 2, stop: 3, reset: 4 } as const;
export const LIMIT_SWITCH_SPAN = LIMIT_SWITCH_COMMAND_REGISTER + 1;

/**
 * `float`: a positioner. Command block B+0..B+3 (code, float32 setpoint, seq), status block
 * B+10..B+23; B+4..B+9 are not mapped. Floats are IEEE-754 single precision with the low word
 * first ("CDAB"); times are u64 epoch ms, most significant word first.
 */
export const FLOAT_COMMAND = { code: 0, setpoint: 1, seq: 3 } as const;
export const FLOAT_COMMAND_LENGTH = 4;
export const FLOAT_STATUS = {
  state: 10,
  position: 11,
  fault: 13,
  seqEcho: 14,
  reserved: 15,
  time: 16,
  clock: 20,
} as const;
export const FLOAT_STATUS_OFFSET = 10;
export const FLOAT_STATUS_LENGTH = 14;
/** Vendor command codes (not the profile's 5/3/4). */
export const FLOAT_COMMAND_CODES = { move: 1, stop: 2, reset: 3 } as const;
/** Vendor state codes (not the profile's 0/1/5/6). */
export const FLOAT_STATE_CODES: Readonly<Record<ActuatorState, number>> = {
  IDLE: 1,
  MOVING: 2,
  FAULT: 3,
  LOCAL: 4,
};
export const FLOAT_SPAN = FLOAT_STATUS_OFFSET + FLOAT_STATUS_LENGTH;

/** Registers a device of each layout occupies from its base (gaps included). */
export const MODBUS_LAYOUT_SPANS: Readonly<Record<ModbusLayout, number>> = {
  standard: MODBUS_DEVICE_SPAN,
  'limit-switch': LIMIT_SWITCH_SPAN,
  float: FLOAT_SPAN,
};

/**
 * What the controller does with an illegal command: `keep` refuses it and keeps its state,
 * `fault` refuses it and goes to FAULT (a reset recovers it).
 */
export const REFUSALS = ['keep', 'fault'] as const;
export type Refusal = (typeof REFUSALS)[number];

/** OPC UA variable browse names under each device object (profile `opcua:` section). */
export const OPCUA_STATUS_VARIABLES = [
  'State',
  'StateCode',
  'Position',
  'FaultCode',
  'SeqEcho',
  'ScanTime',
] as const;
export const OPCUA_COMMAND_VARIABLES = ['CommandCode', 'Setpoint', 'CommandSeq'] as const;
export type OpcuaVariableName =
  (typeof OPCUA_STATUS_VARIABLES)[number] | (typeof OPCUA_COMMAND_VARIABLES)[number];

export function opcuaNamespaceUri(plcName: string): string {
  return `urn:sluice:sim:${plcName}`;
}

export function formatFaultCode(code: number): string {
  return `0x${code.toString(16).padStart(2, '0')}`;
}
