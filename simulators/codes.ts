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
/** Registers a device occupies from its base: status block, gap, command block. */
export const MODBUS_DEVICE_SPAN = MODBUS_COMMAND_OFFSET + MODBUS_COMMAND_LENGTH;
/** Live controller clock: unsigned 64-bit epoch ms, most significant word first. */
export const MODBUS_CLOCK_ADDRESS = 900;
export const MODBUS_CLOCK_LENGTH = 4;

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
