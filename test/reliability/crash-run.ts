import { systemClock } from '../../src/core/clock.js';
import type { CommandRecord, JournalEvent } from '../../src/core/journal.js';
import { silentLogger } from '../../src/core/logger.js';
import { ModbusDeviceDriver, ModbusEndpoint } from '../../src/drivers/modbus.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import type { WriteLogEntry } from '../../simulators/plant.js';
import { profile } from '../helpers/fixtures.js';
import {
  CampaignMqtt,
  httpsUntilTerminal,
  type ClientAnswer,
  type CommandBody,
  type RetryPolicy,
} from './campaign-clients.js';
import { Rng } from './campaign-random.js';
import { unclaimedDeliveries, type ClaimShortfall } from './delivery-claims.js';
import { Site, duplicateHits, type SiteOptions, type Violation } from './site.js';

/**
 * One crash run of the campaign on a whole site (test/reliability/site.ts): clients send
 * commands over both intakes and keep retrying; the daemon is SIGKILLed at a chosen point of
 * one command's life — found by watching the journal (read-only) and the simulators' write
 * logs, not by sleeping — the plant and the broker are disturbed around it, the daemon is
 * started again, and once every client has a terminal answer and the journal has no open
 * command the run is judged from ground truth: Site.verify() plus the checks below.
 */

export const KILL_PHASES = [
  'before-claim',
  'accepted',
  'dispatched',
  'written',
  'readback',
  'outcome',
] as const;
export type KillPhase = (typeof KILL_PHASES)[number];

/** Invariants and checks the campaign counts (Site.verify()'s and its own). */
export const CHECKS = [
  'I1',
  'I2',
  'I3',
  'I4',
  'I5',
  'ATTRIBUTION',
  'OPEN',
  'HONEST',
  'ANSWER',
  'NO_ANSWER',
] as const;
export type Check = (typeof CHECKS)[number];

export interface Finding {
  readonly invariant: Check;
  readonly key: string | null;
  readonly device: string;
  readonly message: string;
  readonly history: readonly JournalEvent[];
}

export type When = 'run' | 'outage' | 'recovery';

export interface PlannedCommand {
  readonly key: string;
  readonly device: string;
  readonly action: string;
  readonly position?: number;
  readonly via: 'https' | 'mqtt' | 'both';
  /** ttlMs in the payload, or absent (the profile default). */
  readonly ttlMs?: number;
  /** issuedAt = the first send minus this (ms), or absent (HTTPS only: the gateway's time). */
  readonly issuedAgoMs?: number;
  readonly prefer: string;
  /** Sent this long after the run starts (`run`) or after the kill (`outage`). */
  readonly during: 'run' | 'outage';
  readonly startMs: number;
}

export type Disturbance =
  | {
      readonly kind: 'power-cycle';
      readonly plc: string;
      readonly offMs: number;
      readonly when: When;
      readonly atMs: number;
    }
  | { readonly kind: 'broker-restart'; readonly when: When; readonly atMs: number }
  | {
      readonly kind: 'third-party';
      readonly device: string;
      readonly action: 'open' | 'close' | 'stop';
      readonly seq: number;
      readonly when: When;
      readonly atMs: number;
    };

/** Simulator faults set on a device when the run starts and cleared when it is judged. */
export type DeviceFault =
  | { readonly kind: 'latency'; readonly device: string; readonly ms: number }
  | { readonly kind: 'hold'; readonly device: string; readonly ms: number }
  | { readonly kind: 'frozen'; readonly device: string };

export interface RunPlan {
  readonly index: number;
  readonly seed: number;
  readonly phase: KillPhase;
  /** Extra wait after the phase is seen (travel for `readback`). */
  readonly killDelayMs: number;
  /** commands[0] is the command whose life the kill watches. */
  readonly commands: readonly PlannedCommand[];
  readonly disturbances: readonly Disturbance[];
  readonly faults: readonly DeviceFault[];
  readonly outageMs: number;
  /** Killed again while recovering: this long after the restart listened, down this long. */
  readonly secondKill?: { readonly afterMs: number; readonly outageMs: number };
}

export interface RunResult {
  readonly plan: RunPlan;
  /** What the watcher saw when it killed (the phase, or why it could not be reached). */
  readonly killedAt: string;
  readonly targetState: string;
  readonly kills: number;
  readonly commands: number;
  readonly writes: number;
  readonly duplicates: number;
  /** Commands open at each kill. */
  readonly inDoubt: number;
  /** Restart (spawn → listening) and recovery (listening → every in-doubt command terminal). */
  readonly restartMs: readonly number[];
  readonly recoveryMs: readonly number[];
  readonly findings: readonly Finding[];
  readonly durationMs: number;
}

export interface CampaignSite {
  readonly site: Site;
  readonly mqtt: CampaignMqtt;
  readonly watch: JournalWatch;
  readonly travelMs: number;
  /** Violations already reported on this site (verify() looks at everything every time). */
  readonly seen: Set<string>;
  /** When each SIGKILL of a daemon life on this site had ended it (epoch ms). */
  readonly kills: number[];
}

export const sleep = (ms: number): Promise<void> =>
  new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));

const TERMINAL = new Set(['confirmed', 'rejected', 'failed']);

/**
 * A read-only journal connection kept open for polling (every few milliseconds while a kill
 * point is watched). WAL readers never block the daemon; a read that fails while a new daemon
 * recovers the file is simply retried at the next poll.
 */
export class JournalWatch {
  private journal: SqliteJournal | null = null;

  constructor(private readonly path: string) {}

  private open(): SqliteJournal | null {
    if (this.journal !== null) return this.journal;
    try {
      this.journal = SqliteJournal.open({ path: this.path, readonly: true });
    } catch {
      this.journal = null;
    }
    return this.journal;
  }

  private read<T>(f: (j: SqliteJournal) => T, fallback: T): T {
    const journal = this.open();
    if (journal === null) return fallback;
    try {
      return f(journal);
    } catch {
      this.close();
      return fallback;
    }
  }

  get(key: string): CommandRecord | undefined {
    return this.read((j) => j.findByKey(key)[0], undefined);
  }

  openCommands(): CommandRecord[] {
    return this.read((j) => j.listOpen(), []);
  }

  records(): CommandRecord[] {
    return this.read((j) => j.list({ limit: 1_000_000 }), []);
  }

  history(record: CommandRecord): JournalEvent[] {
    return this.read((j) => j.history(record), []);
  }

  close(): void {
    try {
      this.journal?.close();
    } catch {
      // Already closed.
    }
    this.journal = null;
  }
}

// ---------------------------------------------------------------------------------------------
// Planning

export interface PlanOptions {
  /** Devices the watched command may target. */
  readonly targetDevices: readonly string[];
  /** Devices the other commands may target. */
  readonly devices: readonly string[];
  /** The Modbus PLC and its valves a third party may write (none: no third party). */
  readonly thirdParty?: { readonly plc: string; readonly valves: readonly string[] };
  readonly travelMs: number;
  /** The bridge's redispatch guard: holds and link latency are drawn around it. */
  readonly guardMs: number;
}

/** The action that moves the device from where the simulator says it is now. */
function movingAction(site: Site, device: string, rng: Rng): { action: string; position?: number } {
  const sim = site.plant.device(device);
  if (sim.profile === 'actuator') {
    switch (sim.state) {
      case 'MOVING':
        return { action: 'stop' };
      case 'FAULT':
        return { action: 'reset' };
      default: {
        const here = sim.position;
        let to = rng.int(0, 100);
        if (Math.abs(to - here) < 25) to = here >= 50 ? rng.int(0, 25) : rng.int(75, 100);
        return { action: 'move', position: to };
      }
    }
  }
  switch (sim.state) {
    case 'CLOSED':
      return { action: 'open' };
    case 'OPEN':
      return { action: 'close' };
    case 'OPENING':
    case 'CLOSING':
      return { action: 'stop' };
    case 'FAULT':
      return { action: 'reset' };
    default:
      return { action: rng.pick(['open', 'close']) };
  }
}

function anyAction(site: Site, device: string, rng: Rng): { action: string; position?: number } {
  if (site.plant.device(device).profile === 'actuator') {
    const a = rng.weighted([
      ['move', 6],
      ['stop', 1],
      ['reset', 1],
    ] as const);
    return a === 'move' ? { action: 'move', position: rng.int(0, 100) } : { action: a };
  }
  return {
    action: rng.weighted([
      ['open', 4],
      ['close', 4],
      ['stop', 1],
      ['reset', 1],
    ] as const),
  };
}

export function planRun(site: Site, index: number, seed: number, o: PlanOptions): RunPlan {
  const rng = new Rng(seed);
  const phase = rng.pick(KILL_PHASES);
  const outageMs = rng.weighted([
    [rng.int(0, 600), 7],
    [rng.int(600, 1500), 2],
    [rng.int(2500, 4000), 1],
  ] as const);
  const prefix = `c${seed.toString(36)}-${index}`;
  const command = (
    n: number,
    device: string,
    act: { action: string; position?: number },
    target: boolean,
  ): PlannedCommand => {
    const via = rng.weighted([
      ['https', 4],
      ['mqtt', 3],
      ['both', 2],
    ] as const);
    const short = rng.chance(target ? 0.08 : 0.25);
    const ttlMs = short ? rng.int(800, 2_500) : rng.int(5_000, 10_000);
    const during: 'run' | 'outage' = target || rng.chance(0.7) ? 'run' : 'outage';
    return {
      key: `${prefix}-${n}`,
      device,
      ...act,
      via,
      // MQTT commands carry their age (SPEC §5); HTTPS ones sometimes leave it to the gateway.
      ...(via === 'https' && rng.chance(0.35) ? {} : { issuedAgoMs: rng.int(0, 300) }),
      ...(via === 'https' && !short && rng.chance(0.2) ? {} : { ttlMs }),
      prefer: rng.pick(['respond-async', 'respond-async', 'wait=1', 'wait=3']),
      during,
      startMs: target ? 0 : during === 'run' ? rng.int(0, 250) : rng.int(0, outageMs + 200),
    };
  };
  const targetDevice = rng.pick(o.targetDevices);
  const commands: PlannedCommand[] = [
    command(0, targetDevice, movingAction(site, targetDevice, rng), true),
  ];
  const extra = rng.weighted([
    [0, 2],
    [1, 3],
    [2, 3],
    [3, 2],
  ] as const);
  for (let n = 1; n <= extra; n++) {
    const device = rng.chance(0.35) ? targetDevice : rng.pick(o.devices);
    // A stop for the watched command's device preempts it (SPEC §2), across the kill too.
    const act =
      device === targetDevice && rng.chance(0.3)
        ? { action: 'stop' }
        : anyAction(site, device, rng);
    commands.push(command(n, device, act, false));
  }
  const when = (): When => rng.pick(['run', 'outage', 'recovery'] as const);
  const disturbances: Disturbance[] = [];
  if (rng.chance(0.2)) {
    const plc = site.plant.device(targetDevice).plc.name;
    disturbances.push({
      kind: 'power-cycle',
      plc,
      offMs: rng.int(0, 1_200),
      when: when(),
      atMs: rng.int(0, 600),
    });
  }
  if (rng.chance(0.15))
    disturbances.push({ kind: 'broker-restart', when: when(), atMs: rng.int(0, 600) });
  if (o.thirdParty !== undefined && rng.chance(0.06)) {
    disturbances.push({
      kind: 'third-party',
      device: rng.pick(o.thirdParty.valves),
      action: rng.pick(['open', 'close', 'stop'] as const),
      seq: 60_000 + (index % 5_000),
      when: when(),
      atMs: rng.int(0, 600),
    });
  }
  const faults: DeviceFault[] = [];
  // Within the profile's contract (docs/spec-notes.md): the controller takes a write, and the
  // link delivers one, within the redispatch guard.
  if (rng.chance(0.08))
    faults.push({ kind: 'latency', device: targetDevice, ms: rng.int(100, o.guardMs - 100) });
  if (rng.chance(0.08))
    faults.push({ kind: 'hold', device: targetDevice, ms: rng.int(100, o.guardMs - 100) });
  const killDelayMs =
    phase === 'before-claim'
      ? rng.int(0, 25)
      : phase === 'readback'
        ? rng.int(0, Math.round(o.travelMs * 0.8))
        : phase === 'outcome'
          ? rng.int(0, 40)
          : rng.int(0, 3);
  const secondKill = rng.chance(0.15)
    ? { afterMs: rng.int(0, 1_500), outageMs: rng.int(0, 800) }
    : undefined;
  return {
    index,
    seed,
    phase,
    killDelayMs,
    commands,
    disturbances,
    faults,
    outageMs,
    ...(secondKill === undefined ? {} : { secondKill }),
  };
}

// ---------------------------------------------------------------------------------------------
// Running

/** The running clients of one command (one per intake it goes over). */
interface Sending {
  readonly command: PlannedCommand;
  readonly firstSend: Promise<void>;
  readonly answers: Promise<ClientAnswer[]>;
}

const CLIENT_BUDGET_MS = 90_000;

function bodyOf(c: PlannedCommand, sentAt: number): CommandBody {
  return {
    device: c.device,
    action: c.action,
    ...(c.position === undefined ? {} : { position: c.position }),
    ...(c.issuedAgoMs === undefined
      ? {}
      : { issuedAt: new Date(sentAt - c.issuedAgoMs).toISOString() }),
    ...(c.ttlMs === undefined ? {} : { ttlMs: c.ttlMs }),
  };
}

/** Starts a command's clients after `delayMs`: both intakes share one payload (one identity). */
export function send(cs: CampaignSite, c: PlannedCommand, rng: Rng, delayMs = 0): Sending {
  let first: () => void = () => undefined;
  const firstSend = new Promise<void>((resolve) => {
    first = resolve;
  });
  const random = (): number => rng.next();
  const answers = (async (): Promise<ClientAnswer[]> => {
    await sleep(delayMs);
    const body = bodyOf(c, Date.now());
    const policy = (retryMs: readonly [number, number]): RetryPolicy => ({
      budgetMs: CLIENT_BUDGET_MS,
      retryMs,
      prefer: c.prefer,
      timeoutMs: c.prefer === 'wait=3' ? 4_500 : 2_500,
      random,
      onFirstSend: first,
    });
    const runs: Promise<ClientAnswer>[] = [];
    if (c.via !== 'mqtt') runs.push(httpsUntilTerminal(cs.site, c.key, body, policy([60, 300])));
    if (c.via !== 'https') {
      const lag = c.via === 'both' ? Math.floor(random() * 150) : 0;
      runs.push(sleep(lag).then(() => cs.mqtt.untilTerminal(c.key, body, policy([1_200, 3_000]))));
    }
    return Promise.all(runs);
  })();
  return { command: c, firstSend, answers };
}

/**
 * Polls (every `everyMs`) until the probe answers; `undefined` after `ms`. A kill point is
 * watched every 2 ms; waits that only end a step poll less often: each read of the journal
 * costs this process, which runs the simulators, CPU.
 */
async function poll<T>(
  probe: () => T | undefined,
  ms: number,
  everyMs = 2,
): Promise<T | undefined> {
  const end = Date.now() + ms;
  for (;;) {
    const v = probe();
    if (v !== undefined) return v;
    if (Date.now() > end) return undefined;
    await sleep(everyMs);
  }
}

function takenEntry(entries: readonly WriteLogEntry[]): WriteLogEntry | undefined {
  return entries.find((w) => w.outcome !== null);
}

/**
 * Waits until the watched command reaches the phase (journal read-only, simulator write log).
 * Returns what was seen: the phase, or `unreachable (<state>)` when the command went past
 * the point without it (a no-op never dispatches; a refused write never travels), or
 * `timeout` — the kill happens anyway.
 */
export async function reachPhase(
  cs: CampaignSite,
  key: string,
  device: string,
  phase: KillPhase,
  delayMs: number,
  firstSend: Promise<void>,
): Promise<string> {
  await firstSend;
  const sim = cs.site.plant.device(device);
  const bound = 10_000;
  const ended = (r: CommandRecord | undefined): boolean => r !== undefined && TERMINAL.has(r.state);
  let seen: string | undefined;
  switch (phase) {
    case 'before-claim':
      await sleep(delayMs);
      return cs.watch.get(key) === undefined ? 'before-claim' : 'before-claim (claimed)';
    case 'accepted':
      seen = await poll(() => (cs.watch.get(key) !== undefined ? 'accepted' : undefined), bound);
      break;
    case 'dispatched':
      seen = await poll(() => {
        const r = cs.watch.get(key);
        if (r?.seq != null) return 'dispatched';
        return ended(r) ? `unreachable (${r!.state} ${r!.code ?? ''})` : undefined;
      }, bound);
      break;
    case 'written':
      seen = await poll(() => {
        const r = cs.watch.get(key);
        if (r?.seq != null && sim.writesWithSeq(r.seq) > 0) return 'written';
        return ended(r) ? `unreachable (${r!.state} ${r!.code ?? ''})` : undefined;
      }, bound);
      break;
    case 'readback':
      seen = await poll(() => {
        const r = cs.watch.get(key);
        if (r?.seq != null) {
          const taken = takenEntry(sim.writesOfSeq(r.seq));
          if (taken !== undefined)
            return taken.outcome === 'accepted' ? 'readback' : `taken ${taken.outcome}`;
        }
        return ended(r) ? `unreachable (${r!.state} ${r!.code ?? ''})` : undefined;
      }, bound);
      if (seen === 'readback') await sleep(delayMs);
      break;
    case 'outcome':
      seen = await poll(() => (ended(cs.watch.get(key)) ? 'outcome' : undefined), bound + 20_000);
      if (seen === 'outcome') await sleep(delayMs);
      break;
  }
  return seen ?? 'timeout';
}

/** Applies a disturbance; resolves when it is done (a power cycle's power-up not awaited). */
async function disturb(cs: CampaignSite, d: Disturbance): Promise<void> {
  switch (d.kind) {
    case 'power-cycle':
      cs.site.plant.plc(d.plc).powerCycle({ offMs: d.offMs });
      return;
    case 'broker-restart':
      await cs.site.broker.restart();
      return;
    case 'third-party':
      await thirdPartyWrite(cs.site, d.device, d.action, d.seq);
      return;
  }
}

/**
 * Another Modbus master writes a valve command with its own sequence number: the bridge's own
 * driver code, as a second client on its own connection. An illegal command latches 0x88 with
 * that number. The write is declared to the site, so verify() does not ask the journal for it.
 */
export async function thirdPartyWrite(
  site: Site,
  device: string,
  action: 'open' | 'close' | 'stop' | 'reset',
  seq: number,
): Promise<void> {
  const sim = site.plant.device(device);
  const endpointInfo = sim.plc.endpoint;
  if (endpointInfo.protocol !== 'modbus') throw new Error(`${device} is not on a Modbus PLC`);
  site.markForeignWrite(device, seq);
  const endpoint = new ModbusEndpoint({
    name: 'third-party-master',
    host: endpointInfo.host,
    port: endpointInfo.port,
    unitId: endpointInfo.unitId,
    requestTimeoutMs: 500,
    clock: systemClock,
    logger: silentLogger,
  });
  const driver = new ModbusDeviceDriver({
    id: device,
    profile: profile('valve'),
    endpoint,
    base: sim.base ?? 0,
    clock: systemClock,
  });
  try {
    await driver.write({ action, position: null, seq });
  } catch {
    // A PLC that is off refuses it: nothing was written (the write log says so either way).
  } finally {
    await endpoint.close();
  }
}

function setFault(cs: CampaignSite, f: DeviceFault): void {
  const sim = cs.site.plant.device(f.device);
  switch (f.kind) {
    case 'latency':
      sim.setFault({ kind: 'latency', ms: f.ms, when: 'before', on: 'write' });
      return;
    case 'hold':
      sim.setFault({ kind: 'hold', ms: f.ms });
      return;
    case 'frozen':
      sim.setFault({ kind: 'frozen' });
      return;
  }
}

/** Clears every fault and waits until every PLC is powered. */
export async function calm(site: Site): Promise<void> {
  for (const plc of site.plant.plcs) {
    plc.clearFaults();
    for (const d of plc.devices) d.clearFaults();
  }
  const end = Date.now() + 10_000;
  while (site.plant.plcs.some((p) => !p.powered) && Date.now() < end) await sleep(20);
  if (!site.broker.running()) await site.broker.restart();
}

/** SIGKILL; the commands then open are the ones in doubt. */
export async function killDaemon(cs: CampaignSite): Promise<string[]> {
  await cs.site.kill();
  cs.kills.push(Date.now());
  return cs.watch.openCommands().map((r) => r.key);
}

/** Starts a daemon life; returns how long it took to listen. */
export async function restartDaemon(cs: CampaignSite): Promise<number> {
  const start = Date.now();
  try {
    await cs.site.startDaemon();
  } catch (error) {
    // A daemon that cannot start again after a kill (a journal it cannot open…) is a finding:
    // say what it printed.
    const said = cs.site.logs.slice(-30).join('\n');
    throw new Error(`${error instanceof Error ? error.message : String(error)}\n${said}`, {
      cause: error,
    });
  }
  return Date.now() - start;
}

/** Time until every in-doubt command is terminal (bounded; the OPEN check reports the rest). */
export async function recovery(cs: CampaignSite, inDoubt: readonly string[]): Promise<number> {
  const start = Date.now();
  if (inDoubt.length === 0) return 0;
  await poll(
    () => {
      const open = inDoubt.filter((k) => {
        const r = cs.watch.get(k);
        return r === undefined || !TERMINAL.has(r.state);
      });
      return open.length === 0 ? true : undefined;
    },
    60_000,
    20,
  );
  return Date.now() - start;
}

// ---------------------------------------------------------------------------------------------
// Judging

const APPLIED = new Set(['accepted', 'noop', 'rejected-0x88', 'ignored-local']);

/**
 * The campaign's own checks, from ground truth, on the given keys:
 * - I3: no write reached a controller later than its command's deadline plus `lateSlackMs`
 *   (the link's injected latency and a request timeout), and no re-dispatch was journaled
 *   past the deadline;
 * - I4: a rejected command was never taken by the controller, except as the controller's own
 *   0x88 — and a command rejected 0x88 after a write was refused by the controller, not
 *   blamed for another master's fault;
 * - HONEST: a failure that says nothing was written/applied, or that the write never reached
 *   the controller, has no write the controller took;
 * - I5 (MQTT): every publish the broker acknowledged reached the journal — the gateway
 *   acknowledges a delivery only after its claim commits, so the journal holds at least as
 *   many MQTT claims of a key (new or duplicate) as the broker took publishes of it, but for
 *   replays of a settled command whose duplicate events a kill may have lost
 *   (delivery-claims.ts);
 * - ANSWER: what every client was told matches the journal; NO_ANSWER: a client got none.
 */
export function groundTruth(
  cs: CampaignSite,
  keys: ReadonlySet<string>,
  answers: readonly ClientAnswer[],
  lateSlackMs: number,
): Finding[] {
  const findings: Finding[] = [];
  const records = cs.watch.records().filter((r) => keys.has(r.key));
  const byKey = new Map(records.map((r) => [r.key, r]));
  const add = (
    invariant: Check,
    r: CommandRecord | undefined,
    key: string | null,
    message: string,
  ): void => {
    findings.push({
      invariant,
      key,
      device: r?.device ?? '?',
      message,
      history: r === undefined ? [] : cs.watch.history(r),
    });
  };
  for (const r of records) {
    const sim = cs.site.plant.devices().find((d) => d.id === r.device);
    const writes = r.seq === null || sim === undefined ? [] : sim.writesOfSeq(r.seq);
    const applied = writes.filter((w) => w.outcome === null || APPLIED.has(w.outcome));
    for (const w of writes) {
      if (w.receivedAt > r.deadline + lateSlackMs) {
        add(
          'I3',
          r,
          r.key,
          `a write reached the controller ${w.receivedAt - r.deadline} ms after the deadline`,
        );
      }
    }
    if (r.attempts > 1) {
      for (const e of cs.watch.history(r)) {
        if (e.detail.startsWith('redispatch') && e.at >= r.deadline) {
          add('I3', r, r.key, `re-dispatched ${e.at - r.deadline} ms past its deadline`);
        }
      }
    }
    if (r.state === 'rejected') {
      const own0x88 = r.faultCode === '0x88' && writes.length > 0;
      if (own0x88) {
        if (!writes.some((w) => w.outcome === 'rejected-0x88')) {
          add(
            'I4',
            r,
            r.key,
            `rejected 0x88 but the controller ${writes.map((w) => w.outcome ?? 'pending').join(', ')} its write`,
          );
        }
      } else if (applied.length > 0) {
        add(
          'I4',
          r,
          r.key,
          `rejected ${r.code ?? ''} but the controller took its write (${applied.map((w) => w.outcome ?? 'pending').join(', ')})`,
        );
      }
    }
    if (
      r.state === 'failed' &&
      r.detail !== null &&
      /nothing was (written|applied)|never reached the controller/.test(r.detail) &&
      applied.length > 0
    ) {
      add(
        'HONEST',
        r,
        r.key,
        `"${r.detail}" but the controller took its write (${applied.map((w) => w.outcome ?? 'pending').join(', ')})`,
      );
    }
  }
  for (const key of keys) {
    const r = byKey.get(key);
    const short = unclaimed(cs, key, r);
    if (short !== null) {
      const excused =
        short.excused === 0
          ? ''
          : `; ${short.excused} of them sent before a kill after its settlement, which may have lost their duplicate events`;
      add(
        'I5',
        r,
        key,
        `the broker took ${short.published} publishes of the key, the journal holds ${short.claims} MQTT claims (a delivery acknowledged without its claim${excused})`,
      );
    }
  }
  for (const a of answers) {
    const r = byKey.get(a.key);
    if (a.state === null || a.problem !== null) {
      add('NO_ANSWER', r, a.key, `${a.intake} client: ${a.problem ?? 'no answer'}`);
      continue;
    }
    if (r === undefined) {
      add(
        'ANSWER',
        r,
        a.key,
        `${a.intake} client was told ${a.state} ${a.code ?? ''}; the journal has no such command`,
      );
    } else if (r.state !== a.state || r.code !== a.code) {
      add(
        'ANSWER',
        r,
        a.key,
        `${a.intake} client was told ${a.state} ${a.code ?? ''}; the journal says ${r.state} ${r.code ?? ''}`,
      );
    }
  }
  return findings;
}

/** The key's MQTT publishes the journal does not account for (delivery-claims.ts), or null. */
function unclaimed(
  cs: CampaignSite,
  key: string,
  r: CommandRecord | undefined,
): ClaimShortfall | null {
  const sentAt = cs.mqtt.published.get(key) ?? [];
  if (sentAt.length === 0) return null;
  return unclaimedDeliveries(
    { sentAt, record: r, history: r === undefined ? [] : cs.watch.history(r) },
    cs.kills,
  );
}

/** Verify() and the campaign's checks; only what was not reported on this site before. */
export async function judge(
  cs: CampaignSite,
  keys: ReadonlySet<string>,
  answers: readonly ClientAnswer[],
  lateSlackMs: number,
): Promise<Finding[]> {
  // The gateway takes deliveries queued at the broker in its own time: wait (bounded) until
  // the journal holds the MQTT claims the broker was given, before counting them.
  const mqttKeys = [...keys].filter((k) => cs.mqtt.published.has(k));
  await poll(
    () => {
      const short = mqttKeys.some((k) => unclaimed(cs, k, cs.watch.get(k)) !== null);
      return short ? undefined : true;
    },
    10_000,
    20,
  );
  const all: Finding[] = [
    ...cs.site.verify().map(fromViolation),
    ...groundTruth(cs, keys, answers, lateSlackMs),
  ];
  const fresh: Finding[] = [];
  for (const f of all) {
    const id = `${f.invariant}|${f.key ?? ''}|${f.device}|${f.message}`;
    if (cs.seen.has(id)) continue;
    cs.seen.add(id);
    fresh.push(f);
  }
  return fresh;
}

function fromViolation(v: Violation): Finding {
  return {
    invariant: v.invariant,
    key: v.key,
    device: v.device,
    message: v.message,
    history: v.history,
  };
}

/** Commands, controller writes and absorbed duplicates of the given keys. */
export function tally(
  cs: CampaignSite,
  keys: ReadonlySet<string>,
): { commands: number; writes: number; duplicates: number } {
  const records = cs.watch.records().filter((r) => keys.has(r.key));
  let writes = 0;
  let duplicates = 0;
  for (const r of records) {
    if (r.seq !== null) writes += cs.site.plant.device(r.device).writesWithSeq(r.seq);
    duplicates += duplicateHits(cs.watch.history(r));
  }
  return { commands: records.length, writes, duplicates };
}

/** Runs one planned crash run on the site (the daemon running); leaves it running. */
export async function crashRun(cs: CampaignSite, plan: RunPlan): Promise<RunResult> {
  const started = Date.now();
  const rng = new Rng(plan.seed ^ 0x5eed);
  const { site } = cs;
  for (const f of plan.faults) setFault(cs, f);
  const pending: Promise<void>[] = [];
  const schedule = (when: When, base: number): void => {
    for (const d of plan.disturbances) {
      if (d.when !== when) continue;
      pending.push(sleep(d.atMs - (Date.now() - base)).then(() => disturb(cs, d)));
    }
  };
  schedule('run', Date.now());
  const [target, ...others] = plan.commands;
  if (target === undefined) throw new Error('a run needs a command');
  const sendings: Sending[] = [send(cs, target, rng)];
  for (const c of others) if (c.during === 'run') sendings.push(send(cs, c, rng, c.startMs));

  const killedAt = await reachPhase(
    cs,
    target.key,
    target.device,
    plan.phase,
    plan.killDelayMs,
    sendings[0]!.firstSend,
  );
  const inDoubt = await killDaemon(cs);
  const targetState = cs.watch.get(target.key)?.state ?? 'not journaled';
  const killTime = Date.now();
  schedule('outage', killTime);
  for (const c of others) if (c.during === 'outage') sendings.push(send(cs, c, rng, c.startMs));
  await sleep(plan.outageMs - (Date.now() - killTime));
  const restartMs = [await restartDaemon(cs)];
  schedule('recovery', Date.now());
  let kills = 1;
  let doubt = inDoubt;
  if (plan.secondKill !== undefined) {
    // Killed again while it recovers (a re-dispatch, a readback, a result being published).
    await sleep(plan.secondKill.afterMs);
    doubt = await killDaemon(cs);
    kills++;
    await sleep(plan.secondKill.outageMs);
    restartMs.push(await restartDaemon(cs));
  }
  const recoveryMs = await recovery(cs, doubt);

  const answers = (await Promise.all(sendings.map((s) => s.answers))).flat();
  await Promise.all(pending);
  const keys = new Set(plan.commands.map((c) => c.key));
  try {
    await site.settled(60_000);
  } catch {
    // verify() names what stayed open.
  }
  await calm(site);
  const latency = Math.max(0, ...plan.faults.map((f) => (f.kind === 'latency' ? f.ms : 0)));
  const findings = await judge(cs, keys, answers, latency + 1_000);
  const counts = tally(cs, keys);
  return {
    plan,
    killedAt,
    targetState,
    kills,
    ...counts,
    inDoubt: inDoubt.length + (doubt === inDoubt ? 0 : doubt.length),
    restartMs,
    recoveryMs: doubt.length > 0 ? [recoveryMs] : [],
    findings,
    durationMs: Date.now() - started,
  };
}

// ---------------------------------------------------------------------------------------------
// Sites

/** Waits (bounded) until the daemon's MQTT intake is connected and subscribed (/readyz). */
export async function mqttReady(site: Site, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  for (;;) {
    try {
      const answer = await site.https('GET', '/readyz');
      const body = JSON.parse(answer.body) as { checks?: { mqtt?: { ok?: boolean } } };
      if (body.checks?.mqtt?.ok === true) return;
    } catch {
      // Not listening yet.
    }
    if (Date.now() > end) throw new Error(`the daemon's MQTT intake not ready within ${ms} ms`);
    await sleep(50);
  }
}

/** The echo a warm device shows: it took a command before the site started (another master). */
export const WARM_ECHO = 59_000;

/**
 * A site with its daemon running and subscribed, the campaign's MQTT client and watch. `warm`:
 * every device has taken a command (a no-op stop of another master, its write log cleared
 * after) before the daemon starts, as on a PLC that has run a while — its echo is not the
 * power-up 0, so a lost write can be proven not applied after a reconnect.
 */
export async function openCampaignSite(
  options: SiteOptions & { readonly warm?: boolean },
  clientId: string,
): Promise<CampaignSite> {
  const site = await Site.start(options);
  try {
    if (options.warm === true) {
      for (const device of site.plant.devices()) {
        device.receiveWrite({ code: 3, setpoint: 0, seq: WARM_ECHO });
      }
      const end = Date.now() + 5_000;
      while (site.plant.devices().some((d) => d.seqEcho !== WARM_ECHO)) {
        if (Date.now() > end) throw new Error('warm-up write not taken');
        await sleep(5);
      }
      for (const device of site.plant.devices()) device.resetCounters();
    }
    await site.startDaemon();
    await mqttReady(site);
    const mqtt = await CampaignMqtt.connect(site, clientId);
    return {
      site,
      mqtt,
      watch: new JournalWatch(site.journalPath),
      travelMs: options.travelMs ?? 300,
      seen: new Set(),
      kills: [],
    };
  } catch (error) {
    await site.close();
    throw error;
  }
}

export async function closeCampaignSite(cs: CampaignSite): Promise<void> {
  cs.watch.close();
  await cs.mqtt.close().catch(() => undefined);
  await cs.site.close();
}
