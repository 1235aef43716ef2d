import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * `SLUICE_BENCH_TRACE=DIR npm run bench`: every daemon the bench starts writes, at its exit,
 * `DIR/daemon-<pid>.jsonl` — one line per journal method call and per Modbus request, with
 * wall-clock start and end times (ms, sub-millisecond) comparable with the journal's own
 * timestamps and the simulator's write log — and the plant writes `DIR/plant-<pid>.json`, the
 * write log of every device (arrival and the scan that took each write). Joined on the
 * journal's commands (device, seq, accepted/dispatched/settled), they show where one command's
 * time went, request by request; the bench writes each end-to-end series (key, sent and answered,
 * wall-clock ms) as `DIR/series-<intake>.json`, which puts the client's two ends beside them. Off
 * unless set; bounded to MAX_EVENTS per process.
 */
export const TRACE_DIR = process.env.SLUICE_BENCH_TRACE;

const MAX_EVENTS = 2_000_000;
/** A timeline holds at most this many events (an end-to-end series makes ~50 per command). */
const MAX_TIMELINE = 200_000;

/**
 * Wall-clock ms with the sub-millisecond part: Date.now() minus performance.now(), read at the
 * moment Date.now() ticks to its next millisecond. A tick is only used when the reading before
 * it was at most TICK_STEP_MS earlier, so that the tick is placed within that step: a process
 * preempted while it watches (a daemon starting beside the plant on two busy cores) would
 * otherwise see the tick late and place every event of its run up to a millisecond early
 * against the client's clock and the plant's write log. The median of a few ticks is taken.
 */
const TICK_STEP_MS = 0.02;
const wallOffset = ((): number => {
  const offsets: number[] = [];
  for (let ticks = 0; ticks < 50 && offsets.length < 5; ticks++) {
    const start = Date.now();
    let before = performance.now();
    for (let i = 0; i < 10_000_000; i++) {
      const perf = performance.now();
      const now = Date.now();
      if (now !== start) {
        if (now === start + 1 && perf - before <= TICK_STEP_MS) offsets.push(now - perf);
        break;
      }
      before = perf;
    }
  }
  offsets.sort((a, b) => a - b);
  return offsets[Math.floor(offsets.length / 2)] ?? Date.now() - performance.now();
})();

/** A performance.now() reading as wall-clock ms. */
export const wallOf = (perfNow: number): number => wallOffset + perfNow;

const events: string[] = [];
let dropped = 0;

/**
 * One probe event: a journal call (`journal`: its method), a Modbus request (`modbus`: what
 * it read or wrote, `jobs`: the queued reads and writes it served), an HTTP answer's `end()`
 * (`http`) or an MQTT publish (`mqtt`: its topic), with wall-clock start and end (ms).
 */
export interface ProbeEvent {
  readonly journal?: string;
  readonly modbus?: string;
  readonly jobs?: number;
  readonly http?: string;
  readonly mqtt?: string;
  readonly start: number;
  readonly end: number;
}

/** The events since startTimeline(), kept in memory for the bench to take; null: none kept. */
let timeline: ProbeEvent[] | null = null;

/** Keeps every probe event from now on (bounded) until takeTimeline(). */
export function startTimeline(): void {
  timeline = [];
}

/** The events kept since startTimeline(), in the order they ended; stops keeping them. */
export function takeTimeline(): ProbeEvent[] {
  const kept = timeline ?? [];
  timeline = null;
  return kept;
}

export function traceEvent(event: ProbeEvent): void {
  if (timeline !== null && timeline.length < MAX_TIMELINE) timeline.push(event);
  if (TRACE_DIR === undefined) return;
  if (events.length >= MAX_EVENTS) {
    dropped++;
    return;
  }
  events.push(JSON.stringify(event));
}

/** Writes this process's events at its exit, as `DIR/<name>-<pid>.jsonl`. */
export function writeTraceAtExit(name: string): void {
  if (TRACE_DIR === undefined) return;
  const dir = TRACE_DIR;
  process.on('exit', () => {
    mkdirSync(dir, { recursive: true });
    if (dropped > 0) events.push(JSON.stringify({ dropped }));
    writeFileSync(join(dir, `${name}-${process.pid}.jsonl`), events.join('\n') + '\n');
  });
}

/** Writes `DIR/<file>` as JSON now (the bench's own records, such as a series' send times). */
export function writeTraceFile(file: string, value: unknown): void {
  if (TRACE_DIR === undefined) return;
  mkdirSync(TRACE_DIR, { recursive: true });
  writeFileSync(join(TRACE_DIR, file), JSON.stringify(value));
}
