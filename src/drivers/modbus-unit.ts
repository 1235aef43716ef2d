/**
 * Unit id 0 is the Modbus broadcast address (MODBUS over Serial Line, broadcast mode): a Modbus
 * TCP-to-serial gateway passes a request for it to every device on its line, each takes a
 * write, and none answers. A write would never be acknowledged nor confirmed (I2 would hold
 * only by every command failing), and it would move every device on the line that maps the
 * register. A controller reached directly over TCP takes 255 as "this device" (MODBUS
 * Messaging on TCP/IP Implementation Guide, Unit Identifier); a serial device behind a gateway
 * has its own address, 1..247.
 *
 * Kept apart from the site file's schema: the driver refuses it too, for an inventory built in
 * code (a test, an embedding program) that never went through the schema.
 */
export const UNIT_ID_BROADCAST =
  '0 is the Modbus broadcast address: through a Modbus TCP-to-serial gateway every device on the line takes each write and none answers, so no write would be acknowledged or confirmed, and several devices could move. Set the unit id of the PLC itself: its address on the serial line (1..247), or 255 for a controller reached directly over TCP';

/** Why `unitId` cannot address one Modbus controller; null when it can (an integer 1..255). */
export function unitIdProblem(unitId: number): string | null {
  if (unitId === 0) return UNIT_ID_BROADCAST;
  if (!Number.isInteger(unitId) || unitId < 1 || unitId > 255) {
    return `${String(unitId)} is no Modbus unit id: an integer 1..255 (1..247 for a device behind a TCP-to-serial gateway, 255 for a controller reached directly over TCP)`;
  }
  return null;
}
