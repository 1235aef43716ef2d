import { isTerminal } from './command.js';
import type { CommandRecord } from './journal.js';

/**
 * Whether a command an operator asked to reverify (SPEC §7) was settled by a readback taken
 * after the request: its outcome's readback was requested at or after `askedAt` (gateway wall
 * time, as the readback's `readAt`). A reverify waits for the command to end, and it may end
 * otherwise meanwhile — its confirm timeout or deadline passing with no read of the device
 * answering (READBACK_TIMEOUT on the last readback, taken before; DEVICE_UNREACHABLE with
 * none), another operator's resolve, a stop — which `sluicectl reverify` and the status page
 * announced all the same as "SETTLED by a fresh readback".
 */
export function settledByReadback(record: CommandRecord, askedAt: number): boolean {
  if (!isTerminal(record.state) || record.code === 'RESOLVED_BY_OPERATOR') return false;
  if (record.observed === null) return false;
  const readAt = Date.parse(record.observed.readAt);
  return !Number.isNaN(readAt) && readAt >= askedAt;
}
