import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { join } from 'node:path';
import { generate } from 'selfsigned';
import { parse, stringify } from 'yaml';
import {
  DUPLICATE_DETAIL,
  repeatOf,
  type CommandRecord,
  type JournalEvent,
} from '../../src/core/journal.js';
import { sha256 } from '../../src/intake/identities.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { startPlant, type Plant } from '../../simulators/plant.js';
import { nodeArgs } from '../helpers/entry.js';
import { ROOT, tempDir } from '../helpers/fixtures.js';
import { TestClient, startMosquitto, type Mosquitto } from '../helpers/mosquitto.js';
import { inventoryFor } from '../helpers/plant-inventory.js';

/**
 * A whole site for the reliability campaigns: the real `sluiced` process (spawned, killed with
 * SIGKILL, started again), a simulated plant over real sockets (in this process, so that its
 * ground truth — every write that reached a controller — survives everything else), a real
 * Mosquitto, and clients on both intakes. `verify()` judges the invariants from the
 * simulators' write logs and the journal, never from the daemon's word.
 */

export const TOKEN = 'campaign-token';
export const IDENTITY = 'plant';

export interface SiteOptions {
  readonly gatewayId?: string;
  /** Full-stroke travel of the simulated valves (default 300 ms). */
  readonly travelMs?: number;
  /** Also an OPC UA PLC (valve `ua-valve`). */
  readonly opcua?: boolean;
  /** Profile timings for the bridge (defaults scaled for the simulator). */
  readonly timing?: Record<string, number>;
  readonly journalBusyTimeoutMs?: number;
  /**
   * Request timeout of every PLC (default 300 ms Modbus, 500 ms OPC UA); a longer one needs a
   * longer `timing.redispatchGuardMs` (the configuration refuses a guard not longer).
   */
  readonly requestTimeoutMs?: number;
  /** Extra configuration merged into the site file (e.g. `mqtt`, `clock`). */
  readonly config?: Record<string, unknown>;
  /** sluiced's `--shutdown-bound` (default: its own, 10 s). */
  readonly shutdownBoundMs?: number;
}

/** Bridge timings for short travel: guard longer than the request timeouts (300/500 ms). */
export const CAMPAIGN_TIMING = {
  defaultTtlMs: 20_000,
  confirmTimeoutMs: 3_000,
  pollIntervalMs: 20,
  mismatchGraceMs: 200,
  redispatchGuardMs: 700,
};

export interface Violation {
  readonly invariant: 'I1' | 'I2' | 'I3' | 'I5' | 'ATTRIBUTION' | 'OPEN';
  readonly key: string | null;
  readonly device: string;
  readonly message: string;
  readonly history: readonly JournalEvent[];
}

export interface HttpAnswer {
  readonly status: number;
  readonly headers: Record<string, unknown>;
  readonly body: string;
}

export class Site {
  readonly plant: Plant;
  readonly broker: Mosquitto;
  readonly dir: string;
  readonly configPath: string;
  readonly journalPath: string;
  readonly gatewayId: string;
  /** Keys an intake acknowledged (an HTTP answer other than 503, or a PUBACK): I5. */
  readonly acknowledged = new Map<string, 'https' | 'mqtt'>();
  /** Lines the daemon printed in its current and earlier lives (bounded). */
  readonly logs: string[] = [];
  /**
   * Writes a test made itself, as another master on the controller (device → sequence
   * numbers): `verify()` does not ask the journal to account for them. Use sequence numbers the
   * bridge will not reach in the test (e.g. above 60000).
   */
  readonly foreignWrites = new Map<string, Set<number>>();
  private child: ChildProcess | null = null;
  private httpsPort = 0;
  private cert = '';
  private readonly cleanup: () => void;
  private lives = 0;
  private shutdownBoundMs: number | undefined;

  private constructor(
    plant: Plant,
    broker: Mosquitto,
    dir: string,
    cleanup: () => void,
    gw: string,
  ) {
    this.plant = plant;
    this.broker = broker;
    this.dir = dir;
    this.cleanup = cleanup;
    this.gatewayId = gw;
    this.configPath = join(dir, 'sluice.yaml');
    this.journalPath = join(dir, 'state', 'journal.db');
  }

  static async start(options: SiteOptions = {}): Promise<Site> {
    const travelMs = options.travelMs ?? 300;
    const plcs: Record<string, unknown> = {
      mb: {
        protocol: 'modbus',
        host: '127.0.0.1',
        port: 0,
        scanMs: 5,
        devices: {
          'mb-valve-1': { profile: 'valve', base: 0, travelMs },
          'mb-valve-2': { profile: 'valve', base: 100, travelMs },
          'mb-actuator': { profile: 'actuator', base: 200, travelMs },
        },
      },
    };
    if (options.opcua === true) {
      plcs.ua = {
        protocol: 'opcua',
        host: '127.0.0.1',
        port: 0,
        scanMs: 5,
        devices: { 'ua-valve': { profile: 'valve', travelMs } },
      };
    }
    const plant = await startPlant(
      { control: { host: '127.0.0.1', port: 0 }, plcs } as Parameters<typeof startPlant>[0],
      { ephemeralPorts: true, control: false },
    );
    const broker = await startMosquitto();
    const { dir, cleanup } = tempDir('sluice-site-');
    const site = new Site(plant, broker, dir, cleanup, options.gatewayId ?? 'campaign');
    site.shutdownBoundMs = options.shutdownBoundMs;
    await site.writeFiles(options);
    return site;
  }

  private async writeFiles(options: SiteOptions): Promise<void> {
    const pems = await generate([{ name: 'commonName', value: 'localhost' }], {
      keyType: 'ec',
      curve: 'P-256',
      extensions: [{ name: 'subjectAltName', altNames: [{ type: 7, ip: '127.0.0.1' }] }],
    });
    this.cert = pems.cert;
    writeFileSync(join(this.dir, 'cert.pem'), pems.cert);
    writeFileSync(join(this.dir, 'key.pem'), pems.private);
    // The shipped profiles the plant's devices use, with timings scaled to the simulator's
    // short travel. Only those: the daemon parses and checks every file of profilesDir at each
    // start, and the campaigns start it dozens of times.
    const profilesDir = join(this.dir, 'profiles');
    mkdirSync(profilesDir);
    const shipped = join(ROOT, 'devices', 'profiles');
    const used = new Set<string>(this.plant.devices().map((d) => d.profile));
    for (const file of readdirSync(shipped).filter((f) => f.endsWith('.yaml'))) {
      const profile = parse(readFileSync(join(shipped, file), 'utf8')) as Record<string, unknown>;
      if (typeof profile.profile !== 'string' || !used.has(profile.profile)) continue;
      profile.timing = { ...CAMPAIGN_TIMING, ...options.timing };
      writeFileSync(join(profilesDir, file), stringify(profile));
    }
    const inventory = inventoryFor(this.plant);
    if (options.requestTimeoutMs !== undefined) {
      for (const plc of Object.values(inventory.plcs)) {
        (plc as { requestTimeoutMs?: number }).requestTimeoutMs = options.requestTimeoutMs;
      }
    }
    const extra = options.config ?? {};
    writeFileSync(
      this.configPath,
      stringify({
        gatewayId: this.gatewayId,
        stateDir: 'state',
        profilesDir: 'profiles',
        journal: { busyTimeoutMs: options.journalBusyTimeoutMs ?? 500 },
        https: {
          host: '127.0.0.1',
          port: 0,
          certFile: 'cert.pem',
          keyFile: 'key.pem',
          rateLimit: { perSecond: 10_000, burst: 100_000 },
        },
        opcua: { acceptUnknownCertificates: true },
        identities: {
          [IDENTITY]: { tokenSha256: sha256(TOKEN).toString('hex'), devices: ['*'] },
        },
        plcs: inventory.plcs,
        devices: inventory.devices,
        ...extra,
        mqtt: {
          url: this.broker.url,
          identity: IDENTITY,
          clientId: `sluice-${this.gatewayId}`,
          ...(extra.mqtt as Record<string, unknown> | undefined),
        },
      }),
    );
  }

  get running(): boolean {
    return this.child !== null;
  }

  /** The process id of the daemon's current life (null while it is not running). */
  get pid(): number | null {
    return this.child?.pid ?? null;
  }

  /**
   * Where the current life's HTTPS intake listens, with the CA to trust and the bearer token:
   * for clients that run elsewhere (a worker thread), so that they do not load this process,
   * which hosts the simulators.
   */
  get httpsEndpoint(): { host: string; port: number; ca: string; token: string } {
    return { host: '127.0.0.1', port: this.httpsPort, ca: this.cert, token: TOKEN };
  }

  /** Records a write the test sent as another master (see `foreignWrites`). */
  markForeignWrite(device: string, seq: number): void {
    const seqs = this.foreignWrites.get(device) ?? new Set<number>();
    seqs.add(seq);
    this.foreignWrites.set(device, seqs);
  }

  /** Starts a daemon life; resolves once it listens (recovery has been queued by then). */
  async startDaemon(): Promise<void> {
    if (this.child !== null) throw new Error('the daemon is running');
    this.lives++;
    const life = this.lives;
    const child = spawn(
      process.execPath,
      [
        ...nodeArgs('src/daemon/cli.ts'),
        '--config',
        this.configPath,
        '--log-level',
        'info',
        ...(this.shutdownBoundMs === undefined
          ? []
          : ['--shutdown-bound', String(this.shutdownBoundMs)]),
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    this.child = child;
    const started = new Promise<number>((resolve, reject) => {
      let buffer = '';
      const onData = (chunk: Buffer): void => {
        buffer += chunk.toString('utf8');
        let nl = buffer.indexOf('\n');
        while (nl !== -1) {
          const line = buffer.slice(0, nl);
          buffer = buffer.slice(nl + 1);
          this.keepLog(`[${life}] ${line}`);
          try {
            const entry = JSON.parse(line) as { msg?: string; https?: { port?: number } };
            if (entry.msg === 'sluiced started' && typeof entry.https?.port === 'number') {
              resolve(entry.https.port);
            }
          } catch {
            // Not a JSON line (node-opcua's own prints): kept in the log only.
          }
          nl = buffer.indexOf('\n');
        }
      };
      child.stdout.on('data', onData);
      child.stderr.on('data', (c: Buffer) => {
        this.keepLog(`[${life}!] ${c.toString('utf8').trimEnd()}`);
      });
      child.once('exit', (code, signal) => {
        if (this.child === child) this.child = null;
        reject(new Error(`sluiced exited (${code ?? signal ?? '?'}) before it listened`));
      });
    });
    this.httpsPort = await withTimeout(started, START_BOUND_MS, 'sluiced to start');
  }

  /** SIGKILL: the process dies wherever it is. Resolves once it has exited. */
  async kill(): Promise<void> {
    const child = this.child;
    if (child === null) return;
    const exited = new Promise<void>((resolve) => {
      child.once('exit', () => {
        resolve();
      });
    });
    child.kill('SIGKILL');
    await exited;
    this.child = null;
  }

  /** SIGTERM: the graceful stop. Resolves with the exit code. */
  async stop(): Promise<number | null> {
    const child = this.child;
    if (child === null) return null;
    const exited = new Promise<number | null>((resolve) => {
      child.once('exit', (c) => {
        resolve(c);
      });
    });
    child.kill('SIGTERM');
    const code = await exited;
    this.child = null;
    return code;
  }

  /** One HTTPS request; a network failure rejects. Answers other than 503 count as acks (I5). */
  async https(
    method: string,
    path: string,
    headers: Record<string, string> = {},
    body?: string | Buffer,
    timeoutMs = 5_000,
  ): Promise<HttpAnswer> {
    const port = this.httpsPort;
    return new Promise((resolve, reject) => {
      const req = request(
        {
          host: '127.0.0.1',
          port,
          method,
          path,
          ca: this.cert,
          agent: false,
          headers: { authorization: `Bearer ${TOKEN}`, ...headers },
          timeout: timeoutMs,
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            resolve({
              status: res.statusCode ?? 0,
              headers: res.headers,
              body: Buffer.concat(chunks).toString('utf8'),
            });
          });
          res.on('error', reject);
        },
      );
      req.once('timeout', () => req.destroy(new Error('timeout')));
      req.once('error', reject);
      if (body !== undefined) {
        req.setHeader('content-type', 'application/json');
        req.end(body);
      } else req.end();
    });
  }

  /** POSTs a command; records the acknowledgement when the daemon answered (not 503). */
  async postCommand(
    key: string,
    command: Record<string, unknown>,
    prefer = 'respond-async',
  ): Promise<HttpAnswer> {
    const answer = await this.https(
      'POST',
      '/v1/commands',
      { 'idempotency-key': key, prefer },
      JSON.stringify(command),
    );
    if (answer.status !== 503 && answer.status !== 429) this.acknowledged.set(key, 'https');
    return answer;
  }

  /** An MQTT client of the plant's identity, publishing commands with QoS 1. */
  async mqttClient(clientId: string): Promise<TestClient> {
    return TestClient.connect(this.broker.url, { clientId, clean: true });
  }

  /** Publishes a command; resolves once the broker acknowledged it (PUBACK from the broker). */
  async publishCommand(
    client: TestClient,
    device: string,
    payload: Record<string, unknown>,
  ): Promise<void> {
    await client.publish(`sluice/${this.gatewayId}/cmd/${device}`, payload);
  }

  /** The journal as it stands, read through a read-only connection (WAL readers). */
  records(): CommandRecord[] {
    const journal = SqliteJournal.open({ path: this.journalPath, readonly: true });
    try {
      return journal.list({ limit: 1_000_000 });
    } finally {
      journal.close();
    }
  }

  history(record: CommandRecord): JournalEvent[] {
    const journal = SqliteJournal.open({ path: this.journalPath, readonly: true });
    try {
      return journal.history(record);
    } finally {
      journal.close();
    }
  }

  /** Waits (bounded) until the journal holds no open command. Returns how long it took. */
  async settled(timeoutMs: number): Promise<number> {
    const start = Date.now();
    for (;;) {
      const open = this.records().filter((r) => r.state === 'accepted' || r.state === 'dispatched');
      if (open.length === 0) return Date.now() - start;
      if (Date.now() - start > timeoutMs) {
        throw new Error(
          `${open.length} commands still open after ${timeoutMs} ms: ${open
            .slice(0, 5)
            .map(
              (r) =>
                `${r.key} ${r.state} [${this.history(r)
                  .map((e) => e.detail)
                  .join(' | ')}]`,
            )
            .join('; ')}`,
        );
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /**
   * The invariants, judged from ground truth: the simulators' write logs (every write that
   * reached a controller, by sequence number) mapped to keys through the journal.
   */
  verify(): Violation[] {
    const records = this.records();
    const journal = SqliteJournal.open({ path: this.journalPath, readonly: true });
    try {
      return this.violations(records, (r) => journal.history(r));
    } finally {
      journal.close();
    }
  }

  private violations(
    records: readonly CommandRecord[],
    history: (record: CommandRecord) => JournalEvent[],
  ): Violation[] {
    const violations: Violation[] = [];
    const add = (v: Omit<Violation, 'history'>, record?: CommandRecord): void => {
      violations.push({ ...v, history: record === undefined ? [] : this.history(record) });
    };
    for (const device of this.plant.devices()) {
      const mine = records.filter((r) => r.device === device.id && r.seq !== null);
      const bySeq = new Map<number, CommandRecord[]>();
      for (const r of mine) bySeq.set(r.seq!, [...(bySeq.get(r.seq!) ?? []), r]);
      for (const [seq, owners] of bySeq) {
        // Within the 16-bit range a sequence number belongs to one command of the device.
        if (owners.length > 1 && mine.length < 65_535) {
          add(
            {
              invariant: 'I1',
              key: owners.map((o) => o.key).join(','),
              device: device.id,
              message: `sequence number ${seq} held by ${owners.length} commands`,
            },
            owners[0],
          );
        }
      }
      const foreign = this.foreignWrites.get(device.id);
      for (const w of device.writeLog) {
        if (!bySeq.has(w.seq) && foreign?.has(w.seq) !== true) {
          add({
            invariant: 'ATTRIBUTION',
            key: null,
            device: device.id,
            message: `write with sequence number ${w.seq} (code ${w.code}) belongs to no journaled command`,
          });
        }
      }
      for (const r of mine) {
        const writes = device.writesWithSeq(r.seq!);
        if (writes > 1) {
          add(
            {
              invariant: 'I1',
              key: r.key,
              device: device.id,
              message: `${writes} writes reached the controller with sequence number ${r.seq}`,
            },
            r,
          );
        }
        // Every dispatch, a re-dispatch included: the record's dispatchedAt keeps the first.
        const late = history(r).find(
          (e) =>
            ((e.from === 'accepted' && e.to === 'dispatched') ||
              e.detail.startsWith('redispatch:')) &&
            e.at >= r.deadline,
        );
        if (late !== undefined) {
          add(
            {
              invariant: 'I3',
              key: r.key,
              device: device.id,
              message: `dispatched past its deadline (${late.detail})`,
            },
            r,
          );
        }
        if (r.state === 'confirmed') {
          // Taken: accepted, or a no-op (SPEC §3) when the device was already on its way —
          // e.g. another master sent the same travel between the bridge's read and its write.
          // The controller echoes either; a refusal, LOCAL or a repeat is not taken.
          const taken = device.writeLog.find(
            (w) => w.seq === r.seq && (w.outcome === 'accepted' || w.outcome === 'noop'),
          );
          const sourceTime =
            r.observed?.sourceTime === null || r.observed?.sourceTime === undefined
              ? null
              : Date.parse(r.observed.sourceTime);
          if (taken === undefined || r.observed?.seq !== r.seq) {
            add(
              {
                invariant: 'I2',
                key: r.key,
                device: device.id,
                message: 'confirmed without the controller having taken its write',
              },
              r,
            );
          } else if (
            sourceTime !== null &&
            taken.settledAt !== null &&
            sourceTime < taken.settledAt
          ) {
            add(
              {
                invariant: 'I2',
                key: r.key,
                device: device.id,
                message: `confirmed by an image (${sourceTime}) older than the scan that took the write (${taken.settledAt})`,
              },
              r,
            );
          }
        }
      }
    }
    const keys = new Set(records.map((r) => r.key));
    for (const [key, intake] of this.acknowledged) {
      if (!keys.has(key)) {
        add({
          invariant: 'I5',
          key,
          device: '?',
          message: `acknowledged over ${intake}, not journaled`,
        });
      }
    }
    for (const r of records) {
      if (r.state === 'accepted' || r.state === 'dispatched') {
        add({ invariant: 'OPEN', key: r.key, device: r.device, message: `still ${r.state}` }, r);
      }
    }
    return violations;
  }

  /** Controller writes and journaled commands, for the summary. */
  counts(): { writes: number; commands: number; duplicates: number } {
    const records = this.records();
    let duplicates = 0;
    for (const r of records) {
      duplicates += duplicateHits(this.history(r));
    }
    return {
      writes: this.plant.devices().reduce((n, d) => n + d.counters.writesReceived, 0),
      commands: records.length,
      duplicates,
    };
  }

  async close(): Promise<void> {
    await this.kill();
    await this.broker.close();
    await this.plant.stop();
    this.cleanup();
  }

  private keepLog(line: string): void {
    this.logs.push(line);
    if (this.logs.length > 5_000) this.logs.splice(0, this.logs.length - 5_000);
  }
}

/**
 * How long a daemon life may take to listen: what its unit gives a start (TimeoutStartSec=90s,
 * systemd/sluiced.service), not less. A start is mostly CPU (Node's start, the journal check's
 * process, node-opcua loaded for an OPC UA PLC: 0.7 s of CPU, 7.3 s at a load of ~15), and the
 * 30 s this was failed an OPC UA site's start beside other test files: 18-19 s beside four
 * busy loops, 27 s the campaign's median at a load of 11-21. A start that ends (exits) fails at
 * once; this bound is only for one that hangs.
 */
const START_BOUND_MS = 90_000;

async function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => {
          reject(new Error(`${what}: no answer within ${ms} ms`));
        }, ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * The duplicate claims a history records (over `intake`, or any): repeated ones are one event
 * with their count.
 */
export function duplicateHits(history: readonly JournalEvent[], intake?: string): number {
  let hits = 0;
  for (const e of history) {
    if (intake !== undefined && e.intake !== intake) continue;
    const hit = repeatOf(e);
    if (hit?.base === DUPLICATE_DETAIL) hits += hit.count;
  }
  return hits;
}

/** The claims of a key a history records over `intake`: its acceptance and its duplicates. */
export function claimsOver(history: readonly JournalEvent[], intake: string): number {
  const received = history.some((e) => e.from === null && e.intake === intake) ? 1 : 0;
  return received + duplicateHits(history, intake);
}
