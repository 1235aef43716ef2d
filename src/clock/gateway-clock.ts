import type { Clock } from '../core/clock.js';
import {
  initialGatewayClockStatus,
  nextGatewayClockStatus,
  type ClockProbe,
  type GatewayClock,
  type GatewayClockPolicy,
  type GatewayClockStatus,
} from '../core/gateway-clock.js';
import type { Logger } from '../core/logger.js';

/**
 * Polls the gateway clock's source on an interval, off the command path: `status()` answers at
 * once with the last status, whatever the source is doing (pmc and chronyc are bounded by their
 * own timeouts, and a poll never overlaps the next).
 *
 * Not `timedatectl`'s NTPSynchronized: that is the kernel's STA_UNSYNC flag, which ptp4l and
 * phc2sys clear (with maxerror 0: linuxptp sysclk_set_sync()) whenever they discipline the
 * system clock. When they die nobody clears it again, but nobody sets it either: the kernel
 * does only once maxerror, growing by 500 µs a second, passes 16 s, about 9 hours later. Until
 * then it says "synchronized" of a clock that nothing disciplines.
 */
export interface GatewayClockPollerOptions {
  readonly source: 'ptp' | 'chrony';
  /** One reading of the source (ptpReader, chronyReader); aborted when the poller stops. */
  readonly read: (signal?: AbortSignal) => Promise<ClockProbe>;
  readonly policy: GatewayClockPolicy;
  readonly intervalMs: number;
  readonly clock: Clock;
  readonly logger: Logger;
}

export type GatewayClockListener = (
  status: GatewayClockStatus,
  previous: GatewayClockStatus,
) => void;

export class GatewayClockPoller implements GatewayClock {
  private current: GatewayClockStatus;
  private readonly options: GatewayClockPollerOptions;
  private readonly log: Logger;
  private readonly listeners = new Set<GatewayClockListener>();
  private readonly abort = new AbortController();
  private loop: Promise<void> | null = null;
  private inFlight: Promise<GatewayClockStatus> | null = null;
  private checked = false;

  constructor(options: GatewayClockPollerOptions) {
    if (!(options.intervalMs > 0)) throw new RangeError('intervalMs must be positive');
    this.options = options;
    this.log = options.logger.child({ component: 'gateway-clock', source: options.source });
    this.current = initialGatewayClockStatus(options.source, this.now());
  }

  status(): GatewayClockStatus {
    return this.current;
  }

  /**
   * Called after the first poll and every poll that changed the state (or, LOCKED, the
   * grandmaster); a listener's error is logged, never seen by the poller.
   */
  onChange(listener: GatewayClockListener): () => void {
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  }

  /** Polls now and then every `intervalMs` until `stop()`. Idempotent. */
  start(): void {
    if (this.loop !== null || this.abort.signal.aborted) return;
    this.loop = this.run().catch((error: unknown) => {
      this.log.error({ err: error }, 'gateway clock poller failed');
    });
  }

  /** Stops polling; a reading in flight is aborted (its process killed), not waited out. */
  async stop(): Promise<void> {
    this.abort.abort();
    await this.loop;
  }

  /** One poll now (shared with one already in flight). Never rejects. */
  pollOnce(): Promise<GatewayClockStatus> {
    this.inFlight ??= this.poll().finally(() => {
      this.inFlight = null;
    });
    return this.inFlight;
  }

  private now(): { wall: number; mono: number } {
    return { wall: this.options.clock.now(), mono: this.options.clock.elapsed() };
  }

  private async run(): Promise<void> {
    const signal = this.abort.signal;
    const stopped = (): boolean => signal.aborted;
    while (!stopped()) {
      await this.pollOnce();
      if (stopped()) break;
      await this.options.clock.sleep(this.options.intervalMs, signal);
    }
  }

  private async poll(): Promise<GatewayClockStatus> {
    const signal = this.abort.signal;
    let probe: ClockProbe;
    try {
      probe = await this.options.read(signal);
    } catch (error) {
      probe = {
        kind: 'unreachable',
        source: this.options.source,
        error: error instanceof Error ? error.message : String(error),
      };
    }
    if (signal.aborted) return this.current;
    const previous = this.current;
    const next = nextGatewayClockStatus(previous, probe, this.options.policy, this.now());
    this.current = next;
    this.report(next, previous);
    return next;
  }

  private report(next: GatewayClockStatus, previous: GatewayClockStatus): void {
    const first = !this.checked;
    this.checked = true;
    const stateChanged = next.state !== previous.state;
    const gmChanged =
      next.state === 'LOCKED' &&
      previous.state === 'LOCKED' &&
      next.grandmaster !== previous.grandmaster;
    if (!first && !stateChanged && !gmChanged) return;

    const fields = {
      state: next.state,
      previous: previous.state,
      offsetNs: next.offsetNs,
      grandmaster: next.grandmaster,
      portState: next.portState,
      detail: next.detail,
    };
    if (gmChanged) this.log.info(fields, 'gateway clock: grandmaster changed');
    else if (next.state === 'LOCKED') this.log.info(fields, 'gateway clock locked');
    else if (next.state === 'HOLDOVER')
      this.log.warn(fields, 'gateway clock lost its lock: holdover');
    else if (next.state === 'UNLOCKED') this.log.warn(fields, 'gateway clock unlocked');
    else this.log.warn(fields, 'gateway clock state unknown');

    for (const listener of this.listeners) {
      try {
        listener(next, previous);
      } catch (error) {
        this.log.error({ err: error }, 'gateway clock listener failed');
      }
    }
  }
}

/** Source `none`: UNKNOWN, "no gateway clock source configured"; the wiring's policy decides. */
export function noGatewayClock(clock: Clock): GatewayClock {
  const status = initialGatewayClockStatus('none', { wall: clock.now(), mono: clock.elapsed() });
  return { status: () => ({ ...status, checkedAt: clock.now() }) };
}
