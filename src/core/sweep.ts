import type { Clock } from './clock.js';
import type { CommandRef, Journal, OpenRef } from './journal.js';
import { interruptedTargets, refId, type Lane } from './lane.js';
import type { Logger } from './logger.js';
import { summarizeOpen, type DeviceTiming, type OpenCommands } from './open-commands.js';

/** What the sweep needs from the pipeline. */
export interface SweepHost {
  readonly journal: Journal;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly lanes: ReadonlyMap<string, Lane>;
  /** True once the pipeline stops taking commands. */
  closed(): boolean;
  startWorker(lane: Lane): void;
  /** A stop preempts what its device holds from before it (preemption.ts, SPEC §2). */
  stopPreempts(lane: Lane, stop: CommandRef, log: Logger): void;
  /** An event in the command's history without a transition (recovery's). */
  note(record: CommandRef & { readonly device: string }, detail: string): void;
}

/** Each device's confirm timeout and unreachable grace, as its worker uses them (the stuck rule's). */
export function deviceTimings(lanes: ReadonlyMap<string, Lane>): Map<string, DeviceTiming> {
  const timings = new Map<string, DeviceTiming>();
  for (const [id, lane] of lanes) {
    timings.set(id, {
      confirmTimeoutMs: lane.binding.profile.timing.confirmTimeoutMs,
      unreachableGraceMs: lane.unreachableGraceMs,
    });
  }
  return timings;
}

/**
 * The open commands of the journal, and the sweep that takes up those without a live worker:
 * at start (recovery, I5) and at the sweep's pace after (a journal stall, a failure).
 */
export class Sweep {
  private readonly host: SweepHost;
  /** Open commands already reported as beyond reach (device not configured): logged once. */
  private readonly orphansReported = new Set<string>();

  constructor(host: SweepHost) {
    this.host = host;
  }

  /**
   * Takes up every open command that has no live worker: a command left open by a journal
   * stall, by a failure, or by an earlier life of the daemon. Dispatched commands go first on
   * their device (the device's queue never moves past one, I1). On a device with nothing live
   * (after a restart, every device), the commands are taken as they were accepted, and an open
   * stop preempts what was accepted before it as it did when it came (SPEC §2): the command it
   * interrupts is judged again after it, the ones never written are superseded — an earlier
   * life may have died between the stop's acceptance and either. Idempotent: commands queued
   * or in flight are left alone. Returns how many open commands the journal holds.
   */
  run(): number {
    const { journal, lanes, logger } = this.host;
    let open: OpenRef[];
    try {
      open = journal.listOpenRefs();
    } catch (error) {
      logger.warn({ err: error }, 'sweep: the journal cannot be read; trying again later');
      return 0;
    }
    const live = new Set<string>();
    const idle = new Set<Lane>();
    for (const lane of lanes.values()) {
      for (const ref of lane.queue) live.add(refId(ref));
      if (lane.inFlight !== null) live.add(refId(lane.inFlight));
      // Its end being made durable: its worker decides next.
      if (lane.ending !== null) live.add(refId(lane.ending));
      if (lane.unresolved !== null) live.add(refId(lane.unresolved));
      // Preempted by a stop: taken up again once the stop is terminal.
      for (const target of interruptedTargets(lane)) live.add(refId(target));
      if (
        lane.queue.length === 0 &&
        lane.inFlight === null &&
        lane.unresolved === null &&
        lane.interrupted === null
      ) {
        idle.add(lane);
      }
    }
    // In the order they were accepted (listOpenRefs' order); a dispatched command goes to the
    // head of its device's queue wherever it stands in that order.
    for (const record of open) {
      if (live.has(refId(record))) continue;
      const lane = lanes.get(record.device);
      if (lane === undefined) {
        this.reportOrphan(record);
        continue;
      }
      const ref = { scope: record.scope, key: record.key };
      // Only on a device with nothing live: its queue then holds what this sweep placed, all
      // accepted before the stop. A stop found beside live commands had its preemption when
      // it was accepted (submit) in this life.
      if (record.action === 'stop' && idle.has(lane)) this.stopPreempts(lane, record);
      if (record.state === 'dispatched' && lane.unresolved === null && lane.inFlight === null) {
        lane.unresolved = ref;
      } else if (record.state === 'dispatched') {
        lane.queue.unshift(ref);
      } else {
        lane.queue.push(ref);
      }
      live.add(refId(record));
    }
    if (!this.host.closed()) {
      for (const lane of lanes.values()) {
        if (lane.unresolved !== null || lane.queue.length > 0) this.host.startWorker(lane);
      }
    }
    return open.length;
  }

  /**
   * Open commands by state and age, and the stuck ones (SPEC §2), for metrics and readiness: by
   * the journal alone, as `sluicectl stuck` and the status page judge them (open-commands.ts),
   * so that they agree. A command recovery took up, or a stop paused, counts from the end of
   * the window its history gives; one of a device no longer configured from its deadline.
   */
  openCommands(): OpenCommands {
    const { journal, lanes } = this.host;
    return summarizeOpen(journal.listOpen(), this.host.clock.now(), {
      devices: deviceTimings(lanes),
      journal,
    });
  }

  /** A stop taken up: what its device holds from before it is preempted (preemption.ts). */
  private stopPreempts(lane: Lane, stop: OpenRef): void {
    const log = this.host.logger.child({ key: stop.key, device: stop.device, scope: stop.scope });
    try {
      this.host.stopPreempts(lane, { scope: stop.scope, key: stop.key }, log);
    } catch (error) {
      // The journal cannot be read: the stop is still taken up, and runs first when it can.
      log.error({ err: error }, 'sweep: the stop could not preempt the commands before it');
    }
  }

  private reportOrphan(record: OpenRef): void {
    const id = refId(record);
    if (this.orphansReported.has(id)) return;
    this.orphansReported.add(id);
    this.host.logger.warn(
      { key: record.key, device: record.device },
      'open command for a device no longer configured; stuck until an operator resolves it',
    );
    this.host.note(
      record,
      'recovery: the device is not in the configuration; stuck until an operator resolves it',
    );
  }
}
