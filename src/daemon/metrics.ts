import { statSync, statfsSync } from 'node:fs';
import { dirname } from 'node:path';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { Clock } from '../core/clock.js';
import type { GatewayClock } from '../core/gateway-clock.js';
import type { CommandRecord } from '../core/journal.js';
import type { RedispatchReason } from '../core/lane.js';
import type { CommandPipeline, OpenCommands } from '../core/pipeline.js';
import { RetentionSweeper, type RetentionOptions } from '../core/retention.js';
import type { SettledTimes } from '../core/outcomes.js';
import type { RowCounts } from '../journal/row-counts.js';

/** `sluice_device_redispatches_total{reason}`: every reason exported, 0 included. */
const REDISPATCH_REASONS: readonly RedispatchReason[] = [
  'lost_answer',
  'restart',
  'withdrawn',
  'withheld',
  'no_connection',
];

/** How often the journal's rows are counted for `sluice_journal_rows`. */
const ROWS_EVERY_MS = 30_000;
/** How long a scrape waits for the first count (a journal of millions of rows, out of cache). */
const ROWS_FIRST_WAIT_MS = 5_000;

/** Resolves when `work` does or after `ms`, whichever is first. */
async function within(work: Promise<void>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      work,
      new Promise<void>((resolve) => {
        timer = setTimeout(resolve, ms);
        timer.unref();
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Prometheus metrics of one daemon (served at GET /metrics). Labels are closed vocabularies
 * (intake, outcome, state, code, reason) or configured names (device, route): never a key, a
 * token, an identity or free text, so that series stay few and nothing secret is exported.
 */
export class Metrics {
  readonly registry = new Registry();
  readonly commands: Counter<'device' | 'intake' | 'state' | 'code'>;
  readonly accepted: Counter<'intake' | 'outcome'>;
  readonly latency: Histogram<'device' | 'state'>;
  readonly confirmLatency: Histogram<'device'>;
  readonly retentionSweeps: Counter;
  readonly retentionPurged: Counter;
  readonly httpResponses: Counter<'route' | 'status'>;
  readonly mqttMessages: Counter<'outcome'>;
  readonly mqttResponseTopicsRefused: Counter<'reason'>;
  readonly mqttResultsNotPublished: Counter;
  readonly mqttPublicationsRefused: Counter<'kind' | 'reason'>;
  readonly mqttSubscriptionIdentifiers: Gauge;
  readonly mqttTakeoversSuspected: Counter<'evidence'>;
  readonly journalFailures: Counter;
  readonly httpsConnectionsRefused: Counter<'reason'>;
  readonly httpsConnectionsIdleClosed: Counter<'stage'>;
  readonly httpsTlsHandshakesFailed: Counter<'reason'>;
  readonly httpsClientsGone: Counter;

  constructor(
    pipeline: CommandPipeline,
    clock: Clock,
    gatewayClock?: GatewayClock,
    journal?: {
      readonly path: string;
      /**
       * Counts the rows held now, commands and their history events, off the event loop
       * (countRows).
       */
      readonly rows?: () => Promise<RowCounts>;
      /** How long a scrape waits for the first count (default ROWS_FIRST_WAIT_MS). */
      readonly rowsWaitMs?: number;
    },
  ) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry, prefix: 'sluice_process_' });
    this.commands = new Counter({
      name: 'sluice_commands_settled_total',
      help: 'Commands that reached a terminal state, by device, the intake that took them, state and code.',
      labelNames: ['device', 'intake', 'state', 'code'],
      registers,
    });
    this.accepted = new Counter({
      name: 'sluice_commands_received_total',
      help: 'Commands received by an intake: new, duplicate (replayed or in flight), key reuse, refused.',
      labelNames: ['intake', 'outcome'],
      registers,
    });
    this.latency = new Histogram({
      name: 'sluice_command_settle_seconds',
      help: 'Time from acceptance to the terminal state.',
      labelNames: ['device', 'state'],
      buckets: [0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60],
      registers,
    });
    this.confirmLatency = new Histogram({
      name: 'sluice_command_confirm_seconds',
      help: "Time from the command's first journaled dispatch (just before its first write; a command dispatched again counts from the first) to the readback that confirmed it.",
      labelNames: ['device'],
      buckets: [0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60],
      registers,
    });
    this.retentionSweeps = new Counter({
      name: 'sluice_journal_retention_sweeps_total',
      help: 'Runs of the retention sweeper, which purges settled commands past the retention window.',
      registers,
    });
    this.retentionPurged = new Counter({
      name: 'sluice_journal_retention_purged_total',
      help: 'Settled commands purged from the journal by the retention sweeper.',
      registers,
    });
    if (journal !== undefined) {
      new Gauge({
        name: 'sluice_journal_size_bytes',
        help: 'Size of the journal on disk: the database file and its write-ahead log.',
        registers,
        collect() {
          let bytes = 0;
          for (const file of [journal.path, `${journal.path}-wal`]) {
            try {
              bytes += statSync(file).size;
            } catch {
              // No write-ahead log right after a checkpoint: it counts as empty.
            }
          }
          this.set(bytes);
        },
      });
      // A full filesystem stops every intake (I5: 503, no PUBACK) and the counter of refusals
      // moves only once a command comes: the space left is what an alert can watch beforehand,
      // and what shows a full disk on a gateway that is idle. Read by statfs, without a write.
      new Gauge({
        name: 'sluice_journal_filesystem_available_bytes',
        help: "Space left for the journal on its filesystem (statfs: blocks available to the daemon's user); at 0 commands are refused.",
        registers,
        collect() {
          try {
            const fs = statfsSync(dirname(journal.path));
            this.set(fs.bavail * fs.bsize);
          } catch {
            // The directory cannot be read: NaN (Prometheus' "unknown"), as an unlabelled gauge
            // cannot be left out of a scrape — reset() would export 0, a full filesystem to
            // every alert on it. Readiness says why.
            this.set(Number.NaN);
          }
        },
      });
    }
    const rows = journal?.rows;
    if (rows !== undefined) {
      // Counting walks the tables, which run to millions of event rows in a busy retention
      // window: in a process of its own (rows), at most once per ROWS_EVERY_MS. A scrape is answered
      // with the last count and starts the next one when it is due; only the first waits for
      // one, for ROWS_FIRST_WAIT_MS at most. What a scrape sets is the last count (`counted`
      // is read after the wait: the count may have ended meanwhile).
      const waitMs = journal?.rowsWaitMs ?? ROWS_FIRST_WAIT_MS;
      let counted: { at: number; counts: RowCounts } | null = null;
      let counting: Promise<void> | null = null;
      const count = (): Promise<void> => {
        counting ??= (async () => {
          const at = clock.elapsed();
          try {
            counted = { at, counts: await rows() };
          } catch {
            // The journal cannot be read: left out of the scrapes until it can (readiness
            // says why).
            counted = null;
          } finally {
            counting = null;
          }
        })();
        return counting;
      };
      new Gauge({
        name: 'sluice_journal_rows',
        help: 'Rows in the journal: commands (open, and settled ones within retention) and their history events; counted at most every 30 s.',
        labelNames: ['table'],
        registers,
        async collect() {
          const last: { at: number; counts: RowCounts } | null = counted;
          if (last !== null) {
            if (clock.elapsed() - last.at >= ROWS_EVERY_MS) void count();
          } else if (counting === null) {
            // Not when a first count is under way already (started by a scrape that gave up
            // on it): each scrape would wait as long.
            await within(count(), waitMs);
          }
          this.reset();
          if (counted === null) return;
          this.set({ table: 'commands' }, counted.counts.commands);
          this.set({ table: 'events' }, counted.counts.events);
        },
      });
    }
    this.httpResponses = new Counter({
      name: 'sluice_http_responses_total',
      help: 'HTTPS intake responses by route (its pattern; unmatched: no route; unparsed: refused by the HTTP parser before it was a request) and status.',
      labelNames: ['route', 'status'],
      registers,
    });
    this.mqttMessages = new Counter({
      name: 'sluice_mqtt_messages_total',
      help: 'MQTT command messages by outcome.',
      labelNames: ['outcome'],
      registers,
    });
    this.mqttResponseTopicsRefused = new Counter({
      name: 'sluice_mqtt_response_topics_refused_total',
      help: 'MQTT 5 Response Topics not answered, by reason: invalid, system ($), command_topic (a command topic of any gateway), gateway_topic, not_allowed (not in mqtt.responseTopics).',
      labelNames: ['reason'],
      registers,
    });
    this.mqttResultsNotPublished = new Counter({
      name: 'sluice_mqtt_results_not_published_total',
      help: 'Results (and replies) not held for the MQTT broker because more were waiting for it than are held (10 000): while the gateway was disconnected, or while the broker was slow to acknowledge them; each is in the journal, and results are published again from it.',
      registers,
    });
    this.mqttPublicationsRefused = new Counter({
      name: 'sluice_mqtt_publications_refused_total',
      help: 'MQTT publications the broker refused with a reason code (MQTT 5 PUBACK; e.g. 0x87 Not authorized, an ACL), by kind (result, response, state, status: the gateway online at connect) and reason; not sent again, each outcome is in the journal.',
      labelNames: ['kind', 'reason'],
      registers,
    });
    this.mqttSubscriptionIdentifiers = new Gauge({
      name: 'sluice_mqtt_subscription_identifiers_delivered',
      help: 'Whether the MQTT broker delivers the Subscription Identifiers its CONNACK announces, as the last MQTT 5 connection’s check that read something back found (1), or delivers none (0: a broker that misbehaves, or a bridge or proxy that drops them; command copies through other subscriptions of the session cannot be told apart): the verdict the gateway acts on, which a check that reads nothing back leaves as it was; NaN while not known (no check has read anything back in this run) or not used (MQTT 3.1.1, or a broker that says it has none).',
      registers,
    });
    // Not known until a connection's check answers: NaN, not 0 (which says they are missing).
    this.mqttSubscriptionIdentifiers.set(Number.NaN);
    this.mqttTakeoversSuspected = new Counter({
      name: 'sluice_mqtt_session_takeovers_suspected_total',
      help: "Connections to the MQTT broker that ended because another client connected with the gateway's client id, as far as the gateway can tell, by evidence: disconnect (MQTT 5 DISCONNECT 0x8E Session taken over), clean_session (the broker discarded the gateway's session and published its Will: a client that started a clean session), pattern (three or more connections in a row closed within 30 s without a reason, the retained status left as the gateway published it; each counted once the third comes).",
      labelNames: ['evidence'],
      registers,
    });
    for (const evidence of ['disconnect', 'clean_session', 'pattern']) {
      this.mqttTakeoversSuspected.inc({ evidence }, 0);
    }
    this.journalFailures = new Counter({
      name: 'sluice_journal_unavailable_total',
      help: 'Intake requests refused because the journal could not be written.',
      registers,
    });
    this.httpsConnectionsRefused = new Counter({
      name: 'sluice_https_connections_refused_total',
      help: 'HTTPS connections closed as soon as accepted, by reason: max_connections (https.maxConnections were open), per_address (https.maxConnectionsPerAddress from its address).',
      labelNames: ['reason'],
      registers,
    });
    this.httpsConnectionsIdleClosed = new Counter({
      name: 'sluice_https_connections_idle_closed_total',
      help: 'HTTPS connections closed because their client did not do its part in time, by stage: handshake (no TLS handshake within 10 s), first_request (no byte of a request within 10 s of the handshake), answer_unread (an answer not taken by the client within 30 s: it does not read).',
      labelNames: ['stage'],
      registers,
    });
    this.httpsTlsHandshakesFailed = new Counter({
      name: 'sluice_https_tls_handshakes_failed_total',
      help: "HTTPS connections whose TLS handshake failed, by reason: plain_http (an http:// request to the HTTPS port), not_tls (bytes that are not TLS), version (the client offers no TLS 1.3), untrusted (the client's alert: it does not trust the gateway's certificate), aborted (the client closed the connection during the handshake, as a Node.js client not trusting the certificate does), other. Handshake timeouts are in sluice_https_connections_idle_closed_total.",
      labelNames: ['reason'],
      registers,
    });
    this.httpsClientsGone = new Counter({
      name: 'sluice_https_clients_gone_total',
      help: 'HTTPS commands whose client was gone before its answer (its connection reset or broken while the command ran): each command goes on and settles, and a retry with its key gets the outcome. A client that half-closes its connection is answered, not counted.',
      registers,
    });
    new Gauge({
      name: 'sluice_device_connected',
      help: 'Whether the driver of the device is connected (1) or not (0).',
      labelNames: ['device'],
      registers,
      collect() {
        for (const d of pipeline.devices()) this.set({ device: d.id }, d.health.connected ? 1 : 0);
      },
    });
    new Gauge({
      name: 'sluice_device_read_failing',
      help: "Whether the device's last status read failed (1) or succeeded (0); connected or not.",
      labelNames: ['device'],
      registers,
      collect() {
        for (const d of pipeline.devices()) {
          this.set({ device: d.id }, d.readError === null ? 0 : 1);
        }
      },
    });
    // The totals are kept by the pipeline; each scrape shows them as they stand.
    new Counter({
      name: 'sluice_device_read_errors_total',
      help: 'Failed status reads of the device (errors, refusals, unknown states) since start.',
      labelNames: ['device'],
      registers,
      collect() {
        this.reset();
        for (const d of pipeline.devices()) this.inc({ device: d.id }, d.readErrors.status);
      },
    });
    new Counter({
      name: 'sluice_controller_clock_read_errors_total',
      help: 'Failed controller clock reads of the device since start.',
      labelNames: ['device'],
      registers,
      collect() {
        this.reset();
        for (const d of pipeline.devices()) this.inc({ device: d.id }, d.readErrors.clock);
      },
    });
    new Counter({
      name: 'sluice_device_write_busy_resends_total',
      help: 'Writes sent again to the device because the controller answered the last one busy (Modbus exception 0x06: not processed), since start.',
      labelNames: ['device'],
      registers,
      collect() {
        this.reset();
        for (const d of pipeline.devices()) this.inc({ device: d.id }, d.writes.busyResends);
      },
    });
    new Counter({
      name: 'sluice_device_write_busy_given_up_total',
      help: "Writes to the device given up at their command's deadline, the controller answering busy to the last (the command failed DEVICE_FAULT, nothing applied), since start.",
      labelNames: ['device'],
      registers,
      collect() {
        this.reset();
        for (const d of pipeline.devices()) this.inc({ device: d.id }, d.writes.busyGivenUp);
      },
    });
    new Counter({
      name: 'sluice_device_redispatches_total',
      help: 'Second writes sent to the device for commands whose first write was proven never applied, by why it was in doubt: lost_answer (its answer lost), restart (sent by an earlier life of the daemon), withdrawn (withdrawn unsent as the daemon stopped), withheld (withheld unsent when the journal failed to make its dispatch durable), no_connection (refused unsent by the driver for want of a connection; the command went round again once it was back); since start.',
      labelNames: ['device', 'reason'],
      registers,
      collect() {
        this.reset();
        for (const d of pipeline.devices()) {
          const counts = d.writes.redispatches;
          for (const reason of REDISPATCH_REASONS)
            this.inc({ device: d.id, reason }, counts[reason]);
        }
      },
    });
    new Gauge({
      name: 'sluice_device_readback_age_seconds',
      help: 'Age of the last readback of the device.',
      labelNames: ['device'],
      registers,
      collect() {
        for (const d of pipeline.devices()) {
          if (d.readbackAgeMs !== null) this.set({ device: d.id }, d.readbackAgeMs / 1000);
        }
      },
    });
    new Gauge({
      name: 'sluice_device_image_unchanged_seconds',
      help: 'How long reads have returned the same scan of the controller image (frozen past a few scans: the controller has stopped publishing); NaN when its readbacks carry no scan time.',
      labelNames: ['device'],
      registers,
      collect() {
        for (const d of pipeline.devices()) {
          if (d.mirror === null) continue;
          const ms = d.imageUnchangedMs;
          this.set({ device: d.id }, ms === null ? Number.NaN : ms / 1000);
        }
      },
    });
    new Gauge({
      name: 'sluice_commands_in_flight',
      help: 'Commands being carried out now (checked, written, awaiting their readback): at most one per device. A command that holds its device with no worker on it (left open until taken up again) is not counted here, but in sluice_device_queue_length.',
      registers,
      collect() {
        let n = 0;
        for (const d of pipeline.devices()) if (d.inFlight !== null) n++;
        this.set(n);
      },
    });
    // Every command that holds the device, not only the queue and the one in flight: a command
    // left open (the journal failed under it), one whose end is being made durable, or one a
    // stop preempted holds the device as much, with no worker on it, and counted as 0 the
    // device looked idle to every alert while it ran nothing else.
    new Gauge({
      name: 'sluice_device_queue_length',
      help: 'Commands the device holds: waiting for it, and the one it is on (in flight, its end being written, left open until taken up again, or preempted by a stop and waiting for it); 0 when idle.',
      labelNames: ['device'],
      registers,
      collect() {
        for (const d of pipeline.devices()) this.set({ device: d.id }, d.holding);
      },
    });
    new Gauge({
      name: 'sluice_controller_skew_seconds',
      help: 'Controller clock minus gateway clock, as measured on the current connection; NaN while not known (never measured, no clock, or the estimate void, of a connection since lost, or expired).',
      labelNames: ['device'],
      registers,
      collect() {
        // Unknown is NaN, not the last value: a skew voided (a reconnect, a contradicting
        // readback, an expiry) is no longer the controller's, and a gauge left as it was would
        // show it as current until the clock is measured again.
        for (const d of pipeline.devices()) {
          const known = d.skew !== null && d.skewStands;
          this.set({ device: d.id }, known ? d.skew.offsetMs / 1000 : Number.NaN);
        }
      },
    });
    new Gauge({
      name: 'sluice_controller_drift_ppm',
      help: 'Controller clock rate against the gateway clock, ppm (+: it gains); NaN while not known: measurements since the last step of the clock span less than 5 s, or do not yet know it within 10 ppm (one standard error) or a tenth of itself.',
      labelNames: ['device'],
      registers,
      collect() {
        // NaN, not the last value: after a step of the controller's clock (a restart, a manual
        // set) the drift of the clock before it is no longer its drift.
        for (const d of pipeline.devices()) {
          this.set({ device: d.id }, d.driftPpm ?? Number.NaN);
        }
      },
    });
    new Gauge({
      name: 'sluice_controller_clock_ok',
      help: 'Whether the controller clock is within its allowed skew (1) or beyond it (0), as measured on the current connection; NaN while not known.',
      labelNames: ['device'],
      registers,
      collect() {
        // A clock never measured (a device without a clock register, or not read yet) or
        // whose estimate no longer stands is not known to be within its bound: NaN, not 1.
        for (const d of pipeline.devices()) {
          const known = d.skew !== null && d.skewStands;
          this.set({ device: d.id }, !known ? Number.NaN : d.clockOff === null ? 1 : 0);
        }
      },
    });
    if (gatewayClock !== undefined) {
      new Gauge({
        name: 'sluice_gateway_clock_state',
        help: 'Gateway clock sync state (1 for the current state), by source.',
        labelNames: ['state', 'source'],
        registers,
        collect() {
          const status = gatewayClock.status();
          this.reset();
          for (const state of ['LOCKED', 'HOLDOVER', 'UNLOCKED', 'UNKNOWN']) {
            this.set({ state, source: status.source }, status.state === state ? 1 : 0);
          }
        },
      });
      new Gauge({
        name: 'sluice_gateway_clock_offset_seconds',
        help: 'Gateway clock offset from its reference (PTP master offset, chrony); NaN when not known (no source, or it does not answer).',
        registers,
        collect() {
          const offset = gatewayClock.status().offsetNs;
          // Unknown is NaN, not 0: reset() would export 0, a perfect offset, for a gateway
          // whose time source is down or absent.
          this.set(offset === null ? Number.NaN : offset / 1e9);
        },
      });
    }
    // One journal query per scrape serves the open-command gauges below.
    let snapshot: { at: number; open: OpenCommands | null } = { at: -Infinity, open: null };
    const openNow = (): OpenCommands | null => {
      const at = clock.elapsed();
      if (at - snapshot.at > 250) {
        let open: OpenCommands | null = null;
        try {
          open = pipeline.openCommands();
        } catch {
          // The journal cannot be read: the gauges below say so in this scrape — the labelled
          // ones are left out, the others are NaN (Prometheus' "unknown") — rather than show
          // their last counts as current.
        }
        snapshot = { at, open };
      }
      return snapshot.open;
    };
    new Gauge({
      name: 'sluice_commands_open',
      help: 'Non-terminal commands in the journal, by state.',
      labelNames: ['state'],
      registers,
      collect() {
        const open = openNow();
        this.reset();
        if (open === null) return;
        this.set({ state: 'accepted' }, open.accepted);
        this.set({ state: 'dispatched' }, open.dispatched);
      },
    });
    new Gauge({
      name: 'sluice_commands_open_by_age',
      help: 'Non-terminal commands at most `le` seconds old (cumulative, like histogram buckets).',
      labelNames: ['le'],
      registers,
      collect() {
        const open = openNow();
        this.reset();
        if (open === null) return;
        for (const bucket of open.byAge) this.set({ le: bucket.le }, bucket.count);
      },
    });
    new Gauge({
      name: 'sluice_commands_oldest_open_age_seconds',
      help: 'Age of the oldest non-terminal command (0 when none).',
      registers,
      collect() {
        const open = openNow();
        this.set(open === null ? Number.NaN : (open.oldestAgeMs ?? 0) / 1000);
      },
    });
    new Gauge({
      name: 'sluice_commands_stuck',
      help: 'Commands still open past their bound (SPEC §2: deadline plus confirm timeout, or the end of a recovery take-up or stop pause): they need a person.',
      registers,
      collect() {
        const open = openNow();
        // Counted: the summary lists only the most overdue of a removed device's backlog.
        this.set(open === null ? Number.NaN : open.stuckCount);
      },
    });
    pipeline.onSettled((record, times) => {
      this.settled(record, times);
    });
  }

  /** Counted, and its durations observed (measured on the monotonic clock: SettledTimes). */
  private settled(record: CommandRecord, times: SettledTimes): void {
    this.commands.inc({
      device: record.device,
      intake: record.intake,
      state: record.state,
      code: record.code ?? '',
    });
    this.latency.observe(
      { device: record.device, state: record.state },
      times.sinceAcceptedMs / 1000,
    );
    if (record.state === 'confirmed' && times.sinceDispatchedMs !== null) {
      this.confirmLatency.observe({ device: record.device }, times.sinceDispatchedMs / 1000);
    }
  }
}

/** The retention sweeper, with its runs and purged commands counted in the metrics. */
export class CountedRetentionSweeper extends RetentionSweeper {
  constructor(
    options: RetentionOptions,
    private readonly metrics: Metrics,
  ) {
    super(options);
  }

  override async sweep(): Promise<number> {
    const purged = await super.sweep();
    this.metrics.retentionSweeps.inc();
    this.metrics.retentionPurged.inc(purged);
    return purged;
  }
}
