import type { FsyncCounts } from './fsync-counter.js';
import type { Machine } from './machine.js';
import type { MethodReport, ModbusReport } from './probes.js';
import type { Distribution } from './stats.js';

/**
 * bench/results.json: one run, every figure a percentile or a ratio from that run. A section
 * that could not run says why in `skipped` instead of carrying numbers.
 */

export interface Skipped {
  readonly skipped: string;
}

export interface Baseline {
  readonly simulator: {
    /** One raw FC3 read of a valve's status block, sequential, one connection. */
    readonly readMs: Distribution;
    /** Raw reads per second over parallel connections for `seconds`. */
    readonly capacity: {
      readonly connections: number;
      readonly seconds: number;
      readonly requestsPerSecond: number;
      /** CPU the simulator used per second of that load (1 = one core). */
      readonly cpuCores: number;
    };
  };
  /**
   * The scratch filesystem alone (where the journals live): a 4 KiB overwrite of a file that
   * does not grow, then fsync, as a WAL commit of a journal that has reached its size does.
   * Absent in results from before it was measured.
   */
  readonly disk?: {
    readonly fsyncMs: Distribution;
    /** The same flush after `idleMs` of idle (one scan), as a lone command's settlement. */
    readonly fsyncAfterIdleMs?: Distribution;
    readonly idleMs?: number;
    readonly bytes: number;
  };
  readonly modbus: DriverRoundTrip;
  readonly opcua: DriverRoundTrip | Skipped;
  readonly plant: {
    readonly scanMs: number;
    readonly travelMs: number;
    /** Plant time from a write to the image that confirms it: half a scan + one scan. */
    readonly expectedMeanMs: number;
    readonly expectedMaxMs: number;
    /** Controller ms from a write's arrival to the scan that took it (write log). */
    readonly takeWaitMs: Distribution;
  };
}

export interface DriverRoundTrip {
  readonly confirmMs: Distribution;
  readonly ackMs: Distribution;
  readonly readsPerCommand: number;
  /**
   * The bench process's CPU per request of the series (writes and reads; the waits between
   * commands cost none): what one request costs the driver in Node. Absent in older results.
   */
  readonly cpuMsPerRequest?: number;
}

export interface StageTimes {
  /** Means from the journal's timestamps (ms resolution) and the client's clock. */
  readonly intakeMs: number;
  readonly acceptedToDispatchedMs: number;
  readonly dispatchedToSettledMs: number;
  /**
   * dispatched → settled split at the scan that took the write (the simulator's write log, on
   * the same machine's clock): the dispatch commit, the write and the wait for that scan; then
   * the readback that saw it and the settlement. null when the write log had none of them.
   */
  readonly dispatchedToTakenMs: number | null;
  readonly takenToSettledMs: number | null;
  readonly settledToAnswerMs: number;
}

/** One step of a confirmed command (bench/phases/steps.ts): median and mean over the series. */
export interface StepTime {
  readonly step: string;
  readonly p50Ms: number;
  readonly meanMs: number;
}

/** A one-at-a-time series step by step, from the daemon's probes; the means add up to the latency's. */
export interface CommandSteps {
  /** Confirmed commands of the series whose every step was found. */
  readonly commands: number;
  /** Their latency's mean: what the steps' means add up to. */
  readonly latencyMeanMs: number;
  /** Per command, the sum of the steps that wait for another party (steps.ts WAITS)... */
  readonly waitsMs: Distribution;
  /** ...and of the others: the daemon's own work and scheduling. */
  readonly ownMs: Distribution;
  readonly steps: readonly StepTime[];
}

export interface DaemonLoad {
  readonly seconds: number;
  readonly eventLoopUtilisation: number;
  readonly cpuCores: number;
  readonly journal: Record<string, MethodReport>;
  readonly modbus: ModbusReport;
  readonly fsyncs: FsyncCounts | Skipped;
}

export interface IntakeLatency {
  readonly latencyMs: Distribution;
  /** e2e ÷ raw driver round trip, at p50 and p99. */
  readonly ratioP50: number;
  readonly ratioP99: number;
  /** e2e − raw driver round trip: the bridge's own time. */
  readonly overheadP50Ms: number;
  readonly overheadP99Ms: number;
  readonly notConfirmed: number;
  readonly stages: StageTimes | Skipped;
  readonly steps: CommandSteps | Skipped;
  readonly daemon: DaemonLoad;
}

export interface ReplayLatency {
  readonly latencyMs: Distribution;
  readonly notReplayed: number;
  readonly controllerWrites: number;
  readonly daemon: DaemonLoad;
  /** The replays against the CPU waits of the daemon's and the bench's main threads. */
  readonly cpuWait: CpuWait | Skipped;
}

/**
 * Each sample read against the run-queue waits (bench/schedstat.ts) of the main threads it
 * runs on — the daemon's, the bench client's and, over MQTT, the broker's: which of the slow
 * samples include time in which one of them had work and no CPU.
 */
export interface CpuWait {
  /** A sample counts as waited when its threads waited this long or more in all. */
  readonly thresholdMs: number;
  /** Mean wait per sample of each thread (ms), by name: daemon, bench, broker. */
  readonly msPerSample: Readonly<Record<string, number>>;
  /** Samples over the target (ms), and how many of them waited. */
  readonly targetMs: number;
  readonly overTarget: number;
  readonly overTargetWaited: number;
  /** The samples that did not wait. */
  readonly withoutWaitMs: Distribution;
}

export interface Throughput {
  /** The intake the clients sent their commands over (absent in results from before: HTTPS). */
  readonly intake?: 'https' | 'mqtt';
  readonly clients: number;
  readonly valves: number;
  readonly seconds: number;
  readonly confirmed: number;
  readonly confirmedPerSecond: number;
  /** Share of the machine's CPU time stolen by the hypervisor during the window (see Machine). */
  readonly stealShare?: number | null;
  readonly latencyMs: Distribution;
  readonly failures: Record<string, number>;
  readonly mqttConnected: boolean;
  readonly fsyncsPerCommand: number | null;
  readonly fsyncMsPerCommand: number | null;
  readonly modbusRequestsPerCommand: number;
  /** What would bound throughput if nothing else did, from this run's own figures. */
  readonly ceilings: {
    /** One request in flight per PLC: 1 / (requests per command × the simulator's read p50). */
    readonly plcConnectionPerSecond: number;
    /** Commits one after another on the main thread: 1 / (fsync time per command). */
    readonly serialFsyncsPerSecond: number | null;
  };
  readonly cpuCores: {
    readonly daemon: number;
    readonly simulator: number;
    readonly broker: number | null;
    readonly bench: number;
  };
  readonly daemon: DaemonLoad;
  /**
   * What a confirmed command costs the machine's cores, every process counted, and what that
   * leaves the daemon at the target's rate. Absent in results from before it was measured.
   */
  readonly cpuBudget?: CpuBudget;
  /** The daemon's HTTPS intake under the same clients with the lightest request it serves. */
  readonly intakeAlone?: IntakeAlone;
}

export interface CpuBudget {
  /** The machine's cores (logical CPUs). */
  readonly cores: number;
  /** CPU ms per confirmed command of each process in the window (broker: null without one). */
  readonly msPerCommand: {
    readonly daemon: number;
    readonly simulator: number;
    readonly broker: number | null;
    readonly bench: number;
  };
  /** cores ÷ the sum of all four: the rate at which this machine's cores would all be busy. */
  readonly coresPerSecond: number;
  /** The rate the target asks for (confirmed commands per second). */
  readonly targetPerSecond: number;
  /** Cores the simulator, broker and bench clients would take at the target's rate. */
  readonly othersCoresAtTarget: number;
  /** CPU ms per command left to the daemon at the target's rate (cores minus the others'). */
  readonly daemonBudgetMs: number;
  /** The raw Modbus driver's CPU per request (baseline) × the Modbus requests per command. */
  readonly modbusMs: number | null;
  /**
   * The daemon's main-thread ms per command in the journal's synchronous work: its writes
   * (every claim, dispatch and settlement goes through `write`), the batches' commits and the
   * lookups (`get`). Null when the journal was not instrumented.
   */
  readonly journalMs: number | null;
}

export interface IntakeAlone {
  /** GET /v1/commands/{key} of a settled key of the client's own: TLS, HTTP, auth, a lookup. */
  readonly request: string;
  readonly clients: number;
  readonly seconds: number;
  readonly answered: number;
  readonly perSecond: number;
  readonly latencyMs: Distribution;
  readonly failures: Record<string, number>;
  readonly eventLoopUtilisation: number;
  /** CPU ms per answered request: the daemon's and the bench clients'. */
  readonly daemonCpuMs: number;
  readonly benchCpuMs: number;
}

export interface ScalePoint {
  readonly keys: number;
  readonly fileBytes: number;
  readonly bytesPerCommand: number;
  readonly claimMs: Distribution;
  readonly lookupMs: Distribution;
  readonly dispatchMs: Distribution;
  readonly settleMs: Distribution;
}

export interface JournalScale {
  readonly templates: number;
  readonly fill: { readonly method: string; readonly seconds: number };
  readonly small: ScalePoint;
  readonly large: ScalePoint;
  readonly lookupP99Ratio: number;
  readonly claimP99Ratio: number;
  readonly daemon: {
    readonly listenMs: number | null;
    readonly rssMiB: number;
    readonly peakRssMiB: number;
    readonly commands: number;
    readonly commandLatencyMs: Distribution;
    readonly lookups: number;
    readonly lookupLatencyMs: Distribution;
  };
}

export interface Recovery {
  readonly commands: number;
  readonly valves: number;
  /** Dispatched when the daemon stopped: one per valve, in doubt. */
  readonly inDoubt: number;
  /** Of those, written to the controller before the stop. */
  readonly inDoubtWritten: number;
  readonly listenEmptyMs: number | null;
  readonly listenMs: number | null;
  readonly inDoubtWrittenSettledMs: number | null;
  readonly inDoubtUnwrittenSettledMs: number | null;
  readonly allSettledMs: number | null;
  readonly stillOpen: number;
  /** How long the bench waited for the backlog. */
  readonly timeoutSeconds: number;
  /** Commands settled per second, from the start to the last settlement. */
  readonly settledPerSecond: number | null;
  readonly outcomes: Record<string, number>;
  readonly redispatched: number;
  readonly redispatchGuardMs: number;
  /**
   * The profile's confirm timeout: a restarted daemon proves a write an earlier life sent not
   * applied no sooner than this after its journal lock (earlier-write-bounds.ts). Absent from
   * results written before it was recorded.
   */
  readonly confirmTimeoutMs?: number;
  /**
   * The profile's `timing.ackedWriteTakenWithinMs` (null: none stated, the confirm timeout is
   * the bound): the wait from the lock is max(request timeout, this - guard) + guard. Absent
   * from results written before the field existed.
   */
  readonly ackedWriteTakenWithinMs?: number | null;
  /** The daemon from its first answer until the backlog was worked off (or the bench gave up). */
  readonly load: DaemonLoad;
}

export interface Target {
  readonly name: string;
  readonly target: string;
  readonly measured: string;
  readonly pass: boolean | null;
}

export interface Results {
  readonly version: 1;
  readonly startedAt: string;
  readonly durationSeconds: number;
  readonly machine: Machine;
  readonly settings: Record<string, number | boolean | string>;
  readonly fsyncCounting: string;
  readonly baseline: Baseline;
  readonly endToEnd: { readonly https: IntakeLatency; readonly mqtt: IntakeLatency | Skipped };
  readonly replay: { readonly https: ReplayLatency; readonly mqtt: ReplayLatency | Skipped };
  readonly throughput: Throughput;
  /** The same over MQTT (absent in results from before it was measured). */
  readonly throughputMqtt?: Throughput | Skipped;
  readonly recovery: Recovery;
  /**
   * The same recovery on the shipped profile as it is (no bound stated: the confirm timeout).
   * Absent from results written before 2026-12-06's second run.
   */
  readonly recoveryShipped?: Recovery | Skipped;
  readonly journalScale: JournalScale;
  readonly targets: readonly Target[];
}

export function isSkipped(value: object): value is Skipped {
  return 'skipped' in value;
}
