import type { OpenState } from './command.js';
import type { DeviceReads } from './device-reads.js';
import type { CommandRecord } from './journal.js';
import type { ExecutionHost, Lane } from './lane.js';
import type { Logger } from './logger.js';
import { meetsExpectation, observe, predatesWrite, type Expectation } from './readback.js';
import { sourceWindow, type TimedReadback } from './skew.js';
import { formatFaultCode } from './state-machine.js';

/** The image a no-op may be decided on, or why there is none. */
export type NoOpImage =
  | { readonly kind: 'fresh'; readonly readback: TimedReadback }
  /** Every image until the confirm timeout was produced this long before the take-up. */
  | { readonly kind: 'stale'; readonly readback: TimedReadback; readonly oldByMs: number }
  | { readonly kind: 'aborted' };

/**
 * A command the mirrored state machine finds a no-op (SPEC §3): confirmed by a readback that
 * shows the target state, with no write at all. The state-machine check runs on a fresh read,
 * but a read is only as fresh as the image it returns: a controller that has stopped
 * publishing (a frozen image) answers every read with its last scan — OPEN, say, while the
 * valve has since been closed by hand — and an open was "confirmed" on a closed valve (I2).
 * A no-op is therefore decided and confirmed only on an image produced since the scan before
 * the command was taken up (`freshImage`); an older one is read again until the confirm
 * timeout. This needs the image's scan time and the controller's clock (SPEC §6): without
 * them (an OPC UA controller that publishes no `ScanTime`: its SourceTimestamps are the last
 * change, which an idle device's image never refreshes) the image's age cannot be judged, and
 * a read taken after the take-up decides, as before.
 */
export class NoOpCourse {
  private readonly host: ExecutionHost;
  private readonly reads: DeviceReads;

  constructor(host: ExecutionHost, reads: DeviceReads) {
    this.host = host;
    this.reads = reads;
  }

  /**
   * `first`, or the first later readback, whose image was not provably produced more than a
   * scan before `takenUpMono` — read again at the poll interval up to the confirm timeout.
   */
  async freshImage(
    lane: Lane,
    first: TimedReadback,
    takenUpMono: number,
    log: Logger,
  ): Promise<NoOpImage> {
    const { clock } = this.host;
    const { timing } = lane.binding.profile;
    const until = takenUpMono + timing.confirmTimeoutMs;
    // An image from the scan current at the take-up is the controller's state then.
    const since = takenUpMono - timing.scanMs;
    let readback = first;
    for (;;) {
      if (readback.sourceIsScan !== true || readback.sourceTime === null) {
        return { kind: 'fresh', readback };
      }
      // A read may have dropped the estimate (an image far older than its read has the clock
      // measured again: frozen, or the controller's clock set back): judged on one measured now.
      const skew = await this.reads.ensureSkew(lane, log);
      if (aborted(lane)) return { kind: 'aborted' };
      if (!predatesWrite(readback, since, skew)) return { kind: 'fresh', readback };
      if (clock.elapsed() >= until) {
        const window = sourceWindow(readback, skew);
        const oldByMs = window === null ? 0 : Math.max(0, Math.round(takenUpMono - window.latest));
        return { kind: 'stale', readback, oldByMs };
      }
      await clock.sleep(timing.pollIntervalMs, lane.signal);
      if (aborted(lane)) return { kind: 'aborted' };
      readback = (await this.reads.tryRead(lane, log)) ?? readback;
    }
  }

  /** Settles a command whose every image until the confirm timeout was older than its take-up. */
  settleStale(
    lane: Lane,
    record: CommandRecord,
    image: Extract<NoOpImage, { kind: 'stale' }>,
    from: OpenState,
    log: Logger,
  ): void {
    const { readback, oldByMs } = image;
    this.host.settle(log, record, from, {
      to: 'failed',
      code: 'READBACK_TIMEOUT',
      faultCode: null,
      observed: observe(readback),
      detail: `the controller shows ${readback.state}, but in an image produced ${oldByMs} ms before the command was taken up, and no newer image came within ${lane.binding.profile.timing.confirmTimeoutMs} ms: the controller has stopped publishing (a frozen image), or its clock was set back; what the device does now is unknown; nothing was written`,
    });
  }

  /** Confirms the no-op on readbacks from `first` (a fresh image: `freshImage`). */
  async confirm(
    lane: Lane,
    record: CommandRecord,
    first: TimedReadback,
    expect: Expectation,
    from: OpenState,
    log: Logger,
  ): Promise<void> {
    const { clock } = this.host;
    const { profile } = lane.binding;
    const confirmBy = clock.elapsed() + profile.timing.confirmTimeoutMs;
    let readback = first;
    let wrongSince: number | null = null;
    for (;;) {
      if (meetsExpectation(profile, readback, expect)) {
        this.host.settle(log, record, from, {
          to: 'confirmed',
          code: 'OK',
          faultCode: null,
          observed: observe(readback),
          detail: `no-op: the controller shows ${readback.state}; nothing was written`,
        });
        return;
      }
      if (readback.state === profile.faultState) {
        this.host.settle(log, record, from, {
          to: 'failed',
          code: 'DEVICE_FAULT',
          faultCode: readback.faultCode === null ? null : formatFaultCode(readback.faultCode),
          observed: observe(readback),
          detail: `the controller went to ${readback.state} while the command waited; nothing was written`,
        });
        return;
      }
      if (profile.transitional.includes(readback.state)) {
        wrongSince = null;
      } else {
        wrongSince ??= readback.requestedMono;
        if (clock.elapsed() - wrongSince >= profile.timing.mismatchGraceMs) {
          this.host.settle(log, record, from, {
            to: 'failed',
            code: 'READBACK_MISMATCH',
            faultCode: null,
            observed: observe(readback),
            detail: `expected ${expect.confirm.join(' or ')}, the controller rests in ${readback.state}; nothing was written`,
          });
          return;
        }
      }
      if (clock.elapsed() >= confirmBy) break;
      await clock.sleep(profile.timing.pollIntervalMs, lane.signal);
      if (aborted(lane)) return;
      readback = (await this.reads.tryRead(lane, log)) ?? readback;
    }
    this.host.settle(log, record, from, {
      to: 'failed',
      code: 'READBACK_TIMEOUT',
      faultCode: null,
      observed: observe(readback),
      detail: `no readback showed ${expect.confirm.join(' or ')} within ${profile.timing.confirmTimeoutMs} ms; nothing was written`,
    });
  }
}

/** A function, not a property read: the flag changes across awaits (and narrowing forgets). */
function aborted(lane: Lane): boolean {
  return lane.signal.aborted;
}
