import { chronyReader } from '../clock/chrony.js';
import { GatewayClockPoller, noGatewayClock } from '../clock/gateway-clock.js';
import { ptpReader } from '../clock/pmc.js';
import type { SluiceConfig } from '../config/config.js';
import type { Clock } from '../core/clock.js';
import type { GatewayClock } from '../core/gateway-clock.js';
import type { ClockPolicy } from '../core/lane.js';
import type { Logger } from '../core/logger.js';

/**
 * The gateway's own clock (SPEC §6) and the clock policy the pipeline applies, from the
 * configuration: a poller of linuxptp's pmc or chronyc off the command path, or no source.
 */
export interface GatewayClocks {
  readonly gateway: GatewayClock;
  readonly policy: ClockPolicy;
  /**
   * Starts polling; resolves once the source has been checked the first time (bounded by the
   * source's timeout). Until then the status is UNKNOWN ("not checked yet"), which the policy
   * `reject` takes for an unsynced clock: a command judged before it — one recovered from the
   * journal, an MQTT command the broker held while the gateway was down — would be refused
   * CLOCK_SKEW on a clock that is locked.
   */
  start(): Promise<void>;
  /**
   * How long start() takes at most: one run of chronyc, or two of pmc (asked again at once when
   * its answer is missing or partial), each killed at the source's timeout; 0 with no source.
   */
  readonly startBoundMs: number;
  stop(): Promise<void>;
}

export function gatewayClocks(config: SluiceConfig, clock: Clock, logger: Logger): GatewayClocks {
  const c = config.clock;
  let poller: GatewayClockPoller | null = null;
  if (c.source !== 'none') {
    const read =
      c.source === 'ptp'
        ? ptpReader({
            udsPath: c.ptp.udsPath,
            domain: c.ptp.domain,
            command: c.ptp.pmc,
            timeoutMs: c.ptp.timeoutMs,
            ...(c.ptp.clientSocketDir === undefined
              ? {}
              : { clientSocketDir: c.ptp.clientSocketDir }),
          })
        : chronyReader({ command: c.chrony.chronyc, timeoutMs: c.chrony.timeoutMs });
    poller = new GatewayClockPoller({
      source: c.source,
      read,
      policy: {
        maxOffsetNs: c.maxOffsetNs,
        holdoverMs: c.holdoverMs,
        acceptUncalibrated: c.ptp.acceptUncalibrated,
      },
      intervalMs: c.pollIntervalMs,
      clock,
      logger,
    });
  }
  const gateway = poller ?? noGatewayClock(clock);
  const plcOf = (device: string): string | undefined => config.devices[device]?.plc;
  const policy: ClockPolicy = {
    onUnsynced: c.onUnsynced,
    maxControllerSkewMs: (device) => {
      const plc = plcOf(device);
      const override = plc === undefined ? undefined : config.plcs[plc]?.maxClockSkewMs;
      return override ?? c.maxControllerSkewMs;
    },
    gateway: poller,
  };
  const startBoundMs =
    c.source === 'ptp' ? 2 * c.ptp.timeoutMs : c.source === 'chrony' ? c.chrony.timeoutMs : 0;
  return {
    gateway,
    policy,
    startBoundMs,
    start: async () => {
      if (poller === null) return;
      poller.start();
      // The poll start() began: pollOnce shares the one in flight.
      await poller.pollOnce();
    },
    stop: async () => {
      await poller?.stop();
    },
  };
}
