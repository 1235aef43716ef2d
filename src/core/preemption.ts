import type { Clock } from './clock.js';
import { isTerminal } from './command.js';
import {
  claimId,
  claimRef,
  readClaim,
  type ClaimRef,
  type CommandRecord,
  type Journal,
} from './journal.js';
import {
  commandLogger,
  interruptedTargets,
  withheldUnsent,
  PIPELINE,
  type Interruption,
  type Lane,
  type LastWrite,
} from './lane.js';
import type { Logger } from './logger.js';
import type { Outcomes } from './outcomes.js';
import { latestWriteNeverSent } from './open-commands.js';
import { endedFateOpen, preemptedResolvedNote } from './previous-write.js';
import { stopBehindWrite, type Decision } from './state-machine.js';

/** A record the journal could not give (read failed): not the same as one it does not hold. */
const UNREADABLE = Symbol('unreadable');

/** What a stop's preemption needs from the pipeline. */
export interface PreemptionHost {
  readonly journal: Journal;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly outcomes: Outcomes;
  /** Starts the device's worker, unless one runs (pipeline.ts). */
  startWorker(lane: Lane): void;
}

/**
 * SPEC §2: a stop is not queued behind travel. It goes first on its device; the command in
 * flight (or left open) is preempted — if it was never written it is superseded, if it was
 * written it is judged again once the stop is terminal (INTERRUPTED when the controller took
 * the stop) and never written again; commands accepted before the stop and not yet written
 * end `rejected` `SUPERSEDED`. Commands accepted after the stop queue behind it as usual.
 */
export class Preemption {
  private readonly host: PreemptionHost;

  constructor(host: PreemptionHost) {
    this.host = host;
  }

  /**
   * A stop was accepted on `lane`: it preempts what is there (see the class). A record the
   * journal cannot give now (a read failing) does not end the take-over half way: the commands
   * taken off the queue would fall out of the lane, the sweep would run them after the stop
   * (written after the operator's stop superseded them), and the travel would go on. Fail
   * closed instead: a command ahead of the stop that cannot be read keeps its place, marked
   * (lane.superseded: rejected when the device comes to it if never written, run if it is a
   * stop), and a command in flight that cannot be read is preempted as one that may travel.
   */
  stopPreempts(lane: Lane, stop: ClaimRef, log: Logger): void {
    const target = lane.inFlight ?? lane.ending ?? lane.unresolved;
    const left = this.leftOut(lane, stop, log);
    const ahead = [...lane.queue.splice(0, lane.queue.length), ...left];
    if (target === null && ahead.length === 0) return;
    // The stop that runs next: the first stop kept in the queue, or this one.
    let next: ClaimRef = stop;
    const lost = new Set<string>();
    for (const ref of ahead) {
      // A stop still waiting to run (a second stop came before the first was taken) is not
      // superseded: it queues ahead of this one, as a stop in flight does. The first stop is
      // the one that preempted the command in flight (lane.interrupted), and that command is
      // judged again only once that stop is terminal (afterStop): superseded, it never ran,
      // and the preempted command stayed `dispatched` with its device held for good — every
      // later command went past it, and no later stop could preempt travel.
      const queued = this.read(ref, log);
      if (queued === UNREADABLE) this.keepMarked(lane, ref, stop, log);
      else if (queued === undefined) {
        // Its claim was lost with its batch (the COMMIT failed): it was never accepted. The
        // key may name another command since, not this one, which the stop leaves alone.
        lost.add(claimId(ref));
        this.claimLost(ref, log);
      } else if (queued.action === 'stop') {
        if (next === stop) next = ref;
        lane.queue.push(ref);
      } else this.supersede(lane, ref, stop, log, queued);
    }
    // A stop still to run goes first: this one waits behind it, and takes it over once a
    // readback shows it written and its effect not seen (stopBehindRejudged).
    if (next !== stop) rememberBehind(lane, stop);
    if (lane.interrupted !== null && lost.has(claimId(lane.interrupted.stop))) {
      // The stop that preempted the travel was never accepted: its claim was lost with its
      // batch after it had preempted (a preemption acts at the claim, before the commit). This
      // stop takes its place: the preempted command is taken up once this one is terminal, and
      // this one waits for that command's write as the lost one would have. Left pointing at
      // the lost stop, the interruption never ended: the command stayed `dispatched`, its
      // device past it, until the daemon restarted (found by the property test, a stop pressed
      // twice while a write was held on the link and the first one's batch lost).
      lane.interrupted = { ...lane.interrupted, stop: next };
    }
    if (target === null) return;
    if (lane.interrupted !== null) {
      // A stop preempted the travel already: this one may preempt that stop, once it runs.
      const first = lane.interrupted.stop;
      if (claimId(target) === claimId(first)) {
        this.stopBehindStop(lane, target, this.read(target, log), next, log);
      }
      return;
    }
    const current = this.read(target, log);
    if (current !== UNREADABLE && (current === undefined || isTerminal(current.state))) return;
    if (current !== UNREADABLE && current.action === 'stop') {
      this.stopBehindStop(lane, target, current, next, log);
      return;
    }
    log.warn(
      { preempts: target.key, unread: current === UNREADABLE || undefined },
      'stop preempts the command in flight',
    );
    const last = lane.lastWrite;
    // A write known never sent is none: nothing of it can reach the controller after the stop,
    // which need not wait the guard for it (readback-confirmation.ts, preemptedMayLand). The lane's last
    // write may be a take-up's stand-in for a write withheld unsent (take-up.ts).
    const unsent = current !== UNREADABLE && this.neverSent(lane, current, log);
    const known =
      last !== null && last.scope === target.scope && last.key === target.key && !unsent
        ? last
        : null;
    // Taken up with no write of this life (recovery after a restart): an earlier life wrote it.
    const earlier =
      known === null &&
      !unsent &&
      current !== UNREADABLE &&
      lane.unresolved !== null &&
      claimId(lane.unresolved) === claimId(target)
        ? this.earlierWrite(lane, current)
        : null;
    lane.interrupted = {
      target: claimRef(target),
      stop,
      write: known ?? earlier,
      earlierLife: earlier !== null,
      outer: null,
    };
    if (lane.unresolved !== null && claimId(lane.unresolved) === claimId(target)) {
      // No worker holds it: the stop runs first, then it is judged again.
      lane.unresolved = null;
      if (current === UNREADABLE) {
        // Not known to be written: it goes first, marked — rejected if it never was, left to
        // afterStop if it was, run if it is a stop (which the take-over would have left alone).
        lane.superseded.set(claimId(target), stop);
        lane.queue.unshift(claimRef(target));
      } else if (current.state === 'accepted') {
        this.supersede(lane, target, stop, log);
      }
    }
    lane.preempt?.abort();
  }

  /**
   * A stop accepted while a stop is in flight (stopOvertakes), and, when it does not take that
   * stop over now, remembered as queued behind it (lane.stopsBehind): the stop in flight was
   * left to finish because it is not written yet (its read of the device, or its dispatch being
   * made durable) or its effect is not judged yet, and once it is written its effect may not
   * show (its write answered 0x04, the valve still travelling). Judged again at each readback
   * (stopBehindRejudged); taken over at the claim only, the stop behind waited out the first
   * one's confirm timeout while the valve travelled to the end (measured: two stops pressed at
   * 10 % of a 6 s stroke, the first answered 0x04 while the second was claimed during the
   * first's barrier, the valve fully open, the second a no-op at OPEN).
   */
  private stopBehindStop(
    lane: Lane,
    target: ClaimRef,
    current: CommandRecord | undefined | typeof UNREADABLE,
    next: ClaimRef,
    log: Logger,
  ): void {
    this.stopOvertakes(lane, target, current, next, log);
    if (overtakenBy(lane, target, next)) forgetBehind(lane, next);
    else rememberBehind(lane, next);
  }

  /**
   * At each readback of the device (pipeline.ts): a stop that queued behind a stop in flight or
   * still to run (lane.stopsBehind), once it is the next to run, takes the stop in flight over
   * when the device shows it did not take effect, by the rule that decides at a stop's claim
   * (stopOvertakes). Forgotten once it has left the queue. The next one behind it does the same
   * with it, once it runs in its turn.
   */
  stopBehindRejudged(lane: Lane): void {
    const waiting = lane.stopsBehind;
    if (waiting.length === 0) return;
    // No longer queued: it runs, or ran.
    const queued = new Set(lane.queue.map(claimId));
    for (let i = waiting.length - 1; i >= 0; i--) {
      const ref = waiting[i];
      if (ref !== undefined && !queued.has(claimId(ref))) waiting.splice(i, 1);
    }
    const head = lane.queue[0];
    // Not next yet (the stop it waits behind is still queued).
    const behind =
      head === undefined ? undefined : waiting.find((ref) => claimId(ref) === claimId(head));
    if (behind === undefined) return;
    // Between two commands (the first's end being made durable) neither is set: judged at the
    // next readback. So is a command in flight that cannot be read now, or is no stop.
    const target = lane.inFlight ?? lane.unresolved;
    if (target === null) return;
    const log = this.host.logger.child({ key: behind.key });
    const current = this.read(target, log);
    if (current === UNREADABLE || current?.action !== 'stop') return;
    // Acknowledged, the stop in flight is given the controller's time to show it (a readback
    // right after the write may have been answered before the scan that takes it): taken over
    // on that image, a stop about to show its effect was interrupted, and the next one written.
    this.stopOvertakes(
      lane,
      target,
      current,
      behind,
      log,
      lane.binding.profile.timing.mismatchGraceMs,
    );
    if (!overtakenBy(lane, target, behind)) return;
    forgetBehind(lane, behind);
    // Taken over while it waited to be taken up (left to the sweep: its settlement or its
    // dispatch lost to a journal stall), read by the idle monitor: no worker runs on the device,
    // and the stop, now first, waited for the sweep to start one (up to a second in the daemon)
    // while the device travelled. A worker that runs (between two commands) goes on by itself.
    this.host.startWorker(lane);
  }

  /**
   * A stop was accepted while a stop is in flight (pressed again: another key, an operator
   * seeing the valve still move). When that stop was written and its effect is not seen — the
   * latest readback shows the device travelling, without its echo — its outcome may stay
   * unknown until its confirm timeout (an exception 0x04, a lost reply: and a stop after it
   * forbids writing it again); queued behind it, the new stop waited all of that while the
   * valve travelled to the end. So the new stop (`next`: the stop that runs next) preempts it
   * as a stop preempts travel: the first stop's handling is aborted (its write, if on the
   * wire, completes), the next stop is written at once, and the first is judged again by its
   * readbacks once the next is terminal — confirmed when the controller shows its echo,
   * INTERRUPTED when it shows the later stop's, its own readback outcome otherwise; never
   * written again. The command it had preempted (`outer`) is taken up after it. A stop in
   * flight not yet written, or whose effect is seen (the device rests, or echoes it), is
   * left to finish: the new stop queues behind it, a no-op or a cheap one.
   */
  private stopOvertakes(
    lane: Lane,
    target: ClaimRef,
    current: CommandRecord | undefined | typeof UNREADABLE,
    next: ClaimRef,
    log: Logger,
    /** How long after an acknowledged write a readback must be requested to show it not taken. */
    showMs = 0,
  ): void {
    const outer = lane.interrupted;
    const held = lane.inFlight !== null && claimId(lane.inFlight) === claimId(target);
    const waiting =
      !held && lane.unresolved !== null && claimId(lane.unresolved) === claimId(target);
    if (!held && !waiting) return;
    if (outer !== null && claimId(outer.stop) !== claimId(target)) return;
    if (current === UNREADABLE || current?.action !== 'stop' || current.state !== 'dispatched') {
      return;
    }
    const last = lane.lastWrite;
    const write =
      last !== null &&
      last.scope === target.scope &&
      last.key === target.key &&
      last.seq === current.seq
        ? last
        : null;
    const seen = lane.mirror;
    if (write === null) {
      // In flight: not yet handed to the driver (its dispatch is being made durable), it is
      // written in a moment. Waiting to be taken up with no write of this life (recovery after
      // a restart): nothing here knows its fate, and its take-up reads back for up to its
      // deadline while the device may travel; the new stop goes first, one read when the
      // device rests (measured: a second stop behind a first answered 0x04 before a crash
      // waited 29.7 s after the restart, the valve opening to the end).
      if (held) return;
    } else if (
      seen === null ||
      !lane.binding.profile.transitional.includes(seen.state) ||
      (current.seq !== null && seen.seq === current.seq) ||
      // Acknowledged and not read since: its first readback comes within a scan or two, and
      // most often shows it taken (the stop behind it is then a no-op, as before).
      (write.acked && seen.requestedMono < write.sentMono + showMs)
    ) {
      return;
    }
    log.warn(
      {
        preempts: target.key,
        seen: seen?.state,
        position: seen?.position,
        acked: write?.acked,
      },
      'stop preempts the stop in flight: its effect is not seen, the device may still travel',
    );
    lane.interrupted = {
      target: claimRef(target),
      stop: next,
      // A take-up's stand-in for a write withheld unsent is none (see stopPreempts): nothing
      // of it can land after the next stop. The decision above went by it all the same: a stop
      // never sent has no effect to be seen, and the next one goes first.
      write: write !== null && this.neverSent(lane, current, log) ? null : write,
      earlierLife: false,
      outer,
    };
    // No worker holds it: the new stop runs first, then it is taken up (afterStop).
    if (waiting) lane.unresolved = null;
    else lane.preempt?.abort();
  }

  /**
   * A preempted command an earlier life of the daemon wrote (it is `dispatched`, and its
   * history does not say its latest write was never sent: neverSent): what this process knows
   * of that write, as the stop's confirmation needs it (readback-confirmation.ts, preemptedMayLand). Its answer
   * is not known — it may have been lost, the request held by a gateway or on its way when the
   * process died — so its outcome is unknown from now: the earlier life wrote it before this
   * one started. Without it the stop was confirmed on its first readback after the restart,
   * though the write, whose guard the earlier life was waiting out, could still reach the
   * controller after the stop and undo it (measured: a move held on the PLC's link landed
   * seconds after the stop was reported confirmed, the actuator travelling to 80 %).
   */
  private earlierWrite(lane: Lane, record: CommandRecord | undefined): LastWrite | null {
    if (record?.state !== 'dispatched' || record.seq === null) return null;
    const now = this.host.clock.elapsed();
    return {
      scope: record.scope,
      key: record.key,
      seq: record.seq,
      sentMono: now,
      acked: false,
      // Or later, when the restart came within the request timeout of the earlier life's end
      // (Lane.earlierWriteUnknownSinceMono): the guard counts from there.
      unknownSinceMono: Math.max(now, lane.earlierWriteUnknownSinceMono),
      epoch: null,
    };
  }

  /**
   * Whether the latest write of a preempted command (`dispatched`) is known never sent, so that
   * nothing of it can reach the controller after the stop: this process withheld it when its
   * dispatch could not be made durable and has handed no write of it to the driver since
   * (Lane.withheld) — also before its take-up has said so in its history, or when that line
   * could not be journaled: the stop waited the guard for a write never sent — or its history
   * says it was withdrawn before it was sent, or withheld (the take-up's line, of this life or
   * an earlier one), with no dispatch after it (latestWriteNeverSent: the daemon's own lines; a
   * write goes out only after its dispatch is on disk). A history that cannot be read, or says
   * nothing, leaves the write as one that may have gone out, and the stop waits the guard for it.
   */
  private neverSent(lane: Lane, record: CommandRecord | undefined, log: Logger): boolean {
    if (record?.state !== 'dispatched' || record.seq === null) return false;
    if (withheldUnsent(lane, record)) return true;
    try {
      return latestWriteNeverSent(this.host.journal.history(record), record.seq);
    } catch (error) {
      log.warn(
        { err: error, command: record.key },
        "stop: the preempted command's history cannot be read; its write is taken as sent",
      );
      return false;
    }
  }

  /**
   * A command queued ahead of a stop is not in the journal: its claim's batch was lost at its
   * COMMIT. It was never accepted (its intake was not acknowledged: the claim's barrier
   * failed); it leaves the queue, and whoever waits for its outcome is woken now. Its key may
   * name another command now, claimed since (on another device perhaps): that one is not this
   * one (readClaim), and this stop does not supersede it.
   */
  private claimLost(ref: ClaimRef, log: Logger): void {
    log.warn(
      { command: ref.key },
      'stop: a command queued before it was lost with its batch (its commit failed): never accepted, nothing written',
    );
    this.host.outcomes.lost(ref);
  }

  /**
   * The commands of the stop's device accepted before it, never written, that nothing in this
   * process holds: a stop superseded them (taking them off the queue) in a batch whose COMMIT
   * failed, so the journal has them `accepted` again and only the sweep would take them up —
   * after this stop, which they came before: the valve moved after the operator's stop (found
   * by the property test: a stop's batch lost, another stop pressed before the next sweep).
   * Called before the queue is taken: what it holds is not listed twice.
   */
  private leftOut(lane: Lane, stop: ClaimRef, log: Logger): ClaimRef[] {
    const held = new Set<string>(lane.queue.map(claimId));
    for (const ref of [lane.inFlight, lane.ending, lane.unresolved, ...interruptedTargets(lane)]) {
      if (ref !== null) held.add(claimId(ref));
    }
    let before;
    try {
      // In the journal's order: the ones of its device before the stop (it is the newest there).
      before = this.host.journal.openBefore(stop);
    } catch (error) {
      // The sweep takes them up once the journal reads; the stop is not held back for them.
      log.warn({ err: error }, 'stop: the open commands of its device cannot be listed');
      return [];
    }
    return before
      .filter((ref) => ref.state === 'accepted' && ref.action !== 'stop' && !held.has(claimId(ref)))
      .map((ref) => claimRef(ref));
  }

  /**
   * A command accepted before a stop and never written: rejected SUPERSEDED. `read`: the
   * command as the caller read it from the journal in this same turn (stopPreempts, which reads
   * every queued command once): nothing can have changed it since, and a second read per
   * command doubled what a stop did before its write.
   */
  supersede(lane: Lane, ref: ClaimRef, stop: ClaimRef, log: Logger, read?: CommandRecord): void {
    const record = read ?? this.read(ref, log);
    if (record === UNREADABLE) {
      this.keepMarked(lane, ref, stop, log);
      return;
    }
    if (record === undefined) return;
    if (record.action === 'stop') {
      // Marked while the journal could not say what it was: a stop is not superseded (see
      // stopPreempts). It runs next, where it stood, ahead of the stop that marked it.
      lane.queue.unshift(claimRef(ref));
      return;
    }
    if (record.state !== 'accepted') return;
    lane.superseded.set(claimId(ref), stop);
    const settled = this.host.outcomes.settle(
      commandLogger(this.host.logger, record),
      record,
      'accepted',
      {
        to: 'rejected',
        code: 'SUPERSEDED',
        faultCode: null,
        observed: null,
        detail: `superseded by the stop ${stop.key}, accepted before it was written; nothing was written`,
      },
    );
    // The mark stays until the rejection is durable (the pipeline's settled listener drops
    // it): a batch lost at its COMMIT leaves the command `accepted` on disk, and whoever comes
    // to it next — the stop's end handing its target back (afterStop), the sweep — finds it
    // marked and rejects it again, never runs it after the stop. Dropped here, the open the
    // stop had preempted in flight was written once the stop ended (an audit of 2026-12-07).
    if (settled === null) {
      // Journal unavailable: it stays marked and is rejected when the device comes to it.
      lane.queue.push(claimRef(ref));
      log.warn({ superseded: ref.key }, 'superseded command not yet journaled as such');
    }
  }

  /** The command as journaled, or UNREADABLE when the journal cannot be read now. */
  private read(ref: ClaimRef, log: Logger): CommandRecord | undefined | typeof UNREADABLE {
    try {
      return readClaim(this.host.journal, ref);
    } catch (error) {
      log.warn({ err: error, command: ref.key }, 'stop: a command of its device cannot be read');
      return UNREADABLE;
    }
  }

  /**
   * A command ahead of the stop that cannot be read now: it keeps its place (the stop's
   * supersession is not dropped with it), marked with the stop, and is judged when the device
   * comes to it and the journal reads again.
   */
  private keepMarked(lane: Lane, ref: ClaimRef, stop: ClaimRef, log: Logger): void {
    lane.superseded.set(claimId(ref), stop);
    lane.queue.push(claimRef(ref));
    log.warn({ superseded: ref.key }, 'superseded command kept marked until the journal reads');
  }

  /**
   * Once a stop that preempted a written command is terminal, that command is taken up again,
   * first: its readbacks decide — INTERRUPTED when the controller took the stop, its own
   * outcome when the stop never reached it. It is never written again (readback-confirmation.ts).
   * What this process knows of its write (acknowledged, when, on which connection) is handed
   * back to the take-up: the stop's write replaced it as the lane's last, and without it the
   * take-up took the write for an earlier life's ("written by an earlier life of the daemon",
   * its acknowledgement forgotten).
   *
   * A stop that ended without taking effect (rejected, failed: a stale stop, one the controller
   * never took) leaves the travel going. When another stop waits next in the queue (a stop
   * pressed twice), the interruption passes to it: it runs first, and the command is taken up
   * after it. Taken up first, the command followed its travel to the end by its readbacks, and
   * the waiting stop came after it, a no-op at the end of travel.
   */
  afterStop(lane: Lane, ref: ClaimRef): void {
    const interrupted = lane.interrupted;
    if (interrupted === null || claimId(interrupted.stop) !== claimId(ref)) return;
    // A stop preempted by this one (stopOvertakes) holds its own interruption again: the
    // command it had preempted is taken up once it is terminal.
    lane.interrupted = interrupted.outer;
    // Unreadable now, it is taken up all the same: the take-up reads it again (and waits for
    // the journal), and never writes it again. (A read error thrown here ended the device's
    // worker with its promise rejected, unhandled: the daemon died.)
    const target = this.read(interrupted.target, this.host.logger.child({ key: ref.key }));
    if (target !== UNREADABLE && (target === undefined || isTerminal(target.state))) {
      // Ended while the stop ran (an operator's resolve) with its write's fate open: that write
      // may still reach the controller, after the stop's, and the next command waits for it
      // (previous-write.ts) as for the device's last write. Forgotten, a close was confirmed a
      // no-op at CLOSED, and the open landed after it (I2).
      if (target !== undefined && interrupted.write !== null && endedFateOpen(target)) {
        keepPending(lane, interrupted.write);
      }
      if (interrupted.outer !== null) this.afterStop(lane, interrupted.target);
      return;
    }
    const next = this.nextStop(lane, ref);
    if (next !== null) {
      lane.interrupted = { ...interrupted, stop: next };
      return;
    }
    lane.unresolved = interrupted.target;
    // An earlier life's write is not handed back: the take-up knows it as such by itself.
    if (interrupted.write !== null && !interrupted.earlierLife) lane.lastWrite = interrupted.write;
  }

  /**
   * An operator resolved `command` (operator-actions.ts). When it was the command a stop
   * preempted after its write was sent, and that write's fate is open ("it may have been
   * applied"), each stop that waits for the write says so in its history
   * (preemptedResolvedNote): a later life of the daemon, which has no interruption to go by,
   * holds the device's next command for it from there (previous-write.ts, earlierLastWrite).
   */
  resolvedUnderStop(lane: Lane, command: CommandRecord): void {
    if (command.seq === null || !endedFateOpen(command)) return;
    const line = preemptedResolvedNote({ ...command, seq: command.seq });
    // The stop that preempted it, and the stops that took that one over (stopOvertakes).
    const stops: ClaimRef[] = [];
    for (let i = lane.interrupted; i !== null; i = i.outer) {
      stops.push(i.stop);
      if (claimId(i.target) !== claimId(command)) continue;
      if (i.write === null) return;
      for (const stop of stops) {
        try {
          this.host.journal.note(stop, this.host.clock.now(), line, PIPELINE);
        } catch (error) {
          commandLogger(this.host.logger, command).warn(
            { err: error, stop: stop.key },
            'the stop that preempted the resolved command: its history cannot say that the write may still land',
          );
        }
      }
      return;
    }
  }

  /**
   * The stop waiting next on the lane, when `stop` ended other than confirmed; otherwise null
   * (confirmed, the controller shows a state a stop leaves it in: the travel is over, and the
   * take-up is one readback). Stops wait at the head of the queue: a stop supersedes every
   * other command queued before it. Marked commands (rejected when reached) are passed over.
   */
  private nextStop(lane: Lane, stop: ClaimRef): ClaimRef | null {
    const log = this.host.logger.child({ key: stop.key });
    const ended = this.read(stop, log);
    if (ended === UNREADABLE || ended?.state === 'confirmed') return null;
    for (const ref of lane.queue) {
      if (lane.superseded.has(claimId(ref))) continue;
      const queued = this.read(ref, log);
      if (queued === UNREADABLE || queued?.action !== 'stop' || isTerminal(queued.state)) {
        return null;
      }
      return ref;
    }
    return null;
  }
}

/**
 * A write that may still reach the controller, of a command ended while a stop held it
 * (afterStop): the device's last write when the stop wrote none, else kept behind the stop's
 * (LastWrite.behind), which previousWritePending looks at too. A stop's stand-in that stands
 * behind a write already keeps that one: the write before the stop's, this one as a rule.
 */
function keepPending(lane: Lane, write: LastWrite): void {
  const last = lane.lastWrite;
  if (last === null) {
    lane.lastWrite = write;
    return;
  }
  if (last.scope === write.scope && last.key === write.key) return;
  last.behind ??= write;
}

/** Remembers `stop` as queued behind another stop (lane.stopsBehind), once. */
function rememberBehind(lane: Lane, stop: ClaimRef): void {
  const id = claimId(stop);
  if (!lane.stopsBehind.some((ref) => claimId(ref) === id)) {
    lane.stopsBehind.push(claimRef(stop));
  }
}

/** `stop` took the stop it queued behind over: it no longer waits behind one. */
function forgetBehind(lane: Lane, stop: ClaimRef): void {
  const id = claimId(stop);
  const at = lane.stopsBehind.findIndex((ref) => claimId(ref) === id);
  if (at >= 0) lane.stopsBehind.splice(at, 1);
}

/** Whether `stop` took `target` over (the lane's interruption says so). */
function overtakenBy(lane: Lane, target: ClaimRef, stop: ClaimRef): boolean {
  const interrupted = lane.interrupted;
  return (
    interrupted !== null &&
    claimId(interrupted.target) === claimId(target) &&
    claimId(interrupted.stop) === claimId(stop)
  );
}

/**
 * A stop's decision when it preempted a written command (`actual`: the table's, on the state
 * read before the stop). The preempted write may not be taken yet (the read does not show its
 * echo), yet it reached the controller first and will be taken first. So the stop is written
 * whenever it would be from the state that write leads to, and it is confirmed by any state a
 * stop leaves the device in from there (SPEC §2). The same when a stop so dispatched is taken
 * up again (after a restart, a journal stall): judged on the decision it was written on.
 *
 * A stop that overtook a stop (stopOvertakes) decides so for the command that first stop had
 * preempted, too, when that command's write may still reach the controller (its outcome
 * unknown: an earlier life's write, after a restart). The read shows the first stop's echo, which
 * hides whether that write was taken: a no-op decided on it was confirmed at once after a
 * restart, and the write, landing after it, moved the actuator to 80 % — the stop is written
 * instead (a no-op at the controller where the device rests) and waits the write's guard as the
 * first stop did (readback-confirmation.ts, preemptedMayLand).
 */
export function stopOverPreempted(
  journal: Pick<Journal, 'get'>,
  lane: Lane,
  stop: CommandRecord,
  before: { readonly state: string; readonly seq: number | null },
  actual: Decision,
): Decision {
  const interrupted = lane.interrupted;
  if (
    stop.action !== 'stop' ||
    interrupted === null ||
    claimId(interrupted.stop) !== claimId(stop) ||
    actual.kind === 'reject'
  ) {
    return actual;
  }
  let decision: Decision = actual;
  for (let i: Interruption | null = interrupted; i !== null; i = i.outer) {
    if (i !== interrupted && (i.write === null || i.write.acked)) continue;
    decision = overPreempted(journal, lane, i.target, before, decision);
  }
  return decision;
}

/** `decision`, made a write when a stop would be one from the state `target`'s write leads to. */
function overPreempted(
  journal: Pick<Journal, 'get'>,
  lane: Lane,
  ref: ClaimRef,
  before: { readonly state: string; readonly seq: number | null },
  decision: Decision,
): Decision {
  const { profile } = lane.binding;
  const target = readClaim(journal, ref);
  if (
    target?.state !== 'dispatched' ||
    target.seq === null ||
    target.observedBefore === null ||
    before.seq === target.seq
  ) {
    return decision;
  }
  return stopBehindWrite(
    profile,
    target.observedBefore.state,
    target.action,
    before.state,
    decision,
  );
}
