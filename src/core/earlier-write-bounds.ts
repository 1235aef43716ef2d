import { timer, type Clock } from './clock.js';
import type { Journal } from './journal.js';
import type { DeviceBinding } from './lane.js';
import type { Logger } from './logger.js';

/**
 * How long after a life of the daemon ended a write it sent may still be taken by its
 * controller, by device, as that life was configured: its PLC's request timeout (the write may
 * have been on its way that long) plus its profile's redispatch guard (the profile's contract
 * has a write of unknown outcome taken within the guard after its request timed out, if ever:
 * docs/device-profiles.md, "How the timings relate").
 *
 * A restarted daemon counts the wait for an earlier life's write from when it took the journal's
 * writer lock (Lane.earlierWriteUnknownSinceMono). Counted with this life's timings alone, a
 * restart that shortened them (an operator's edit of the site: a request timeout of 1 s made
 * 250 ms, a guard of 1.5 s made 400 ms) ended the wait while the earlier life's write could
 * still land: it was proven not applied and sent a second time (I1), or a stop was confirmed and
 * then undone by it. Each life saves its own bounds in the journal before it dispatches anything
 * (with those of the life before it while that life's writes may still land), and the next life
 * waits out the longer of its own and the saved ones.
 */

/** The journal's meta key under which each life keeps the bounds of its writes. */
export const WRITE_BOUNDS_KEY = 'earlier-write-bounds';

/** ms after a life's end within which a write it sent may still be taken, by device. */
export type WriteBounds = ReadonlyMap<string, number>;

/** This life's bound for a device's writes (see above). */
export function ownBound(binding: DeviceBinding): number {
  const guard = binding.profile.timing.redispatchGuardMs;
  return (binding.requestTimeoutMs ?? guard) + guard;
}

function parseBounds(text: string): Map<string, number> | null {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return null;
  }
  if (typeof value !== 'object' || value === null) return null;
  const devices = (value as { devices?: unknown }).devices;
  if (typeof devices !== 'object' || devices === null || Array.isArray(devices)) return null;
  const bounds = new Map<string, number>();
  for (const [device, ms] of Object.entries(devices as Record<string, unknown>)) {
    if (typeof ms !== 'number' || !Number.isFinite(ms) || ms < 0) return null;
    bounds.set(device, ms);
  }
  return bounds;
}

function serialize(bounds: WriteBounds): string {
  return JSON.stringify({ devices: Object.fromEntries([...bounds].sort()) });
}

export interface EarlierWriteBoundsOptions {
  readonly journal: Pick<Journal, 'readMeta' | 'writeMeta'>;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly bindings: readonly DeviceBinding[];
  /** When this process took the journal's writer lock (PipelineOptions.earlierLivesEndedMono). */
  readonly earlierLivesEndedMono: number;
}

/**
 * Reads the bounds the earlier lives saved and saves this life's, merged with them: a life that
 * ends before the earlier ones' writes can no longer land must hand their bounds on. Once they
 * have passed (from the lock, on the monotonic clock), this life's own are saved alone, so that
 * a timing shortened for good is not waited out at every later restart. Returns the earlier
 * lives' bounds (empty when none were saved, or they cannot be read: this life's own stand in,
 * as before there were any) and a cancel for the later save.
 */
export function takeUpWriteBounds(options: EarlierWriteBoundsOptions): {
  readonly earlier: WriteBounds;
  readonly cancel: () => void;
} {
  const { journal, clock, logger, bindings, earlierLivesEndedMono } = options;
  const own = new Map(bindings.map((binding) => [binding.id, ownBound(binding)]));
  let earlier: Map<string, number> = new Map();
  try {
    const text = journal.readMeta(WRITE_BOUNDS_KEY);
    const parsed = text === null ? new Map<string, number>() : parseBounds(text);
    if (parsed === null) {
      logger.warn(
        { key: WRITE_BOUNDS_KEY, value: text?.slice(0, 200) },
        "the earlier lives' write bounds saved in the journal cannot be read: a write they sent is waited for by this life's timings",
      );
    } else {
      earlier = parsed;
    }
  } catch (error) {
    logger.warn(
      { err: error },
      "the earlier lives' write bounds cannot be read from the journal: a write they sent is waited for by this life's timings",
    );
  }
  const save = (bounds: WriteBounds): void => {
    try {
      journal.writeMeta(WRITE_BOUNDS_KEY, serialize(bounds));
    } catch (error) {
      logger.warn(
        { err: error },
        "this life's write bounds cannot be saved in the journal: a restart that shortens the timings may wait too little for its writes",
      );
    }
  };
  const merged = new Map(earlier);
  let longerEarlier = 0;
  for (const [device, ms] of own) {
    const before = earlier.get(device) ?? 0;
    if (before > ms) longerEarlier = Math.max(longerEarlier, before);
    merged.set(device, Math.max(ms, before));
  }
  // Devices no longer configured keep their earlier bounds while they may still matter.
  for (const [device, ms] of earlier) {
    if (!own.has(device)) longerEarlier = Math.max(longerEarlier, ms);
  }
  save(merged);
  if (longerEarlier === 0) return { earlier, cancel: () => undefined };
  const leftMs = earlierLivesEndedMono + longerEarlier - clock.elapsed();
  const cancel = timer(clock, Math.max(0, leftMs), () => {
    save(own);
  });
  return { earlier, cancel };
}

/**
 * Lane.earlierWriteUnknownSinceMono: from the lock, the end of this life's request timeout, or
 * later when an earlier life's bound runs longer than this life's request timeout and guard
 * together (the guard, this life's, is counted from the moment returned).
 */
export function earlierWriteUnknownSince(
  binding: DeviceBinding,
  earlierLivesEndedMono: number,
  earlier: WriteBounds,
): number {
  const guard = binding.profile.timing.redispatchGuardMs;
  const ownTimeout = binding.requestTimeoutMs ?? guard;
  const saved = earlier.get(binding.id) ?? 0;
  return earlierLivesEndedMono + Math.max(ownTimeout, saved - guard);
}
