import { hostAndPort } from '../config/network-addresses.js';
import { imageFrozen, wholeMs } from '../core/device-monitor.js';
import type { GatewayClock } from '../core/gateway-clock.js';
import type { CommandPipeline } from '../core/pipeline.js';
import type { HttpsIntake } from '../intake/https.js';
import type { MqttIntake } from '../intake/mqtt.js';
import { identityRenameCheck, type IdentityRenameNotice } from './identity-renames.js';

/**
 * The gateway's readiness (SPEC §4 /readyz), and the STATUS= line `systemctl status` shows.
 *
 * Both say the same thing from the same checks. /readyz is asked for: it proves the journal
 * writable with a real write and lists every open command (each reused for PROBE_REUSE_MS, as
 * anyone may ask it any number of times). The status line is looked at every
 * second: it takes the journal's word for what its last writes and barriers did (a write every
 * second would be a flush of the gateway's flash every second) and leaves the open commands out
 * (with thousands open, listing them each second would cost the event loop what recovery needs);
 * `/readyz` and `sluicectl stuck` name the stuck ones.
 */

export interface Readiness {
  ready: boolean;
  checks: Record<string, { ok: boolean; detail: string }>;
}

/**
 * A device whose last readback is older than this counts as unreachable for readiness. Reads
 * that keep failing make it unreachable sooner (READS_FAILING_MS); this bound is for a device
 * whose reads neither succeed nor fail.
 */
export const READBACK_STALE_MS = 15_000;

/**
 * How long a device's reads must keep failing before readiness counts it unreachable: at least
 * READ_FAILURES_UNREACHABLE reads failed in a row, the first of them this long ago (monotonic).
 *
 * One failed read between good ones (a connection reset and opened again at the next read, a
 * reply lost, a PLC busy for a scan) neither moves the device nor fails a command on it: a
 * command reads until its deadline and writes at the first good read. Counted unreachable at
 * once, it turned /readyz not ready for one read cycle, and a load balancer or a systemd
 * consumer saw the gateway flap. A count alone would not tell a blip from an outage: one lost
 * connection fails every read queued on it at once (a command's readback, the monitor's, the
 * controller clock's), several in a row within a millisecond. A duration alone would count one
 * failed read followed by a slow one. With the idle-device monitor's 1 s pace and the default
 * request timeouts, a device that stops answering is counted unreachable 3 to 5 s after its
 * first failed read, well before READBACK_STALE_MS.
 */
export const READS_FAILING_MS = 3_000;
export const READ_FAILURES_UNREACHABLE = 2;

/**
 * How long a /readyz answer reuses the journal's last successful proof write and its last list
 * of open commands. /readyz needs no credentials, and each probe is a commit and a walk of every
 * open command on the event loop that carries commands (about 50 ms with 5 000 open, as after a
 * restart under load): a burst of probes would otherwise cost a commit each and the time
 * recovery needs. Failures are not reused: a journal that failed its last write is proved
 * again at every request, so it shows at once and its recovery as soon as it comes.
 */
export const PROBE_REUSE_MS = 1_000;

/**
 * How long the journal's sync (the fdatasync of group commit, on libuv's thread pool) may be
 * under way before /readyz counts the journal unavailable: a disk that stalls (a failing card,
 * storage gone away) leaves the fdatasync waiting while every write still reaches the page cache,
 * so the proof write succeeds and the event loop turns (the watchdog's pings go on), yet no
 * command is acknowledged or written, each waiting for that sync. As the operator's resolve
 * waits for it (operator-resolve.ts).
 */
export const SYNC_STALL_MS = 5_000;

/**
 * What /readyz reuses for PROBE_REUSE_MS, on the monotonic clock (a step of the gateway clock
 * would make a proof look fresh for as long as the step). One per daemon.
 */
export class ProbeCache {
  /** When the journal last took the proof write, while no write of its own has failed since. */
  provenAt: number | null = null;
  commands: { at: number; check: Check } | null = null;
  /**
   * The sync /readyz or the status line asked for last (durable()), when it asked (monotonic,
   * and the wall clock's time for the line), and whether it has returned.
   */
  sync: { since: number; at: Date; returned: boolean } | null = null;
  /**
   * The journal's known failure that the status line's last proof write found past (a batch
   * lost at its COMMIT is the known failure until a batch commits again): not proved again.
   */
  provenPast: Error | null = null;

  constructor(
    readonly elapsed: () => number,
    readonly reuseMs = PROBE_REUSE_MS,
    /** SYNC_STALL_MS unless a test shortens it (DaemonOptions.syncStallMs). */
    readonly syncStallMs = SYNC_STALL_MS,
  ) {}

  fresh(at: number | null): boolean {
    return at !== null && this.elapsed() - at < this.reuseMs;
  }
}

export interface ReadinessParts {
  readonly journal: {
    /**
     * Throws what a claim would meet now: a real write, committed on its own, as large as a
     * claim's while the journal's filesystem is short of room (SqliteJournal.checkWritable).
     */
    checkWritable(): void;
    /** What the journal's last write or barrier met, if it failed; null when it succeeded. */
    knownFailure(): Error | null;
    /** Resolves once every write made so far is on disk (a sync of the WAL). */
    durable(): Promise<void>;
  };
  readonly pipeline: Pick<CommandPipeline, 'openCommands' | 'devices' | 'recoveryFailed'>;
  readonly mqttIntake: MqttIntake | null;
  readonly httpsIntake: HttpsIntake | null;
  /** Where HTTPS listens; null until it does. */
  readonly https: { host: string; port: number } | null;
  readonly gatewayClock: GatewayClock;
  readonly onUnsynced: 'warn' | 'reject';
  /** The pipeline's monotonic clock (Clock.elapsed): how long a device's reads have failed. */
  readonly elapsed: () => number;
  /** READS_FAILING_MS unless a test shortens it (DaemonOptions.readsFailingMs). */
  readonly readsFailingMs?: number;
  /** Identities renamed while keys of their former names are kept (identity-renames.ts). */
  readonly identityRenames?: () => readonly IdentityRenameNotice[];
}

export interface Check {
  ok: boolean;
  detail: string;
  /**
   * What is wrong, for the status line, in words that stay the same while it stays wrong (the
   * line is sent again whenever its text changes). Unset: the intakes' part of the line says it.
   */
  brief?: string;
  /** Said at the end of the status line while the check holds, though it passes. */
  note?: string;
}

/**
 * Every check /readyz answers with, the journal proved by a write (or by one made within
 * PROBE_REUSE_MS while none has failed since: ProbeCache).
 */
export function readiness(parts: ReadinessParts, cache: ProbeCache): Readiness {
  const checks = runChecks(parts, cache);
  return {
    ready: Object.values(checks).every((c) => c.ok),
    checks: Object.fromEntries(
      Object.entries(checks).map(([name, c]) => [name, { ok: c.ok, detail: c.detail }]),
    ),
  };
}

/**
 * `ready: HTTPS on …, MQTT connected; 2 recovered command(s) settled`, or, while a check fails,
 * `not ready (journal unavailable (claim): SQLITE_FULL …; valve-2 unreachable): HTTPS on …`.
 */
export function statusLine(
  parts: ReadinessParts,
  recovery: { total: number; open: number },
  cache: ProbeCache,
  options: {
    /** Prove the journal with a write even when none of its writes is known to have failed. */
    readonly prove: boolean;
    /** Said at the end of the line (a past outage of the journal). */
    readonly note: string | null;
  },
): StatusView {
  const checks = runChecks(parts, { status: cache, prove: options.prove });
  const journal = checks.journal ?? { ok: true, detail: 'not checked' };
  const failing = Object.values(checks).filter((c) => !c.ok);
  const briefs = failing.flatMap((c) => (c.brief === undefined ? [] : [c.brief]));
  const state =
    failing.length === 0
      ? 'ready'
      : briefs.length === 0
        ? 'not ready'
        : `not ready (${briefs.join('; ')})`;
  let mqtt: string[] = [];
  if (parts.mqttIntake !== null) {
    const lastError = parts.mqttIntake.health().lastError;
    mqtt = [
      parts.mqttIntake.connected()
        ? 'MQTT connected'
        : lastError === null
          ? 'MQTT connecting'
          : `MQTT not connected (${lastError})`,
    ];
  }
  const intakes = [
    ...(parts.https === null
      ? []
      : [`HTTPS on ${hostAndPort(parts.https.host, parts.https.port)}`]),
    ...mqtt,
  ];
  const { total, open } = recovery;
  const recovered =
    open === 0
      ? `${total} recovered command(s) settled`
      : `${open} of ${total} recovered command(s) still settling`;
  const notes = [
    ...Object.values(checks).flatMap((c) => (c.note === undefined ? [] : [c.note])),
    ...(options.note === null ? [] : [options.note]),
  ];
  const note = notes.map((n) => `; ${n}`).join('');
  return {
    line: `${state}: ${intakes.length === 0 ? 'no intake' : intakes.join(', ')}; ${recovered}${note}`,
    journal,
  };
}

/** The STATUS= line and the journal's check it was made with. */
export interface StatusView {
  readonly line: string;
  readonly journal: Check;
}

/** How the status line checks: the journal by its known failures, proved only when it fails. */
interface StatusMode {
  readonly status: ProbeCache;
  readonly prove: boolean;
}

/** The checks; with a ProbeCache, /readyz's (the journal proved, the open commands listed). */
function runChecks(parts: ReadinessParts, mode: ProbeCache | StatusMode): Record<string, Check> {
  const checks: Record<string, Check> = {};
  checks.journal = journalCheck(parts, mode);
  if (parts.mqttIntake !== null) {
    // The version is part of the answer: after a fallback to 3.1.1 (SPEC §5) the intake is
    // up, without response topics and message expiry.
    const up = parts.mqttIntake.connected();
    const lastError = parts.mqttIntake.health().lastError;
    checks.mqtt = {
      ok: up,
      detail: up
        ? `connected (${parts.mqttIntake.protocol().summary})`
        : `not connected to the broker${lastError === null ? '' : `: ${lastError}`}`,
    };
  }
  if (parts.httpsIntake !== null) {
    // Listening is not enough: clients refuse a server certificate out of its validity.
    const certificate = parts.https === null ? null : parts.httpsIntake.certificateCheck();
    checks.https = {
      ok: parts.https !== null && certificate?.ok !== false,
      detail:
        parts.https === null
          ? 'not listening'
          : certificate === null
            ? 'listening'
            : certificate.ok
              ? `listening; ${certificate.detail}`
              : `listening, but ${certificate.detail}`,
      brief:
        parts.https === null
          ? 'HTTPS not listening'
          : `HTTPS certificate: ${certificate?.detail ?? 'valid'}`,
    };
  }
  if (mode instanceof ProbeCache) checks.commands = commandsCheck(parts, mode);
  // A rename is no outage: said, and ready (/readyz 200), while it matters.
  for (const renamed of parts.identityRenames?.() ?? []) {
    const { detail, note } = identityRenameCheck(renamed);
    checks[`identity:${renamed.now}`] = { ok: true, detail, note };
  }
  const sync = parts.gatewayClock.status();
  const synced = sync.source === 'none' || sync.state === 'LOCKED' || sync.state === 'HOLDOVER';
  checks.clock = {
    // Unsynced under `warn`: commands still run, so the gateway stays ready (and says so).
    ok: synced || parts.onUnsynced === 'warn',
    detail:
      sync.source === 'none'
        ? sync.detail
        : `${sync.state} (${sync.source}${sync.offsetNs === null ? '' : `, offset ${sync.offsetNs} ns`}): ${sync.detail}${synced ? '' : `; timestamped commands ${parts.onUnsynced === 'reject' ? 'are refused CLOCK_SKEW' : 'run with a warning'}`}`,
    brief: `gateway clock ${sync.state} (${sync.source})`,
  };
  for (const d of parts.pipeline.devices()) {
    if (d.skew !== null || d.clockOff !== null) {
      const off = d.clockOff;
      const drift = d.driftPpm === null ? '' : `, drift ${Math.round(d.driftPpm)} ppm`;
      checks[`clock:${d.id}`] = {
        ok: off === null || parts.onUnsynced === 'warn',
        // The flag is the standing estimate's (DeviceView.clockOff); a skew that no longer
        // stands (a reconnect, an expiry) is the last measurement, not the clock as it is.
        detail:
          off !== null
            ? `controller clock ${Math.round(off.offsetMs)} ms off, beyond ${off.maxMs} ms${drift}; its writes ${parts.onUnsynced === 'reject' ? 'are refused CLOCK_SKEW' : 'run with a warning'}`
            : d.skew !== null && !d.skewStands
              ? `controller clock not known now: its last measurement (skew ${Math.round(d.skew.offsetMs)} ms at ${new Date(d.skew.measuredAt).toISOString()}) no longer stands (another connection, or too old); measured again before a write`
              : `controller skew ${Math.round(d.skew?.offsetMs ?? 0)} ms${drift}`,
        brief: `${d.id}: controller clock off beyond ${off?.maxMs ?? 0} ms`,
      };
    }
    // Monotonic: a gateway clock stepped back would show a device that stopped answering
    // as read a moment ago for as long as the step.
    const age = d.readbackAgeMs === null ? null : Math.round(d.readbackAgeMs);
    const reached = age !== null && age < READBACK_STALE_MS;
    const failing = d.readError;
    const failingForMs = failing === null ? 0 : Math.max(0, parts.elapsed() - failing.sinceMono);
    // Reads that keep failing (READS_FAILING_MS) count the device unreachable, as they leave a
    // command nothing to write on; a run still shorter is said, and judged by the last good read.
    const failingBoundMs = parts.readsFailingMs ?? READS_FAILING_MS;
    const failed =
      failing !== null &&
      failing.failures >= READ_FAILURES_UNREACHABLE &&
      failingForMs >= failingBoundMs;
    const failures =
      failing === null
        ? null
        : `reads fail since ${new Date(failing.since).toISOString()} (${failing.failures} in a row): ${failing.message}`;
    // Reads that keep failing say more of the device than the image the last good one
    // returned: they are said below.
    if (reached && !failed && d.imageUnchangedMs !== null && imageFrozen(d.imageUnchangedMs)) {
      const unchanged = wholeMs(d.imageUnchangedMs);
      const scan = d.mirror?.sourceTime ?? null;
      checks[`device:${d.id}`] = {
        ok: false,
        detail: `readback ${age} ms ago, but the controller's image has shown the same scan${scan === null ? '' : ` (${new Date(scan).toISOString()}, controller clock)`} for ${unchanged} ms: the controller has stopped publishing it (a PLC in STOP, a halted program); the mirror is not what the device does, and commands on it are not confirmed`,
        brief: `${d.id} image frozen`,
      };
      continue;
    }
    // A young mirror says nothing of now: judged by its age alone, a device whose every read
    // failed (the PLC answering nothing, resetting the connection, refusing the reads) stayed
    // ready for up to READBACK_STALE_MS. The PLC's unreachable grace is no bound here: it is
    // how long taking up an open command keeps reading, not whether the device answers now.
    const ok = reached && !failed;
    // The device's own failing reads say why; else its connection's last error may.
    const why = failures ?? d.health.lastError;
    checks[`device:${d.id}`] = {
      ok,
      detail: ok
        ? `readback ${age} ms ago${failures === null ? '' : `; ${failures}; unreachable if they fail for ${failingBoundMs} ms`}`
        : `no readback for ${age === null ? 'ever' : `${age} ms`}${why === null ? '' : `: ${why}`}`,
      brief: age === null ? `${d.id} not read yet` : `${d.id} unreachable`,
    };
  }
  return checks;
}

function journalCheck(parts: ReadinessParts, mode: ProbeCache | StatusMode): Check {
  const failed = (error: unknown): Check => {
    const detail = error instanceof Error ? error.message : String(error);
    return { ok: false, detail, brief: detail };
  };
  // Recovery could not read the journal: every command is refused until it has (pipeline.ts).
  const recovery = parts.pipeline.recoveryFailed();
  if (recovery !== null) return failed(recovery);
  if (!(mode instanceof ProbeCache)) return statusJournalCheck(parts, mode, failed);
  const stalled = syncStalled(parts, mode);
  if (stalled !== null) {
    mode.provenAt = null;
    return { ok: false, detail: stalled.detail, brief: stalled.brief };
  }
  // A proof write made a moment ago stands while no write of the journal has failed since.
  if (mode.fresh(mode.provenAt) && parts.journal.knownFailure() === null) {
    return { ok: true, detail: 'writable' };
  }
  try {
    parts.journal.checkWritable();
    mode.provenAt = mode.elapsed();
    return { ok: true, detail: 'writable' };
  } catch (error) {
    mode.provenAt = null;
    return failed(error);
  }
}

/**
 * The status line's journal check, every second without a write of its own while the journal
 * works: its sync timed as /readyz times it (a stalled disk fails no write, it only holds the
 * fdatasync), then the journal's word for its last write. A journal known to fail is proved
 * again with a write, each time: nothing else may write to it (no command comes to a gateway
 * that refuses them, no probe), and its return would not show. At READY (`prove`) it is proved
 * whatever its word: a start writes nothing that could fail.
 */
function statusJournalCheck(
  parts: ReadinessParts,
  mode: StatusMode,
  failed: (error: unknown) => Check,
): Check {
  const cache = mode.status;
  const stalled = syncStalled(parts, cache);
  if (stalled !== null) return { ok: false, detail: stalled.detail, brief: stalled.brief };
  const failure = parts.journal.knownFailure();
  if (!mode.prove && (failure === null || failure === cache.provenPast)) {
    return { ok: true, detail: 'writable at its last write' };
  }
  try {
    parts.journal.checkWritable();
    cache.provenPast = parts.journal.knownFailure();
    return { ok: true, detail: 'writable' };
  } catch (error) {
    cache.provenPast = null;
    return failed(error);
  }
}

/**
 * A sync that has not returned for SYNC_STALL_MS, as /readyz and the status line see it: each
 * look after the last sync asked for returned asks for another (it covers every write made
 * before it, so it waits for one still under way; with nothing written since the last, it costs
 * no fdatasync), and one that has not returned since is timed. `brief` stays the same while the
 * same sync has not returned (the status line is sent again whenever its text changes).
 */
function syncStalled(
  parts: ReadinessParts,
  cache: ProbeCache,
): { detail: string; brief: string } | null {
  const now = cache.elapsed();
  const last = cache.sync;
  if (last === null || last.returned) {
    const asked = { since: now, at: new Date(), returned: false };
    cache.sync = asked;
    const returned = (): void => {
      asked.returned = true;
    };
    // A failed sync is the journal's known failure, which the check below reports.
    try {
      parts.journal.durable().then(returned, returned);
    } catch {
      returned();
    }
    return null;
  }
  return stallWords(last, now, cache.syncStallMs);
}

/** A sync asked for and not returned, in the words of the journal's check, once SYNC_STALL_MS. */
function stallWords(
  sync: { since: number; at: Date },
  now: number,
  syncStallMs: number,
): { detail: string; brief: string } | null {
  const ms = now - sync.since;
  if (ms < syncStallMs) return null;
  return {
    detail: `journal unavailable (sync): the journal's sync (fdatasync of its write-ahead log) has not returned for ${(ms / 1000).toFixed(1)} s: a slow or stalled disk; every command waits for it, and none is acknowledged or written until it returns`,
    brief: `journal unavailable (sync): its fdatasync has not returned since ${sync.at.toISOString().slice(0, 19)}Z, a slow or stalled disk; no command is acknowledged or written until it returns`,
  };
}

/**
 * Why the journal is unavailable now, in the words of its check (/readyz's `journal` detail),
 * or null: from what the daemon knows already, with no write or sync of its own (the status
 * page asks every second). Recovery could not read it; the sync /readyz or the status line
 * asked for has not returned for SYNC_STALL_MS; or its last write or barrier failed and the
 * status line's proof write (every second while it fails, after READY) has not found it past.
 */
export function journalProblem(
  parts: Pick<ReadinessParts, 'journal' | 'pipeline'>,
  cache: ProbeCache,
): string | null {
  const recovery = parts.pipeline.recoveryFailed();
  if (recovery !== null) return recovery.message;
  const sync = cache.sync;
  if (sync !== null && !sync.returned) {
    const stalled = stallWords(sync, cache.elapsed(), cache.syncStallMs);
    if (stalled !== null) return stalled.detail;
  }
  const failure = parts.journal.knownFailure();
  return failure === null || failure === cache.provenPast ? null : failure.message;
}

function commandsCheck(parts: ReadinessParts, cache: ProbeCache): Check {
  const last = cache.commands;
  if (last !== null && cache.fresh(last.at)) return last.check;
  const at = cache.elapsed();
  const check = listOpen(parts);
  // A failed read is not kept: the next probe reads again.
  cache.commands = check.readFailed === true ? null : { at, check };
  return check;
}

function listOpen(parts: ReadinessParts): Check & { readFailed?: true } {
  try {
    const open = parts.pipeline.openCommands();
    // The most overdue, listed (a device no longer configured: its most overdue, the rest
    // counted): the count says how many.
    const stuck = open.stuck;
    const count = open.stuckCount;
    const oldest =
      open.oldestAgeMs === null ? '' : `, oldest ${Math.round(open.oldestAgeMs / 1000)} s`;
    return {
      ok: count === 0,
      detail:
        `${open.accepted + open.dispatched} open (${open.accepted} accepted, ${open.dispatched} dispatched${oldest})` +
        (count === 0
          ? ''
          : // Each with the bound it is past, in the words of `sluicectl stuck` and the page.
            `; ${count} stuck: ${stuck
              .slice(0, 5)
              .map(
                (c) =>
                  `${c.key} on ${c.device} (${c.state}) ${Math.round(c.overdueMs / 1000)} s past ${c.reason}`,
              )
              .join('; ')}${count > 5 ? '; …' : ''}`),
    };
  } catch (error) {
    return {
      ok: false,
      detail: error instanceof Error ? error.message : String(error),
      readFailed: true,
    };
  }
}
