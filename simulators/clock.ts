/**
 * Time for the simulated plant. Physical travel runs on the time source (real time by
 * default); each PLC reports its own controller clock derived from it with an offset and a
 * drift, the way an unsynchronised PLC real-time clock wanders away from the gateway's.
 */

/** Where the plant reads "now" (epoch ms). Tests inject a ManualTime to step deterministically. */
export interface TimeSource {
  now(): number;
}

export const realTime: TimeSource = { now: () => Date.now() };

/** A time source that only moves when told to. */
export class ManualTime implements TimeSource {
  #now: number;

  constructor(start: number = Date.UTC(2026, 10, 23, 17, 0, 0)) {
    this.#now = start;
  }

  now(): number {
    return this.#now;
  }

  advance(ms: number): number {
    if (!Number.isFinite(ms) || ms < 0) throw new RangeError(`cannot advance by ${ms} ms`);
    this.#now += ms;
    return this.#now;
  }

  set(epochMs: number): void {
    this.#now = epochMs;
  }
}

export interface ClockSettings {
  /** Constant offset from the time source, in ms. */
  offsetMs: number;
  /** Rate error in parts per million: +100 gains 0.1 ms per real second. */
  driftPpm: number;
}

/**
 * controller time = now + offsetMs + driftPpm·(now − anchor)/1e6.
 * Setting the clock re-anchors the drift, so after `set({ offsetMs: 5000, driftPpm: 50 })` the
 * controller reads exactly now + 5 s and wanders from there, as if an operator had just set
 * the PLC's clock.
 */
export class ControllerClock {
  readonly #time: TimeSource;
  #settings: ClockSettings;
  #anchor: number;

  constructor(time: TimeSource, settings: ClockSettings) {
    this.#time = time;
    this.#settings = { ...settings };
    this.#anchor = time.now();
  }

  get settings(): ClockSettings {
    return { ...this.#settings };
  }

  /** `anchorAt`: the time-source reading the drift restarts from (default now). */
  set(settings: ClockSettings, anchorAt: number = this.#time.now()): void {
    this.#settings = { ...settings };
    this.#anchor = anchorAt;
  }

  /** Controller time for a given time-source reading (epoch ms, integer). */
  at(now: number): number {
    const { offsetMs, driftPpm } = this.#settings;
    return Math.round(now + offsetMs + (driftPpm * (now - this.#anchor)) / 1e6);
  }

  now(): number {
    return this.at(this.#time.now());
  }
}
