import { timer, type Clock } from './clock.js';
import type { Journal } from './journal.js';
import { parseMetaObject } from './journal-meta.js';
import type { DeviceBinding, Lane } from './lane.js';
import type { Logger } from './logger.js';
import { ackedWriteBoundMs, ackedWriteSinceSendMs } from './profile.js';

/**
 * How long after a life of the daemon ended a write it sent may still be taken by its
 * controller, by device, as that life was configured: a write of unknown outcome within its
 * PLC's request timeout (the write may have been on its way that long) plus its profile's
 * redispatch guard (the profile's contract has it taken within the guard after its request
 * timed out, if ever: docs/device-profiles.md, "How the timings relate"); a write the controller
 * acknowledged within its profile's bound on one (ackedWriteSinceSendMs: the request timeout plus
 * timing.ackedWriteTakenWithinMs, which counts from the acknowledgement, or the confirm timeout
 * from the write; previous-write.ts).
 *
 * A restarted daemon counts the wait for an earlier life's write from when it took the journal's
 * writer lock (Lane.earlierWriteUnknownSinceMono). Counted with this life's timings alone, a
 * restart that shortened them (an operator's edit of the site: a request timeout of 1 s made
 * 250 ms, a guard of 1.5 s made 400 ms) ended the wait while the earlier life's write could
 * still land: it was proven not applied and sent a second time (I1), or a stop was confirmed and
 * then undone by it; a confirm timeout shortened from 6 s to 1 s had a close after the restart
 * confirmed a no-op at CLOSED while the controller still held an acknowledged open of the
 * earlier life (an operator had resolved its command), which it took after (I2). Each life saves its own bounds in the journal before it dispatches anything
 * (with those of the life before it while that life's writes may still land), and the next life
 * waits out the longer of its own and the saved ones.
 */

/** The journal's meta key under which each life keeps the bounds of its writes. */
export const WRITE_BOUNDS_KEY = 'earlier-write-bounds';

/** ms after a life's end within which a write it sent may still be taken (see above). */
export interface WriteBound {
  /** A write whose outcome was unknown: the request timeout plus the guard. */
  readonly unknownMs: number;
  /**
   * A write the controller acknowledged: the profile's bound on how long the controller keeps
   * one, from its sending (ackedWriteSinceSendMs: the request timeout plus
   * timing.ackedWriteTakenWithinMs, or the confirm timeout).
   */
  readonly ackedMs: number;
}

/** The bounds by device. */
export type WriteBounds = ReadonlyMap<string, WriteBound>;

/** This life's bounds for a device's writes (see above). */
export function ownBound(binding: DeviceBinding): WriteBound {
  const { timing } = binding.profile;
  const guard = timing.redispatchGuardMs;
  return {
    unknownMs: (binding.requestTimeoutMs ?? guard) + guard,
    ackedMs: ackedWriteSinceSendMs(timing, binding.requestTimeoutMs),
  };
}

function longer(a: WriteBound, b: WriteBound | undefined): WriteBound {
  return b === undefined
    ? a
    : { unknownMs: Math.max(a.unknownMs, b.unknownMs), ackedMs: Math.max(a.ackedMs, b.ackedMs) };
}

function duration(value: unknown): value is number {
  return typeof value === 'number' && Number.isFinite(value) && value >= 0;
}

function parseBounds(text: string): Map<string, WriteBound> | null {
  const value = parseMetaObject(text);
  if (value === null) return null;
  const devices = value.devices;
  if (typeof devices !== 'object' || devices === null || Array.isArray(devices)) return null;
  const bounds = new Map<string, WriteBound>();
  for (const [device, bound] of Object.entries(devices as Record<string, unknown>)) {
    // As ef5b990 saved it: the unknown outcome's bound alone.
    if (duration(bound)) {
      bounds.set(device, { unknownMs: bound, ackedMs: 0 });
      continue;
    }
    if (typeof bound !== 'object' || bound === null) return null;
    const { unknownMs, ackedMs } = bound as { unknownMs?: unknown; ackedMs?: unknown };
    if (!duration(unknownMs) || !duration(ackedMs)) return null;
    bounds.set(device, { unknownMs, ackedMs });
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
  let earlier = new Map<string, WriteBound>();
  try {
    const text = journal.readMeta(WRITE_BOUNDS_KEY);
    const parsed = text === null ? new Map<string, WriteBound>() : parseBounds(text);
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
  // How long after the lock an earlier life's bound runs past this life's own (0: none).
  let longerEarlier = 0;
  const past = (before: WriteBound | undefined, mine: WriteBound | undefined): number => {
    if (before === undefined) return 0;
    const u = before.unknownMs > (mine?.unknownMs ?? 0) ? before.unknownMs : 0;
    const a = before.ackedMs > (mine?.ackedMs ?? 0) ? before.ackedMs : 0;
    return Math.max(u, a);
  };
  for (const [device, mine] of own) {
    longerEarlier = Math.max(longerEarlier, past(earlier.get(device), mine));
    merged.set(device, longer(mine, earlier.get(device)));
  }
  // Devices no longer configured keep their earlier bounds while they may still matter.
  for (const [device, before] of earlier) {
    if (!own.has(device)) longerEarlier = Math.max(longerEarlier, past(before, undefined));
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
 * `earlier` as a renamed device's lane reads it: each configured device's bound the longest of
 * its own and those saved under its former ids (`formerIds`: PipelineOptions.formerDeviceIds).
 * Its former ids wrote to the same valve, and the journal keeps their bounds under those ids:
 * read by its new id alone, a restart that renamed the valve and shortened its confirm timeout
 * waited for a held open of the former id by the new bound only, and a close under the new id
 * was confirmed a no-op at CLOSED before the controller took the open (I2).
 */
export function withFormerBounds(
  earlier: WriteBounds,
  formerIds: Readonly<Record<string, readonly string[]>>,
): WriteBounds {
  const bounds = new Map(earlier);
  for (const [device, formers] of Object.entries(formerIds)) {
    for (const former of formers) {
      const saved = earlier.get(former);
      if (saved === undefined) continue;
      const own = bounds.get(device);
      bounds.set(device, own === undefined ? saved : longer(own, saved));
    }
  }
  return bounds;
}

/**
 * Lane.earlierWriteUnknownSinceMono: the guard, this life's, counted from the moment returned
 * covers every way a write an earlier life sent may still be taken. This life does not know
 * whether the controller had answered it: lost, it is taken within the request timeout and
 * guard after it was sent, if ever; acknowledged (a controller that holds a received command
 * until its handshake is free), within the profile's bound on an acknowledged write
 * (timing.ackedWriteTakenWithinMs from the acknowledgement, the confirm timeout from the write
 * when it states none), as the life that sent it waited for it (previous-write.ts) — each as this
 * life is configured, or an earlier life when longer. A write on the link when that life ended
 * reaches the controller up to its request timeout after the lock, and is acknowledged and kept
 * from there: a stated bound counts from the end of the request timeout after the lock
 * (ackedWriteSinceSendMs). So
 * from the lock: the end of this life's request timeout, or later by what the longest of those
 * bounds leaves past this life's guard. Counted from the request timeout alone, a write the
 * controller had acknowledged and held was proven not applied by the next life a guard after it
 * and sent a second time (two writes of one sequence number at the controller, I1), where the
 * life that sent it never proves an acknowledged write not applied.
 */
export function earlierWriteUnknownSince(
  binding: DeviceBinding,
  earlierLivesEndedMono: number,
  earlier: WriteBounds,
): number {
  const { timing } = binding.profile;
  const guard = timing.redispatchGuardMs;
  const ownTimeout = binding.requestTimeoutMs ?? guard;
  const saved = earlier.get(binding.id);
  const landsWithin = Math.max(
    saved?.unknownMs ?? 0,
    saved?.ackedMs ?? 0,
    ackedWriteSinceSendMs(timing, binding.requestTimeoutMs),
  );
  return earlierLivesEndedMono + Math.max(ownTimeout, landsWithin - guard);
}

/**
 * Lane.earlierWriteLostSinceMono: as earlierWriteUnknownSince, for a write known to be past its
 * acknowledged bound (previous-write.ts, earlierLastWrite: a command whose confirm window, at
 * least the confirm timeout from its write, ended in the life that sent it): only a write whose
 * answer was lost can still be taken, within the request timeout and guard after it was sent —
 * this life's, or an earlier life's when longer. From the lock: the end of this life's request
 * timeout, or later by what the saved bound leaves past this life's guard.
 */
export function earlierWriteLostSince(
  binding: DeviceBinding,
  earlierLivesEndedMono: number,
  earlier: WriteBounds,
): number {
  const { redispatchGuardMs: guard } = binding.profile.timing;
  const ownTimeout = binding.requestTimeoutMs ?? guard;
  const saved = earlier.get(binding.id)?.unknownMs ?? 0;
  return earlierLivesEndedMono + Math.max(ownTimeout, saved - guard);
}

/**
 * How long (ms) a take-up of a command an earlier life dispatched reads at least, from its start
 * (take-up.ts; the stuck view, open-commands.ts, counts the same): past the moment a readback can
 * prove that life's write not applied — the guard after earlierWriteUnknownSinceMono, or after the
 * take-up when later — by one scan for an image produced after it, a poll interval and a request
 * timeout to read it. A take-up starts at the lock or after it, so from its start that moment is
 * at most earlierWriteUnknownSinceMono less the lock, plus the guard. A window that ended there,
 * the confirm timeout from the take-up when no longer (the unreachable grace, the deadline), left
 * the proof to a race with the window's end: a write lost on its way ended READBACK_TIMEOUT "3 ms
 * short of the guard", and always so when an earlier life's saved bounds ran past this life's
 * confirm timeout, where before 2687723 it was proven not applied and sent once more (within its
 * deadline).
 */
export function takeUpReach(
  lane: Pick<Lane, 'earlierWriteUnknownSinceMono' | 'earlierLivesEndedMono'> & {
    readonly binding: Pick<DeviceBinding, 'profile' | 'requestTimeoutMs'>;
  },
): number {
  const { binding } = lane;
  const { redispatchGuardMs: guard, pollIntervalMs, scanMs } = binding.profile.timing;
  const proof = Math.max(0, lane.earlierWriteUnknownSinceMono - lane.earlierLivesEndedMono) + guard;
  return proof + scanMs + pollIntervalMs + (binding.requestTimeoutMs ?? guard);
}

/**
 * Lane.earlierWriteSentMono: the moment from which this life's bound on an acknowledged write
 * (ackedWriteBoundMs) covers a write an earlier life sent and the controller acknowledged: the
 * lock, or later by as much as an earlier life's bound was longer. Such a write was acknowledged
 * before the lock (an operator resolved its command knowing so), so the bound counts from the
 * lock without the request timeout; a saved bound holds it (ackedWriteSinceSendMs).
 */
export function earlierWriteSent(
  binding: DeviceBinding,
  earlierLivesEndedMono: number,
  earlier: WriteBounds,
): number {
  const saved = earlier.get(binding.id)?.ackedMs ?? 0;
  return earlierLivesEndedMono + Math.max(0, saved - ackedWriteBoundMs(binding.profile.timing));
}
