import { distribution, round, type Distribution } from './stats.js';
import { traceEvent, wallOf } from './trace.js';

/**
 * Where the daemon's time goes, measured inside its process without changing it: the methods
 * of the journal and the Modbus endpoint's request queue (and the HTTP and MQTT answers) are
 * wrapped on their prototypes before the daemon is built. A wrapper adds two
 * `performance.now()` calls (well under a microsecond); a method that returns a promise (a commit shared by a group) is timed until
 * it settles. Names found at run time are reported as they are, so a renamed or new journal
 * method shows up under its own name.
 */

interface MethodStats {
  calls: number;
  totalMs: number;
  maxMs: number;
}

export interface MethodReport {
  readonly calls: number;
  readonly totalMs: number;
  readonly meanMs: number;
  readonly maxMs: number;
}

export interface ModbusReport {
  /** How the endpoint was instrumented: its request queue, or only its public methods. */
  readonly instrumented: 'request queue' | 'public methods' | 'none';
  /** Read requests sent: a block read that serves several read calls counts once. */
  readonly reads: number;
  readonly writes: number;
  /** Read calls those requests served (as many as `reads` when nothing is combined). */
  readonly readJobs: number;
  /** From a read or write being queued on the PLC's one connection to the request serving it being sent. */
  readonly queueWaitMs: Distribution | null;
  /** From a request being sent to its answer being handled (event loop included). */
  readonly roundTripMs: Distribution | null;
}

export interface ProbeReport {
  readonly journal: Record<string, MethodReport>;
  readonly modbus: ModbusReport;
}

type AnyFunction = (this: unknown, ...args: unknown[]) => unknown;

const journalStats = new Map<string, MethodStats>();
const modbus = {
  reads: 0,
  writes: 0,
  readJobs: 0,
  queueWait: [] as number[],
  roundTrip: [] as number[],
};
/** When each job was queued on the endpoint (its `enqueue(job)`), for the wait in the queue. */
const queuedAt = new WeakMap<object, number>();
let modbusInstrumented: ModbusReport['instrumented'] = 'none';

function isThenable(value: unknown): value is PromiseLike<unknown> {
  return (
    typeof value === 'object' &&
    value !== null &&
    typeof (value as { then?: unknown }).then === 'function'
  );
}

function record(name: string, ms: number): void {
  let s = journalStats.get(name);
  if (s === undefined) {
    s = { calls: 0, totalMs: 0, maxMs: 0 };
    journalStats.set(name, s);
  }
  s.calls += 1;
  s.totalMs += ms;
  if (ms > s.maxMs) s.maxMs = ms;
}

/**
 * Wraps every method of a class prototype (the journal, its group commit) but those in
 * `except` (a method that only hands on to one wrapped already); returns the names wrapped.
 */
export function instrumentMethods(prototype: object, except: readonly string[] = []): string[] {
  const names: string[] = [];
  for (const name of Object.getOwnPropertyNames(prototype)) {
    if (name === 'constructor' || except.includes(name)) continue;
    const descriptor = Object.getOwnPropertyDescriptor(prototype, name);
    if (descriptor === undefined || typeof descriptor.value !== 'function') continue;
    const original = descriptor.value as AnyFunction;
    const wrapped = function (this: unknown, ...args: unknown[]): unknown {
      const start = performance.now();
      let result: unknown;
      try {
        result = original.apply(this, args);
      } catch (error) {
        record(name, performance.now() - start);
        throw error;
      }
      if (isThenable(result)) {
        return Promise.resolve(result).finally(() => {
          const end = performance.now();
          traceEvent({ journal: name, start: wallOf(start), end: wallOf(end) });
          record(name, end - start);
        });
      }
      const end = performance.now();
      traceEvent({ journal: name, start: wallOf(start), end: wallOf(end) });
      record(name, end - start);
      return result;
    };
    Object.defineProperty(prototype, name, { ...descriptor, value: wrapped });
    names.push(name);
  }
  return names;
}

/**
 * The Modbus endpoint queues every read and write of a PLC as a job (`enqueue(job)`) and sends
 * each request on its one connection through `request(what, body, jobs)`, where `jobs` are the
 * queued jobs the request serves (several when reads are combined into a block read). Stamping
 * jobs as they are queued and wrapping `body` separates each job's wait in the queue from the
 * request's round trip; reads count requests sent, `readJobs` the read calls they served.
 * Without those methods the public `read` / `writeRegisters` are counted and timed whole.
 */
export function instrumentModbusEndpoint(prototype: object): void {
  const p = prototype as Record<string, unknown>;
  if (typeof p.request === 'function' && typeof p.enqueue === 'function') {
    const enqueue = p.enqueue as AnyFunction;
    p.enqueue = function (this: unknown, job: unknown, ...rest: unknown[]) {
      if (typeof job === 'object' && job !== null) queuedAt.set(job, performance.now());
      return enqueue.call(this, job, ...rest);
    };
    const original = p.request as AnyFunction;
    p.request = function (this: unknown, what: unknown, body: unknown, jobs: unknown) {
      const isWrite = typeof what === 'string' && what.startsWith('write');
      const served: readonly unknown[] = Array.isArray(jobs) ? jobs : [];
      const timed =
        typeof body === 'function'
          ? async (...bodyArgs: unknown[]): Promise<unknown> => {
              const sent = performance.now();
              for (const job of served) {
                const at = typeof job === 'object' && job !== null ? queuedAt.get(job) : undefined;
                if (at !== undefined) modbus.queueWait.push(sent - at);
              }
              if (isWrite) {
                modbus.writes += 1;
              } else {
                modbus.reads += 1;
                modbus.readJobs += served.length;
              }
              try {
                return await (body as (...a: unknown[]) => Promise<unknown>)(...bodyArgs);
              } finally {
                const answered = performance.now();
                traceEvent({
                  modbus: String(what),
                  jobs: served.length,
                  start: wallOf(sent),
                  end: wallOf(answered),
                });
                modbus.roundTrip.push(answered - sent);
              }
            }
          : body;
      return original.call(this, what, timed, jobs);
    };
    modbusInstrumented = 'request queue';
    return;
  }
  for (const [name, isWrite] of [
    ['read', false],
    ['writeRegisters', true],
  ] as const) {
    if (typeof p[name] !== 'function') continue;
    const original = p[name] as AnyFunction;
    p[name] = async function (this: unknown, ...args: unknown[]): Promise<unknown> {
      const start = performance.now();
      if (isWrite) {
        modbus.writes += 1;
      } else {
        modbus.reads += 1;
        modbus.readJobs += 1;
      }
      try {
        return await original.apply(this, args);
      } finally {
        modbus.roundTrip.push(performance.now() - start);
      }
    };
    modbusInstrumented = 'public methods';
  }
}

/**
 * When each HTTP answer (`ServerResponse#end`) and each MQTT publish (`MqttClient#publish`) left
 * the daemon, as probe events beside the journal's and the PLC's in a timeline or a trace: what
 * the daemon did between a command's settlement barrier and the client's answer (the step
 * "answer" of bench/phases/steps.ts runs to the client's own clock). A wrapper adds two
 * `performance.now()` calls per answer.
 */
export function instrumentAnswers(
  response: { end: (...args: never[]) => unknown },
  mqttClient: { publish: (...args: never[]) => unknown },
): void {
  const end = response.end as AnyFunction;
  response.end = function (this: unknown, ...args: unknown[]): unknown {
    const start = performance.now();
    const result = end.apply(this, args);
    const status = (this as { statusCode?: unknown }).statusCode;
    traceEvent({
      http: `end ${String(status)}`,
      start: wallOf(start),
      end: wallOf(performance.now()),
    });
    return result;
  };
  const publish = mqttClient.publish as AnyFunction;
  mqttClient.publish = function (this: unknown, ...args: unknown[]): unknown {
    const start = performance.now();
    const result = publish.apply(this, args);
    traceEvent({ mqtt: String(args[0]), start: wallOf(start), end: wallOf(performance.now()) });
    return result;
  };
}

export function resetProbes(): void {
  journalStats.clear();
  modbus.reads = 0;
  modbus.writes = 0;
  modbus.readJobs = 0;
  modbus.queueWait = [];
  modbus.roundTrip = [];
}

export function probeReport(): ProbeReport {
  const journal: Record<string, MethodReport> = {};
  for (const [name, s] of journalStats) {
    journal[name] = {
      calls: s.calls,
      totalMs: round(s.totalMs),
      meanMs: round(s.totalMs / s.calls),
      maxMs: round(s.maxMs),
    };
  }
  return {
    journal,
    modbus: {
      instrumented: modbusInstrumented,
      reads: modbus.reads,
      writes: modbus.writes,
      readJobs: modbus.readJobs,
      queueWaitMs: modbus.queueWait.length === 0 ? null : distribution(modbus.queueWait),
      roundTripMs: modbus.roundTrip.length === 0 ? null : distribution(modbus.roundTrip),
    },
  };
}
