import type { Clock } from './clock.js';
import { takeUpReach } from './earlier-write-bounds.js';
import {
  claimId,
  claimRef,
  type ClaimRef,
  type CommandRef,
  type DispatchedAfter,
  type Journal,
  type OpenPageRef,
  type OpenRef,
  type OpenStopRef,
} from './journal.js';
import { interruptedTargets, refId, type Lane } from './lane.js';
import type { Logger } from './logger.js';
import { countOpen, type DeviceTiming, type OpenCommands } from './open-commands.js';

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
  stopPreempts(lane: Lane, stop: ClaimRef, log: Logger): void;
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
      takeUpReachMs: takeUpReach(lane),
      ...(lane.binding.plc === undefined ? {} : { plc: lane.binding.plc }),
    });
  }
  return timings;
}

/**
 * Rows the periodic sweep reads at most per run, across devices (a device with nothing live is
 * read whole: see Sweep.step). A backlog is worked off beside the intakes: each run holds the
 * event loop for its rows only, a few milliseconds, not for every open command of the gateway
 * (10 µs a row here: 0.1 s a second at ten thousand open commands).
 */
export const SWEEP_PAGE_ROWS = 256;

/**
 * Dispatched commands the periodic sweep reads at most per run, before the pages of the devices'
 * open commands (within SWEEP_PAGE_ROWS): a device has one or two, so a run reads them all, and
 * every dispatched command no worker holds is taken up within a run or two, whatever the backlog
 * of commands never dispatched (see Sweep.step).
 */
export const SWEEP_DISPATCHED_ROWS = 64;

/** What a run knows of the lanes before it reads: the commands held, the lanes holding none. */
interface LiveNow {
  readonly live: Set<string>;
  readonly idle: Set<Lane>;
}

/**
 * The open commands of the journal, and the sweep that takes up those without a live worker:
 * at start (recovery, I5) and at the sweep's pace after (a journal stall, a failure).
 */
export class Sweep {
  private readonly host: SweepHost;
  private readonly pageRows: number;
  /** Open commands already reported as beyond reach (device not configured): logged once. */
  private readonly orphansReported = new Set<string>();
  /** Until a whole read succeeded (recovery's), the periodic runs read everything too. */
  private wholePending = true;
  /** The device the next periodic run begins with (devices by id, in turn). */
  private nextDevice = '';
  /** A device whose open commands a run read part of: the id the next page begins after. */
  private readonly pageAfter = new Map<string, number>();
  private readonly dispatchedRows: number;
  /** Where the next run's pass over the dispatched commands begins: a device, and after what. */
  private dispatchedFrom: { device: string; after: DispatchedAfter | null } = {
    device: '',
    after: null,
  };

  constructor(host: SweepHost, pageRows = SWEEP_PAGE_ROWS, dispatchedRows = SWEEP_DISPATCHED_ROWS) {
    this.host = host;
    this.pageRows = Math.max(1, pageRows);
    this.dispatchedRows = Math.max(1, Math.min(dispatchedRows, this.pageRows));
  }

  /**
   * Takes up every open command that has no live worker: a command left open by a journal
   * stall, by a failure, or by an earlier life of the daemon. Dispatched commands go first on
   * their device (the device's queue never moves past one, I1). On a device with nothing live
   * (after a restart, every device), the commands are taken as they were accepted, and an open
   * stop preempts what was accepted before it as it did when it came (SPEC §2): the command it
   * interrupts is judged again after it, the ones never written are superseded — an earlier
   * life may have died between the stop's acceptance and either. Idempotent: commands queued
   * or in flight are left alone. Reads every open command: recovery's (once, at start).
   * Returns how many open commands the journal holds. Throws what the journal's reads throw
   * (JournalUnavailableError) with nothing taken up: recovery fails closed then (pipeline.ts,
   * recover()).
   */
  run(): number {
    const open = this.host.journal.listOpenRefs();
    const now = this.liveNow();
    this.markSuperseded(open, now);
    this.wholePending = false;
    this.pageAfter.clear();
    // In the order they were accepted (listOpenRefs' order); a dispatched command goes to the
    // head of its device's queue wherever it stands in that order.
    for (const record of open) this.take(record, now);
    this.startWorkers();
    return open.length;
  }

  /**
   * A command accepted before a stop and never written is superseded by it (SPEC §2), whether
   * the stop is still open or already ended: on a device with nothing live (after a restart),
   * each such command is marked with the newest stop claimed after it, and rejected
   * `SUPERSEDED` when its device comes to it (pipeline.ts, drain), never run. Its rejection may
   * have been lost with its batch (a COMMIT that failed) while the stop went on and ended, and
   * the daemon died before it was made again: the journal then holds the stop ended and the
   * command `accepted`, and only this finds it. An open stop preempts as well when taken
   * (take()); the mark says the same. One read of the rows claimed since the oldest such
   * command; none when there is no such command. A failed read throws before anything is taken
   * up: taken up unmarked, such a command ran after its stop.
   */
  private markSuperseded(open: readonly OpenPageRef[], { idle }: LiveNow): void {
    const { journal, lanes } = this.host;
    const candidates = open.filter((r) => {
      const lane = lanes.get(r.device);
      return r.state === 'accepted' && r.action !== 'stop' && lane !== undefined && idle.has(lane);
    });
    const oldest = candidates[0];
    if (oldest === undefined) return;
    const stops = journal.stopsSince(oldest.id);
    if (stops.length === 0) return;
    // The newest stop of each device (stopsSince is in the journal's order).
    const newest = new Map<string, OpenStopRef>();
    for (const stop of stops) newest.set(stop.device, stop);
    for (const record of candidates) {
      const stop = newest.get(record.device);
      if (stop === undefined || stop.id < record.id) continue;
      lanes.get(record.device)?.superseded.set(claimId(record), claimRef(stop));
    }
  }

  /**
   * The periodic sweep: what run() does, a bounded part at a time. First a pass over the
   * dispatched commands (a device's entries with a sequence number: a seek and a row or two),
   * at most `dispatchedRows` of them, going on from there at the next run: these are the
   * commands in doubt (a write may be on the wire) and the ones an operator sees stuck, so one
   * no worker holds (its take-up lost: a dispatch or settlement lost with its journal batch) is
   * taken up within a run or two, not when its device's pages come round again (a backlog of
   * ten thousand: forty runs). Then the devices in turn, each with its own open commands in the
   * journal's order (what run() does is per device: a device's dispatched command first, a
   * stop preempting on a device with nothing live), until about `pageRows` rows are read in
   * all; the next run goes on from there. A device holding live commands is read a page at a
   * time (each command it does not hold is taken up as run() would, whichever run finds it). A
   * device with nothing live is read whole: all its open commands are to be taken up, now, and a
   * stop among them preempts the ones before it; that happens once, after which the device
   * holds them (the pass over the dispatched ones reads such a device whole too, when it finds
   * one of its commands). So every open command is taken up within a few runs of the backlog's
   * length over `pageRows`, every dispatched one within its count over `dispatchedRows`, and no
   * run reads every open command of the gateway. Until recovery's whole read succeeded, reads
   * everything (run()). Returns how many open commands it read.
   */
  step(): number {
    const { journal, lanes, logger } = this.host;
    if (this.wholePending) {
      try {
        return this.run();
      } catch (error) {
        logger.warn({ err: error }, 'sweep: the journal cannot be read; trying again later');
        return 0;
      }
    }
    const now = this.liveNow();
    let read = 0;
    try {
      const devices = new Set(lanes.keys());
      // A device no longer configured holds open commands an earlier life left (recovery
      // reported them): the index names them without reading their rows.
      for (const device of journal.openDevices()) devices.add(device);
      const order = [...devices].sort();
      const whole = new Set<string>();
      read += this.dispatchedPass(order, now, whole);
      read += this.devicePass(order, now, whole, read);
    } catch (error) {
      logger.warn({ err: error }, 'sweep: the journal cannot be read; trying again later');
    }
    this.startWorkers();
    return read;
  }

  /**
   * The dispatched commands, device by device from where the last run's pass stopped, at most
   * `dispatchedRows`. A device with nothing live is read whole once one is found on it (as the
   * device pass would: a stop among its commands preempts those before it), and named in
   * `whole` so that the device pass does not read it again. Returns the rows read.
   */
  private dispatchedPass(order: readonly string[], now: LiveNow, whole: Set<string>): number {
    const { journal, lanes } = this.host;
    let read = 0;
    const from = this.dispatchedFrom;
    const first = order.findIndex((d) => d >= from.device);
    const begin = first < 0 ? 0 : first;
    for (let i = 0; i < order.length; i++) {
      const device = order[(begin + i) % order.length] as string;
      const after = i === 0 && device === from.device ? from.after : null;
      const page = journal.dispatchedOfDevice(device, after, this.dispatchedRows - read);
      read += page.refs.length;
      const lane = lanes.get(device);
      if (page.refs.length > 0 && lane !== undefined && now.idle.has(lane)) {
        this.pageAfter.delete(device);
        const all = journal.openOfDevice(device, 0, -1).refs;
        for (const record of all) this.take(record, now);
        read += all.length;
        whole.add(device);
      } else {
        for (const record of page.refs) this.take(record, now);
      }
      if (page.next !== null) {
        // More of this device's: the next run's pass begins there.
        this.dispatchedFrom = { device, after: page.next };
        return read;
      }
      this.dispatchedFrom = {
        device: order[(begin + i + 1) % order.length] as string,
        after: null,
      };
      if (read >= this.dispatchedRows) break;
    }
    return read;
  }

  /**
   * The devices' open commands, from where the last run's device pass stopped, until about
   * `pageRows` rows are read in all (`before` of them by the dispatched pass). Returns the rows
   * it read.
   */
  private devicePass(
    order: readonly string[],
    now: LiveNow,
    whole: ReadonlySet<string>,
    before: number,
  ): number {
    const { journal, lanes } = this.host;
    let read = 0;
    const first = order.findIndex((d) => d >= this.nextDevice);
    const begin = first < 0 ? 0 : first;
    for (let i = 0; i < order.length; i++) {
      const device = order[(begin + i) % order.length] as string;
      const lane = lanes.get(device);
      if (whole.has(device)) {
        // Read whole by the dispatched pass this run.
      } else if (lane !== undefined && now.idle.has(lane)) {
        // Whole, in one read: see step().
        this.pageAfter.delete(device);
        const all = journal.openOfDevice(device, 0, -1).refs;
        for (const record of all) this.take(record, now);
        read += all.length;
      } else {
        const page = journal.openOfDevice(
          device,
          this.pageAfter.get(device) ?? 0,
          Math.max(1, this.pageRows - before - read),
        );
        for (const record of page.refs) this.take(record, now);
        read += page.refs.length;
        if (page.next !== null) {
          // More of this device: the next run begins with its next page.
          this.pageAfter.set(device, page.next);
          this.nextDevice = device;
          break;
        }
        this.pageAfter.delete(device);
      }
      this.nextDevice = order[(begin + i + 1) % order.length] as string;
      if (before + read >= this.pageRows) break;
    }
    return read;
  }

  /** The commands the lanes hold, and the lanes that hold none. */
  private liveNow(): LiveNow {
    const live = new Set<string>();
    const idle = new Set<Lane>();
    for (const lane of this.host.lanes.values()) {
      for (const ref of lane.queue) live.add(claimId(ref));
      if (lane.inFlight !== null) live.add(claimId(lane.inFlight));
      // Its end being made durable: its worker decides next.
      if (lane.ending !== null) live.add(claimId(lane.ending));
      if (lane.unresolved !== null) live.add(claimId(lane.unresolved));
      // Preempted by a stop: taken up again once the stop is terminal.
      for (const target of interruptedTargets(lane)) live.add(claimId(target));
      if (
        lane.queue.length === 0 &&
        lane.inFlight === null &&
        lane.unresolved === null &&
        lane.interrupted === null
      ) {
        idle.add(lane);
      }
    }
    return { live, idle };
  }

  /** An open command found in the journal: taken up unless something holds it. */
  private take(record: OpenRef, { live, idle }: LiveNow): void {
    if (live.has(claimId(record))) return;
    const lane = this.host.lanes.get(record.device);
    if (lane === undefined) {
      this.reportOrphan(record);
      return;
    }
    const ref = claimRef(record);
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
    live.add(claimId(record));
  }

  private startWorkers(): void {
    if (this.host.closed()) return;
    for (const lane of this.host.lanes.values()) {
      if (lane.unresolved !== null || lane.queue.length > 0) this.host.startWorker(lane);
    }
  }

  /**
   * Open commands by state and age, and the stuck ones (SPEC §2), for metrics and readiness: by
   * the journal alone, as `sluicectl stuck` and the status page judge them (open-commands.ts),
   * so that they agree. A command recovery took up, or a stop paused, counts from the end of
   * the window its history gives; one of a device no longer configured from its deadline.
   * Counted by the journal, with only the commands past their deadline handed over (countOpen):
   * a backlog within its deadlines costs a call milliseconds, not every record read and judged.
   */
  openCommands(): OpenCommands {
    const { journal, lanes } = this.host;
    return countOpen(journal, this.host.clock.now(), {
      devices: deviceTimings(lanes),
      journal,
    });
  }

  /** A stop taken up: what its device holds from before it is preempted (preemption.ts). */
  private stopPreempts(lane: Lane, stop: OpenRef): void {
    const log = this.host.logger.child({ key: stop.key, device: stop.device, scope: stop.scope });
    try {
      this.host.stopPreempts(lane, claimRef(stop), log);
    } catch (error) {
      // Not a failed read of the journal: the preemption answers those itself, failing closed
      // (preemption.ts: a command it cannot read stays marked with the stop, one in flight is
      // preempted as one that may travel). What comes here is an error it did not expect (a
      // supersession's settlement failing otherwise than as the journal unavailable); the stop
      // is still taken up, queued behind what its device holds.
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
