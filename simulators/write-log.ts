/**
 * The full write log of one device: every received write that touched the sequence number,
 * in arrival order, with what became of it. A device without a sequence number (Modbus
 * layout `limit-switch`: a bare command register) logs every command written to it, each
 * with seq 0, so that `countSeq(0)` counts them all. The command log (last 100 handled writes) is for
 * a quick look; this one is the ground truth for long campaigns, so it is large, bounded (a
 * ring, the oldest entries dropped and counted) and keeps an exact per-seq tally that does not
 * depend on the ring's capacity.
 */
import type { CommandOutcome } from './controller.js';

/** How a write ended: a scan took it, or it was discarded before one could. */
export type WriteOutcome =
  | CommandOutcome
  /** Discarded because more than MAX_PENDING_WRITES waited for a scan. */
  | 'overrun'
  /** Discarded by a power cycle while waiting for a scan (volatile memory lost). */
  | 'power-cycle';

export interface WriteLogEntry {
  /** Controller time (epoch ms) when the write arrived. */
  receivedAt: number;
  /**
   * How long the request that carried the write was on the link before it reached the
   * controller, from its arrival at the PLC's front end: held by a link fault (latency `when:
   * before`, a stall) or waiting behind the requests before it on its connection; absent when
   * it went on at once. On a loopback link the master sent it at receivedAt − heldOnLinkMs: how
   * long after its sending a write was taken is what a profile's redispatch guard bounds.
   */
  heldOnLinkMs?: number;
  /** 0 for every write to a device without a sequence number. */
  seq: number;
  /** The command code as written, in the code table of the device's register layout. */
  code: number;
  setpoint: number;
  /** null while the write waits for a scan. */
  outcome: WriteOutcome | null;
  /** Controller time of the scan that took it or of the discard; null while it waits. */
  settledAt: number | null;
}

export const WRITE_LOG_CAPACITY = 100_000;

export class WriteLog {
  readonly capacity: number;
  /** Ring storage; `#start` is the oldest entry once the ring is full. */
  #entries: WriteLogEntry[] = [];
  #start = 0;
  #dropped = 0;
  /** Received writes per seq: exact even after the ring dropped their entries. */
  #perSeq = new Map<number, number>();

  constructor(capacity: number = WRITE_LOG_CAPACITY) {
    this.capacity = capacity;
  }

  /** Entries dropped from the ring since the last clear. */
  get dropped(): number {
    return this.#dropped;
  }

  /**
   * Records a received write and returns its entry; the caller settles it later (the entry
   * may have left the ring by then, which is harmless).
   */
  record(
    receivedAt: number,
    seq: number,
    code: number,
    setpoint: number,
    heldOnLinkMs?: number,
  ): WriteLogEntry {
    const entry: WriteLogEntry = {
      receivedAt,
      ...(heldOnLinkMs === undefined ? {} : { heldOnLinkMs }),
      seq,
      code,
      setpoint,
      outcome: null,
      settledAt: null,
    };
    this.#perSeq.set(seq, (this.#perSeq.get(seq) ?? 0) + 1);
    if (this.#entries.length < this.capacity) {
      this.#entries.push(entry);
    } else {
      this.#entries[this.#start] = entry;
      this.#start = (this.#start + 1) % this.capacity;
      this.#dropped += 1;
    }
    return entry;
  }

  /** How many received writes carried `seq` (the I1 ground truth). */
  countSeq(seq: number): number {
    return this.#perSeq.get(seq) ?? 0;
  }

  /** Copies of the entries, oldest first; only those with `seq` when given. */
  entries(seq?: number): WriteLogEntry[] {
    const ordered = [...this.#entries.slice(this.#start), ...this.#entries.slice(0, this.#start)];
    return ordered.filter((e) => seq === undefined || e.seq === seq).map((e) => ({ ...e }));
  }

  clear(): void {
    this.#entries = [];
    this.#start = 0;
    this.#dropped = 0;
    this.#perSeq = new Map();
  }
}

export function settle(entry: WriteLogEntry, outcome: WriteOutcome, at: number): void {
  entry.outcome = outcome;
  entry.settledAt = at;
}
