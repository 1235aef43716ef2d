import type { RegisterTable } from '../core/profile-modbus.js';

/**
 * The request queue of one Modbus connection, as data: the jobs waiting for the connection,
 * which queued reads one request can serve together, and each read's share of the answer.
 * Pure: the endpoint (modbus.ts) owns the connection and the pump that sends the requests.
 *
 * Industrial drivers read blocks rather than one request per tag (Kepware's block reads,
 * Ignition's "span gaps"): on a PLC with many devices the one connection's queue, not the
 * PLC, is the bottleneck, and one request for a block costs about what one small read costs.
 */

/** Combining of concurrent reads, per PLC (configuration: plcs.<name>.combineReads). */
export interface CombineReads {
  readonly enabled: boolean;
  /** Unread registers (or bits) allowed between a block and a read that joins it. */
  readonly maxGap: number;
}

export const COMBINE_READS_DEFAULTS: CombineReads = { enabled: true, maxGap: 16 };

/** Registers per FC3/FC4 request and bits per FC1/FC2 request (Modbus Application Protocol §6.1–6.4). */
export const MAX_REGISTERS = 125;
export const MAX_BITS = 2000;

export function requestLimit(table: RegisterTable): number {
  return table === 'coil' || table === 'discrete' ? MAX_BITS : MAX_REGISTERS;
}

interface QueuedJob {
  readonly signal: AbortSignal | undefined;
  readonly reject: (error: Error) => void;
  /** Told, when the request serving the job is sent, how long the job waited in the queue (ms). */
  readonly sent?: ((waitedMs: number) => void) | undefined;
  /** Monotonic time (the endpoint's clock) at which the job was queued; set with `sent`. */
  readonly queuedMono?: number | undefined;
  /**
   * Who queued the job: the device whose registers it reads or writes. A read may be served
   * before a write queued ahead of it only when both name their owner and the owners differ
   * (see takeReadBlock); without one, a job keeps its place behind every write.
   */
  readonly owner?: string | undefined;
}

export interface ReadJob extends QueuedJob {
  readonly kind: 'read';
  readonly table: RegisterTable;
  readonly address: number;
  readonly length: number;
  /** Coils and discrete inputs as 0 / 1. */
  readonly resolve: (values: number[]) => void;
}

export interface WriteJob extends QueuedJob {
  readonly kind: 'write';
  readonly address: number;
  readonly values: readonly number[];
  /** Wall-clock ms past which it is not sent (CommandWrite.notAfter). */
  readonly notAfter: number | undefined;
  /** Monotonic ms (the endpoint's clock) past which it is not sent (CommandWrite.timeLeftMs). */
  readonly notAfterMono: number | undefined;
  /** Once aborted, it is not sent (CommandWrite.withdrawn). */
  readonly withdrawn: AbortSignal | undefined;
  readonly resolve: () => void;
}

export type ModbusJob = ReadJob | WriteJob;

/** One read request and the jobs it serves, in queue order (the first one was the head). */
export interface ReadBlock {
  readonly table: RegisterTable;
  readonly start: number;
  readonly length: number;
  readonly jobs: readonly ReadJob[];
}

/**
 * Takes the read at the head of `queue` off it, with every queued read that one request can
 * serve with it (`maxGap` null: none). A read joins when it
 * - never overtakes a write to its own device: it sits before the first queued write, or every
 *   write queued before it belongs to another device (both jobs name their owner). So a
 *   device's read cannot miss what its own write changed, while the valves of one PLC do not
 *   wait for each other's writes: another device's write only changes registers this read does
 *   not ask for, and a read that overtakes it is as fresh as one queued a moment earlier (its
 *   request is sent after it was queued, which is all freshness asks, SPEC §6). A write or a
 *   read without an owner keeps the plain order;
 * - is on the same table and not aborted;
 * - lies within `maxGap` of the block built so far (overlap and adjacency always qualify);
 * - keeps the block within the protocol's limit for one request.
 * Passes repeat until none joins: a read too far from the head may be near a read that joined.
 */
export function takeReadBlock(queue: ModbusJob[], maxGap: number | null): ReadBlock {
  const head = queue[0];
  if (head?.kind !== 'read') throw new Error('takeReadBlock: the queue does not start with a read');
  let start = head.address;
  let end = head.address + head.length;
  const candidates: ModbusJob[] = [];
  const writers = new Set<string>();
  for (const job of queue.slice(1)) {
    if (job.kind === 'write') {
      // A write without an owner holds back every read behind it.
      if (job.owner === undefined) break;
      writers.add(job.owner);
      continue;
    }
    if (writers.size > 0 && (job.owner === undefined || writers.has(job.owner))) continue;
    candidates.push(job);
  }
  const taken = new Set<ModbusJob>([head]);
  if (maxGap !== null) {
    const limit = requestLimit(head.table);
    let joined = true;
    while (joined) {
      joined = false;
      for (const job of candidates) {
        if (taken.has(job) || job.kind !== 'read' || job.table !== head.table) continue;
        if (job.signal?.aborted === true) continue;
        const jobEnd = job.address + job.length;
        // Negative when they overlap, 0 when adjacent.
        const gap = Math.max(job.address - end, start - jobEnd);
        const spanStart = Math.min(start, job.address);
        const spanEnd = Math.max(end, jobEnd);
        if (gap > maxGap || spanEnd - spanStart > limit) continue;
        start = spanStart;
        end = spanEnd;
        taken.add(job);
        joined = true;
      }
    }
  }
  const jobs = queue.filter((job): job is ReadJob => taken.has(job));
  const rest = queue.filter((job) => !taken.has(job));
  queue.splice(0, queue.length, ...rest);
  return { table: head.table, start, length: end - start, jobs };
}

/** A block of one job: what a read sent on its own asks for. */
export function aloneBlock(job: ReadJob): ReadBlock {
  return { table: job.table, start: job.address, length: job.length, jobs: [job] };
}

/** A job's share of its block's answer: exactly what the job would have read on its own. */
export function sliceFor(block: ReadBlock, job: ReadJob, values: readonly number[]): number[] {
  const from = job.address - block.start;
  return values.slice(from, from + job.length);
}
