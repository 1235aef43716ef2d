import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * `SLUICE_BENCH_TRACE=DIR npm run bench`: every daemon the bench starts writes, at its exit,
 * `DIR/daemon-<pid>.jsonl` — one line per journal method call and per Modbus request, with
 * wall-clock start and end times (ms, sub-millisecond) comparable with the journal's own
 * timestamps and the simulator's write log — and the plant writes `DIR/plant-<pid>.json`, the
 * write log of every device (arrival and the scan that took each write). Joined on the
 * journal's commands (device, seq, accepted/dispatched/settled), they show where one command's
 * time went, request by request. Off unless set; bounded to MAX_EVENTS per process.
 */
export const TRACE_DIR = process.env.SLUICE_BENCH_TRACE;

const MAX_EVENTS = 2_000_000;

/** Wall-clock ms with the sub-millisecond part, measured at a tick of Date.now(). */
const wallOffset = ((): number => {
  if (TRACE_DIR === undefined) return 0;
  const start = Date.now();
  let now = start;
  for (let i = 0; i < 10_000_000 && now === start; i++) now = Date.now();
  return now - performance.now();
})();

/** A performance.now() reading as wall-clock ms. */
export const wallOf = (perfNow: number): number => wallOffset + perfNow;

const events: string[] = [];
let dropped = 0;

export function traceEvent(event: Record<string, unknown>): void {
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
