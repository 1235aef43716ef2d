import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { Clock } from '../core/clock.js';
import { isTerminal, type CommandState } from '../core/command.js';
import type { GatewayClock } from '../core/gateway-clock.js';
import type { CommandRecord, CommandRef, JournalEvent, ListFilter } from '../core/journal.js';
import type { DeviceTiming } from '../core/open-commands.js';
import { imageFrozen, wholeMs } from '../core/device-monitor.js';
import type { CommandPipeline, DeviceView } from '../core/pipeline.js';
import type { DeviceProfile } from '../core/profile.js';
import { packageRoot } from '../package-root.js';
import type { CertificateVerdict } from './https-certificate.js';
import { listItem, type ListItem } from '../views/command-list.js';
import { gatewayClockDocument, type GatewayClockDocument } from '../views/gateway-clock.js';
import { refusalAdvice } from '../views/command-advice.js';
import { showCommand, type CommandShow } from '../views/command-show.js';
import { stuckItems, type StuckItem } from '../views/open-commands.js';
import { deviceDocument, type DeviceDocument } from './device-view.js';
import { unreadText, whyOpen, type OpenDevice } from './ui-open-why.js';

/**
 * What the status page shows, as JSON documents: the devices, the commands (open and stuck
 * first, then recent), one command's whole story, and the gateway. Built from the same read
 * model as `sluicectl` (src/views) and `GET /v1/devices` (device-view.ts), plus what only a
 * page needs: the fault code's meaning from the device profile, LOCAL/REMOTE, the command in
 * flight with its age, and a device that should be moving but is not.
 */

/** The journal's read side, as the page uses it. */
export interface CommandReader {
  list(filter: ListFilter): CommandRecord[];
  listOpen(): CommandRecord[];
  get(ref: CommandRef): CommandRecord | undefined;
  history(ref: CommandRef): JournalEvent[];
  stopsAfter(ref: CommandRef, limit: number): CommandRecord[];
}

/** The MQTT intake, as far as the page reports it. */
export interface MqttStatusSource {
  connected(): boolean;
  protocol(): { readonly summary: string };
  health(): { readonly lastError: string | null };
}

/** The gateway's own state: its clock, its broker connection, its journal file. */
export interface GatewaySources {
  readonly gatewayId: string;
  readonly clock: GatewayClock;
  readonly mqtt: MqttStatusSource | null;
  /** The journal's SQLite file; its size (with its WAL) is reported. */
  readonly journalPath: string | null;
  /**
   * Why the journal is unavailable now, in /readyz's words, or null; cheap, with no write of its
   * own (the page's stream asks every second: readiness.ts, journalProblem).
   */
  readonly journalProblem: () => string | null;
}

export interface UiViewsOptions {
  readonly pipeline: CommandPipeline;
  readonly commands: CommandReader;
  /** Each configured device's profile, by device id. */
  readonly profiles: ReadonlyMap<string, DeviceProfile>;
  readonly gateway: GatewaySources;
  /**
   * The verdict on the HTTPS server certificate served now, as /readyz gives it
   * (HttpsIntake.certificateCheck); null when it cannot be read as X.509.
   */
  readonly serverCertificate: () => CertificateVerdict | null;
  readonly clock: Clock;
}

/**
 * A device in a travelling state whose readbacks have not changed for this long is reported as
 * not moving: travel shows as a changing position at every scan. Devices without a position
 * (limit-switch valves) cannot show it and are never judged.
 */
export const STALL_AFTER_MS = 5_000;

export type DeviceTone = 'rest' | 'moving' | 'fault' | 'local' | 'unknown';

export interface UiDevice extends DeviceDocument {
  /** How the state is coloured; the page always shows the state's word with it. */
  readonly tone: DeviceTone;
  /** LOCAL when the device's local switch is on; null before the first readback. */
  readonly mode: 'LOCAL' | 'REMOTE' | null;
  /** The controller's fault code and its meaning from the device profile. */
  readonly fault: { readonly code: string; readonly meaning: string | null } | null;
  /**
   * In a travelling state with no readback change for STALL_AFTER_MS or longer; null while no
   * read of the device answers (its last readback says nothing of what it does now).
   */
  readonly stalled: {
    readonly state: string;
    readonly position: number | null;
    readonly forMs: number;
  } | null;
  /**
   * Reads answered with the same scan of the controller's image for IMAGE_FROZEN_MS or longer:
   * the controller has stopped publishing, and the state shown is not what the device does.
   */
  readonly frozen: { readonly scanTime: string | null; readonly forMs: number } | null;
  /** The command in flight on the device, with its age. */
  readonly command: InFlightCommand | null;
}

export interface InFlightCommand {
  readonly key: string;
  readonly scope: string;
  readonly action: string;
  readonly position: number | null;
  readonly state: string;
  readonly acceptedAt: string;
  /** 0 when its accepted time lies ahead of the clock (`acceptedAheadMs`). */
  readonly ageMs: number;
  /**
   * How far its accepted time lies ahead of the clock, when it does (the gateway's wall clock
   * was set back after it was accepted: its age cannot be told), as StuckItem has it; else null.
   */
  readonly acceptedAheadMs: number | null;
  readonly deadline: string;
  /** How long past its deadline it is, when it is. */
  readonly pastDeadlineMs: number | null;
}

/** One command's story, as `sluicectl show --json` gives it, with its `advice`. */
export interface UiCommandShow extends CommandShow {
  /** What to do about its outcome (views/command-advice.ts); null when nothing is to be done. */
  readonly advice: string | null;
}

export interface UiOpenCommand extends StuckItem {
  /** Why it is still open, in a sentence: what a person needs to know first. */
  readonly why: string;
}

export interface UiCommands {
  /** Open commands: the stuck ones first (longest overdue first), then the oldest first. */
  readonly open: readonly UiOpenCommand[];
  /** Settled commands, newest first. */
  readonly recent: readonly ListItem[];
  /** Every device, for the filter. */
  readonly devices: readonly string[];
}

export interface UiCommandsQuery {
  readonly device?: string;
  readonly state?: CommandState;
  readonly limit: number;
}

export interface UiGateway {
  readonly gatewayId: string;
  readonly version: string;
  readonly now: string;
  readonly clock: GatewayClockDocument;
  readonly mqtt: {
    readonly connected: boolean;
    readonly protocol: string;
    readonly lastError: string | null;
  } | null;
  /** The HTTPS server certificate's verdict (https-certificate.ts); null when not known. */
  readonly certificate: CertificateVerdict | null;
  readonly journal: {
    readonly bytes: number | null;
    /** Why it is unavailable (/readyz's `journal` detail); null while it works. */
    readonly unavailable: string | null;
  };
  readonly commands: {
    readonly accepted: number;
    readonly dispatched: number;
    readonly stuck: number;
  };
}

const iso = (ms: number): string => new Date(ms).toISOString();

/** The package's version, read once. */
export function packageVersion(): string {
  const text = readFileSync(join(packageRoot(), 'package.json'), 'utf8');
  const parsed = JSON.parse(text) as { version?: unknown };
  return typeof parsed.version === 'string' ? parsed.version : 'unknown';
}

export class UiViews {
  private readonly o: UiViewsOptions;
  private readonly version: string;
  /** Monotonic time of each device's last mirror change (stall judgement). */
  private readonly lastChange = new Map<string, number>();
  private readonly startedMono: number;

  constructor(options: UiViewsOptions) {
    this.o = options;
    this.version = packageVersion();
    this.startedMono = options.clock.elapsed();
  }

  /** The pipeline's mirror listener: a device's readback changed. */
  mirrorChanged(device: string): void {
    this.lastChange.set(device, this.o.clock.elapsed());
  }

  /** Each device's confirm timeout and unreachable grace: the pipeline's, as /readyz judges. */
  deviceTimings(): Map<string, DeviceTiming> {
    return this.o.pipeline.deviceTimings();
  }

  devices(allowed: (device: string) => boolean): UiDevice[] {
    const now = this.o.clock.now();
    return this.o.pipeline.devices().map((view) => this.device(view, allowed(view.id), now));
  }

  private device(view: DeviceView, allowed: boolean, now: number): UiDevice {
    const doc = deviceDocument(view, allowed);
    const profile = this.o.profiles.get(view.id);
    const mirror = doc.mirror;
    const faultCode = mirror?.faultCode ?? null;
    const meanings = profile?.controller.faultCodes ?? {};
    const meaning =
      faultCode === null
        ? null
        : (Object.entries(meanings).find(
            ([code]) => code.toLowerCase() === faultCode.toLowerCase(),
          )?.[1] ?? null);
    return {
      ...doc,
      tone: toneOf(mirror?.state ?? null, profile),
      mode: mirror === null ? null : mirror.state === profile?.localState ? 'LOCAL' : 'REMOTE',
      fault: faultCode === null ? null : { code: faultCode, meaning },
      stalled: this.stalled(view, profile),
      frozen:
        view.imageUnchangedMs !== null && imageFrozen(view.imageUnchangedMs)
          ? { scanTime: mirror?.sourceTime ?? null, forMs: wholeMs(view.imageUnchangedMs) }
          : null,
      command: this.inFlight(view, now),
    };
  }

  /** The devices that should be moving and are not (cheap: no journal read). */
  stalledDevices(): string[] {
    return this.o.pipeline
      .devices()
      .filter((view) => this.stalled(view, this.o.profiles.get(view.id)) !== null)
      .map((view) => view.id);
  }

  private stalled(view: DeviceView, profile: DeviceProfile | undefined): UiDevice['stalled'] {
    const mirror = view.mirror;
    if (mirror === null || profile === undefined || mirror.position === null) return null;
    if (!profile.transitional.includes(mirror.state)) return null;
    // Not judged from the last readback while no read answers (its PLC not connected, or its
    // reads failing): a valve travelling when its PLC dropped off moves on (ui-open-why.ts).
    if (!view.health.connected || view.readError !== null) return null;
    const since = this.lastChange.get(view.id) ?? this.startedMono;
    const forMs = Math.round(this.o.clock.elapsed() - since);
    return forMs >= STALL_AFTER_MS
      ? { state: mirror.state, position: mirror.position, forMs }
      : null;
  }

  /** The device's command in flight (or left open, waiting to be settled), from the journal. */
  private inFlight(view: DeviceView, now: number): InFlightCommand | null {
    const key = view.inFlight ?? view.unresolved;
    if (key === null) return null;
    const record = this.o.pipeline
      .findByKey(key)
      .find((r) => r.device === view.id && !isTerminal(r.state));
    if (record === undefined) return null;
    return {
      key: record.key,
      scope: record.scope,
      action: record.action,
      position: record.position,
      state: record.state,
      acceptedAt: iso(record.acceptedAt),
      ageMs: Math.max(0, now - record.acceptedAt),
      acceptedAheadMs: record.acceptedAt > now ? record.acceptedAt - now : null,
      deadline: iso(record.deadline),
      pastDeadlineMs: now > record.deadline ? now - record.deadline : null,
    };
  }

  commands(query: UiCommandsQuery, allowedDevice: (device: string) => boolean): UiCommands {
    const now = this.o.clock.now();
    const reader = this.o.commands;
    const matches = (r: CommandRecord): boolean =>
      (query.device === undefined || r.device === query.device) &&
      (query.state === undefined || r.state === query.state);
    const openRecords = reader.listOpen().filter(matches);
    const devices = this.devices(allowedDevice);
    const known = new Map(
      devices.map(
        (d) =>
          [
            d.id,
            { stalled: d.stalled, frozen: d.frozen, unread: unreadText(d.connectivity) },
          ] as const,
      ),
    );
    const unknown: OpenDevice = { stalled: null, frozen: null, unread: null };
    const journal = this.o.gateway.journalProblem();
    // Judged beside the device's other open commands, whatever the state asked for: a device
    // whose command recovery is settling holds its queued ones within that window too.
    const ofDevices = reader
      .listOpen()
      .filter((r) => query.device === undefined || r.device === query.device);
    const open = stuckItems(ofDevices, 0, now, this.deviceTimings(), reader, (r) => matches(r))
      .map((item) => ({
        ...item,
        why: whyOpen(item, known.get(item.device) ?? unknown, now, journal),
      }))
      .sort((a, b) =>
        a.stuck !== b.stuck
          ? a.stuck
            ? -1
            : 1
          : a.stuck
            ? (b.overdueMs ?? 0) - (a.overdueMs ?? 0)
            : b.ageMs - a.ageMs,
      );
    const filter: ListFilter = {
      ...(query.device === undefined ? {} : { device: query.device }),
      ...(query.state === undefined ? {} : { state: query.state }),
      limit: query.limit + openRecords.length,
    };
    const recent = reader
      .list(filter)
      .filter((r) => isTerminal(r.state))
      .slice(0, query.limit)
      .map((r) => listItem(r, now));
    return { open, recent, devices: this.o.pipeline.devices().map((d) => d.id) };
  }

  /** One command's whole story, as `sluicectl show --json` gives it. */
  command(ref: CommandRef): UiCommandShow | undefined {
    const record = this.o.commands.get(ref);
    if (record === undefined) return undefined;
    const shown = showCommand(record, this.o.commands, this.o.clock.now(), () =>
      this.deviceTimings(),
    );
    // What to do about a refusal in FAULT or LOCAL, or a command that sent its device to FAULT,
    // as `sluicectl show` says it: the story alone gave the rule or the code.
    const profile = shown.outcome === null ? null : (this.o.profiles.get(record.device) ?? null);
    return { ...shown, advice: refusalAdvice(shown, profile) };
  }

  gateway(): UiGateway {
    const { gateway, pipeline } = this.o;
    const open = pipeline.openCommands();
    const mqtt = gateway.mqtt;
    return {
      gatewayId: gateway.gatewayId,
      version: this.version,
      now: iso(this.o.clock.now()),
      clock: gatewayClockDocument(gateway.clock.status()),
      mqtt:
        mqtt === null
          ? null
          : {
              connected: mqtt.connected(),
              protocol: mqtt.protocol().summary,
              lastError: mqtt.health().lastError,
            },
      certificate: this.o.serverCertificate(),
      journal: {
        bytes: journalBytes(gateway.journalPath),
        unavailable: gateway.journalProblem(),
      },
      commands: {
        accepted: open.accepted,
        dispatched: open.dispatched,
        stuck: open.stuckCount,
      },
    };
  }
}

function toneOf(state: string | null, profile: DeviceProfile | undefined): DeviceTone {
  if (state === null || profile === undefined) return 'unknown';
  if (state === profile.faultState) return 'fault';
  if (state === profile.localState) return 'local';
  if (profile.transitional.includes(state)) return 'moving';
  return profile.states.includes(state) ? 'rest' : 'unknown';
}

/** The journal file and its WAL, in bytes; null when unknown or unreadable. */
function journalBytes(path: string | null): number | null {
  if (path === null) return null;
  let total = 0;
  for (const file of [path, `${path}-wal`]) {
    try {
      total += statSync(file).size;
    } catch (error) {
      if (file === path) return null;
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') return null;
    }
  }
  return total;
}
