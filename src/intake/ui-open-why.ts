import {
  aheadText,
  expiredText,
  neverSentText,
  pausedText,
  settlingText,
  type StuckItem,
} from '../views/open-commands.js';
import type { DeviceDocument } from './device-view.js';

/**
 * Why an open command is still open, in one sentence for the status page's list of open
 * commands (`why` in `GET /ui/api/commands`): what a person needs to know first.
 */

/** What the page knows of the command's device beyond the journal. */
export interface OpenDevice {
  /** In a travelling state with no readback change for STALL_AFTER_MS or longer. */
  readonly stalled: {
    readonly state: string;
    readonly position: number | null;
    readonly forMs: number;
  } | null;
  /** Reads answered with the same scan of the controller's image for IMAGE_FROZEN_MS or longer. */
  readonly frozen: { readonly forMs: number } | null;
  /** Why the device cannot be read now (unreadText); null while its reads answer. */
  readonly unread: string | null;
}

/**
 * Why no read of the device answers now, in the words `sluicectl devices` uses for its
 * CONNECTED column: its PLC not connected (shared by every device of a Modbus PLC), or connected
 * and refusing this device's reads. Null while they answer.
 */
export function unreadText(c: DeviceDocument['connectivity']): string | null {
  if (!c.connected) {
    return `its PLC is not connected${c.lastError === null ? '' : ` (${c.lastError})`}`;
  }
  if (c.readError !== null) {
    return `its reads fail (${c.readError.failures} in a row: ${c.readError.message})`;
  }
  return null;
}

export function seconds(ms: number): string {
  const s = Math.round(ms / 1000);
  if (s < 120) return `${s} s`;
  const m = Math.floor(s / 60);
  return m < 120 ? `${m} min ${s % 60} s` : `${Math.floor(m / 60)} h ${m % 60} min`;
}

/**
 * `journal`: why the journal is unavailable now (/readyz's words), or null. It comes first: no
 * command is written or settled while it lasts, whatever else holds it.
 */
export function whyOpen(
  item: StuckItem,
  device: OpenDevice,
  now: number,
  journal: string | null,
): string {
  const why = deviceWhy(item, device, now);
  return journal === null ? why : `${journal}; ${why}`;
}

function deviceWhy(item: StuckItem, device: OpenDevice, now: number): string {
  const last = item.lastEvent === null ? '' : `; last event: ${item.lastEvent.detail}`;
  if (item.stuck) {
    // The bound in the words of /readyz and `sluicectl stuck` (core/open-commands.ts).
    return `open ${seconds(item.overdueMs ?? 0)} past ${item.stuckReason ?? 'its bound'}; the daemon would have ended it by now${last}`;
  }
  // The daemon has no worker for a device its configuration does not have (the page's timings
  // are the daemon's): nothing runs it, whatever its device's queue holds, and "waits behind"
  // read as if it would run in its turn. As the sweep says it.
  if (item.confirmTimeoutMs === null) {
    return `its device is not in the configuration: no worker can settle it; an operator resolves it${last}`;
  }
  // A device that cannot be read is why first: no readback can settle a write or let a command
  // be written (each is written only on a fresh read of its device, I4), and its mirror is the
  // last read, so a valve travelling when its PLC dropped off stood still on the page.
  const unread = device.unread === null ? '' : `; the device cannot be read now: ${device.unread}`;
  if (device.unread === null && device.frozen !== null) {
    return `the controller's image is frozen: the same scan for ${seconds(device.frozen.forMs)}, so no readback can show what the device does${last}`;
  }
  if (device.unread === null && device.stalled !== null) {
    const { stalled } = device;
    const at = stalled.position === null ? '' : ` at ${stalled.position} %`;
    return `the device is not moving: ${stalled.state}${at} for ${seconds(stalled.forMs)}${last}`;
  }
  // An accepted one past its deadline will not run, whatever it waits behind (as `sluicectl
  // show` says).
  const expired = item.state === 'accepted' ? expiredText(Date.parse(item.deadline), now) : null;
  if (item.waitsBehind.length > 0) {
    return item.state === 'dispatched'
      ? `waits for ${pausedText(item.waitsBehind, item.waitsBehindCount)}${unread}`
      : `waits behind ${aheadText(item.waitsBehind, item.waitsBehindCount)}${expired === null ? '' : `; ${expired}`}${unread}`;
  }
  if (expired !== null) return expired;
  // Written and not paused: it waits for the readback that settles its write, as `sluicectl
  // show` says. Its last event alone is, until a take-up, its dispatch's line — the clocks the
  // write was judged on ("seq 1; gateway clock not checked; …") — which read as the reason a
  // command held by its controller, or whose PLC stopped answering, was still open.
  // One whose latest write never left the gateway waits for no readback (as `sluicectl show`
  // says it).
  if (item.state === 'dispatched' && item.neverSent !== null)
    return `${neverSentText(item.seq, item.neverSent, item.neverSent.since)}${unread}${last}`;
  if (item.state === 'dispatched')
    return `waits for ${settlingText(item.seq, null)}${unread}${last}`;
  if (item.state === 'accepted' && device.unread !== null) {
    // Its last event is its acceptance ("accepted"): no reason at all.
    return `not written: the device cannot be read now: ${device.unread}; it is written only after a fresh read of the device, and not once its deadline has passed${last}`;
  }
  return item.lastEvent?.detail ?? item.state;
}
