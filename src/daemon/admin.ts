import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { chmodSync, existsSync, lstatSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { connect, type Socket } from 'node:net';
import type { Clock } from '../core/clock.js';
import { settledByReadback } from '../core/reverify-verdict.js';
import {
  AlreadySettledError,
  JournalUnavailableError,
  UnknownCommandError,
} from '../core/errors.js';
import type { GatewayClock } from '../core/gateway-clock.js';
import type { CommandRecord, CommandRef } from '../core/journal.js';
import type { Logger } from '../core/logger.js';
import { resolveAndSync } from '../core/operator-resolve.js';
import type { CommandPipeline } from '../core/pipeline.js';
import { toResult } from '../core/result.js';
import { deviceDocument } from '../intake/device-view.js';
import { requireFirstRequest } from '../intake/https-connections.js';
import { gatewayClockDocument } from '../views/gateway-clock.js';

/**
 * The daemon's local admin endpoint (docs/admin-api.md): what `sluicectl` changes goes through
 * the daemon, the journal's single writer. HTTP over a Unix socket that only the daemon's user
 * (and root) can open, and a bearer token in a file only they can read.
 */

export interface AdminOptions {
  readonly socket: string;
  readonly tokenFile: string;
  readonly pipeline: CommandPipeline;
  readonly gatewayClock: GatewayClock;
  readonly policy: { readonly onUnsynced: string; readonly maxControllerSkewMs: number };
  readonly readiness: () => unknown;
  readonly clock: Clock;
  readonly logger: Logger;
  /**
   * A connection that brings no request within this is closed, and a request body that does not
   * arrive within this of its head is answered 408 (default FIRST_REQUEST_TIMEOUT_MS).
   */
  readonly firstRequestTimeoutMs?: number;
  /** At most this many connections at once; past it a new one is closed (default MAX_CONNECTIONS). */
  readonly maxConnections?: number;
  /** How long stop() lets requests in flight finish before cutting them (default DRAIN_MS). */
  readonly drainMs?: number;
}

const MAX_BODY = 16 * 1024;
/**
 * Node keeps a connection that never sends a request for ever (its header timeout starts with a
 * request's first byte): a client that connects and hangs would hold a descriptor of the daemon
 * until it stops. sluicectl sends its request at once.
 */
export const FIRST_REQUEST_TIMEOUT_MS = 10_000;
/** sluicectl makes one request at a time; the status page does not use the socket. */
export const MAX_CONNECTIONS = 32;
/**
 * How long a stop lets requests in flight finish: a resolve already journaled waits for its sync
 * (RESOLVE_SYNC_WAIT_MS), and cut, its operator would read "socket hang up" for a resolve that
 * took effect. A reverify waiting longer for its readback is cut (it changed nothing yet, or its
 * settlement is in the journal for `show`).
 */
export const DRAIN_MS = 6_000;
const REVERIFY_WAIT_MS = 10_000;
/** How long a resolve waits for the journal's sync (operator-resolve.ts). */
export { RESOLVE_SYNC_WAIT_MS } from '../core/operator-resolve.js';

class AdminError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export class AdminEndpoint {
  private readonly o: AdminOptions;
  private readonly log: Logger;
  /**
   * The admin token's SHA-256 digest (null until start()): a request's token is compared as its
   * digest, in constant time and at one length whatever was sent, so a wrong guess tells
   * neither how much of it matched nor how long the token is.
   */
  private tokenDigest: Buffer | null = null;
  private server: Server | null = null;
  private readonly sockets = new Set<Socket>();
  /** Answers not yet sent: a stop waits for them (DRAIN_MS). */
  private readonly inFlight = new Set<ServerResponse>();
  private draining = false;

  private constructor(options: AdminOptions) {
    this.o = options;
    this.log = options.logger.child({ component: 'admin' });
  }

  /** Builds the endpoint; the token is read (or generated) when it starts. */
  static create(options: AdminOptions): AdminEndpoint {
    return new AdminEndpoint(options);
  }

  async start(): Promise<void> {
    this.tokenDigest = digest(adminToken(this.o.tokenFile));
    // A socket file left by a killed daemon would make listen() fail: it is removed. One that a
    // process still answers on belongs to a running daemon (a second sluiced started with the
    // same configuration): taking it would leave that daemon unreachable for sluicectl, for good
    // once this one stops and removes the file.
    if (existsSync(this.o.socket)) {
      // Only a socket is ever removed: a path that names a file of another kind (a mistyped
      // admin.socket naming the token, the journal or a site file) is the operator's, not ours.
      if (!lstatSync(this.o.socket).isSocket()) {
        throw new Error(
          `admin.socket ${this.o.socket} names an existing file that is not a socket; it is left alone (choose a path of its own)`,
        );
      }
      if (await answers(this.o.socket)) {
        throw new Error(
          `another process answers on the admin socket ${this.o.socket} (is another sluiced running with this configuration?); it is left alone`,
        );
      }
      rmSync(this.o.socket, { force: true });
    }
    const server = createServer((req, res) => {
      this.inFlight.add(res);
      res.once('close', () => {
        this.inFlight.delete(res);
      });
      if (this.draining) res.shouldKeepAlive = false;
      this.handle(req, res).catch((error: unknown) => {
        this.fail(res, error);
      });
    });
    server.maxConnections = this.o.maxConnections ?? MAX_CONNECTIONS;
    let warnedAt = Number.NEGATIVE_INFINITY;
    let refused = 0;
    server.on('drop', () => {
      refused++;
      // A duration (SPEC §6): on the wall clock, a gateway clock stepped back would keep the
      // refusals quiet for the length of the step.
      const now = this.o.clock.elapsed();
      if (now - warnedAt < 60_000) return; // one warning a minute, with the count
      this.log.warn(
        { maxConnections: server.maxConnections, refused },
        'admin connections refused: the limit of open connections is reached',
      );
      warnedAt = now;
      refused = 0;
    });
    requireFirstRequest(
      server,
      'connection',
      this.o.firstRequestTimeoutMs ?? FIRST_REQUEST_TIMEOUT_MS,
    );
    server.on('connection', (socket: Socket) => {
      this.sockets.add(socket);
      socket.on('close', () => {
        this.sockets.delete(socket);
      });
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.o.socket, () => {
        server.off('error', reject);
        resolve();
      });
    });
    chmodSync(this.o.socket, 0o600);
    this.server = server;
    this.log.info({ socket: this.o.socket }, 'admin endpoint listening');
  }

  async stop(): Promise<void> {
    const server = this.server;
    this.server = null;
    if (server === null) return;
    const closed = new Promise<void>((resolve) => {
      server.close(() => {
        resolve();
      });
    });
    this.draining = true;
    // No new connections; those without a request close now. A request in flight gets its
    // answer, and its connection closes after it; past the bound, what is left is cut.
    for (const res of this.inFlight) res.shouldKeepAlive = false;
    server.closeIdleConnections();
    const cut = setTimeout(() => {
      if (this.inFlight.size > 0) {
        this.log.warn(
          { requests: this.inFlight.size, drainMs: this.o.drainMs ?? DRAIN_MS },
          'admin requests still in flight at the stop bound; their connections are cut',
        );
      }
      for (const s of this.sockets) s.destroy();
    }, this.o.drainMs ?? DRAIN_MS);
    await closed;
    clearTimeout(cut);
    rmSync(this.o.socket, { force: true });
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const auth = req.headers.authorization ?? '';
    const given = digest(auth.startsWith('Bearer ') ? auth.slice(7).trim() : '');
    if (this.tokenDigest === null || !timingSafeEqual(given, this.tokenDigest)) {
      throw new AdminError(401, 'UNAUTHORIZED', 'missing or wrong admin token');
    }
    // The path as sent, not as a URL parser resolves it: "." and ".." are keys too, and a
    // resolved `/v1/commands/../resolve` would name no command ("no route POST /v1/resolve").
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    const method = req.method ?? 'GET';
    const { pipeline } = this.o;
    if (method === 'GET' && path === '/v1/health') {
      send(res, 200, this.o.readiness());
      return;
    }
    if (method === 'GET' && path === '/v1/devices') {
      send(res, 200, { devices: pipeline.devices().map((d) => deviceDocument(d, true)) });
      return;
    }
    if (method === 'GET' && path === '/v1/clock') {
      send(res, 200, {
        gateway: gatewayClockDocument(this.o.gatewayClock.status()),
        policy: this.o.policy,
        devices: pipeline.devices().map((d) => {
          const doc = deviceDocument(d, true);
          return { id: doc.id, skew: doc.skew, clockOff: doc.clockOff };
        }),
      });
      return;
    }
    const action = /^\/v1\/commands\/([^/]+)\/(reverify|resolve)$/.exec(path);
    if (method === 'POST' && action !== null) {
      const key = decodeKey(action[1] ?? '');
      const body = await readJson(req, this.o.firstRequestTimeoutMs ?? FIRST_REQUEST_TIMEOUT_MS);
      const by = text(body.by, 'by', 200);
      const ref = this.refOf(key, body.scope);
      if (action[2] === 'resolve') {
        if (body.as !== 'failed') {
          throw new AdminError(400, 'INVALID_REQUEST', 'as: only "failed" is supported');
        }
        const reason = text(body.reason, 'reason', 500);
        await this.resolve(res, ref, by, reason);
        return;
      }
      const askedAt = this.o.clock.now();
      const { record, detail } = await pipeline.reverify(ref, by, REVERIFY_WAIT_MS);
      const settled = record.state !== 'accepted' && record.state !== 'dispatched';
      send(res, 200, {
        settled,
        byReadback: settledByReadback(record, askedAt),
        result: toResult(record, false),
        detail,
      });
      return;
    }
    throw new AdminError(404, 'NOT_FOUND', `no route ${method} ${path}`);
  }

  /** An operator's resolve, answered as operator-resolve.ts words it (the status page's too). */
  private async resolve(
    res: ServerResponse,
    ref: CommandRef,
    by: string,
    reason: string,
  ): Promise<void> {
    const answer = await resolveAndSync(this.o.pipeline, this.o.clock, { ref, by, reason }, (r) => {
      this.log.warn({ key: r.key, device: r.device, by }, 'resolved by an operator');
    });
    switch (answer.kind) {
      case 'durable':
        send(res, 200, {
          result: toResult(answer.record, false),
          ...(answer.detail === null ? {} : { replayed: true, detail: answer.detail }),
        });
        return;
      case 'unsynced':
        this.log.error(
          { key: answer.record.key, device: answer.record.device, by, err: answer.why },
          'resolve not yet on disk',
        );
        problem(res, 503, 'JOURNAL_UNAVAILABLE', answer.detail, {
          result: toResult(answer.record, false),
        });
        return;
      case 'refused':
        throw new AdminError(answer.status, answer.code, answer.detail);
    }
  }

  /** The command a key names: the operator names keys; a key in several scopes needs one. */
  private refOf(key: string, scope: unknown): CommandRef {
    const found: CommandRecord[] = this.o.pipeline
      .findByKey(key)
      .filter((r) => scope === undefined || r.scope === scope);
    if (found.length === 0)
      throw new AdminError(404, 'UNKNOWN_COMMAND', `no command with key "${key}"`);
    if (found.length > 1) {
      throw new AdminError(
        409,
        'AMBIGUOUS_KEY',
        `key "${key}" exists in scopes ${found.map((r) => r.scope).join(', ')}: give scope`,
      );
    }
    const [record] = found as [CommandRecord];
    return { scope: record.scope, key: record.key };
  }

  private fail(res: ServerResponse, error: unknown): void {
    // A body not read to its end cannot be told from the next request: the connection closes
    // after this answer.
    if (!res.req.complete) res.shouldKeepAlive = false;
    if (error instanceof AdminError) {
      problem(res, error.status, error.code, error.message);
    } else if (error instanceof UnknownCommandError) {
      problem(res, 404, error.code, error.message);
    } else if (error instanceof AlreadySettledError) {
      problem(res, 409, error.code, error.message);
    } else if (error instanceof JournalUnavailableError) {
      problem(res, 503, error.code, error.message);
    } else {
      this.log.error({ err: error }, 'admin request failed');
      problem(res, 500, 'INTERNAL', error instanceof Error ? error.message : String(error));
    }
  }
}

/**
 * Whether a process listens on the Unix socket `path` (a live daemon's). Only a refused
 * connection (ECONNREFUSED: a file nobody listens on, as a killed daemon leaves it, or no socket
 * at all) or a vanished file says it is free; a full backlog (EAGAIN) or no answer within a
 * second is a live, busy listener.
 */
function answers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = connect(path);
    const done = (live: boolean): void => {
      clearTimeout(timer);
      probe.destroy();
      resolve(live);
    };
    const timer = setTimeout(() => {
      done(true);
    }, 1_000);
    probe.once('connect', () => {
      done(true);
    });
    probe.once('error', (error: NodeJS.ErrnoException) => {
      done(error.code !== 'ECONNREFUSED' && error.code !== 'ENOENT');
    });
  });
}

function digest(token: string): Buffer {
  return createHash('sha256').update(token, 'utf8').digest();
}

/** The admin token: read, or generated (0600) at the first start. */
export function adminToken(file: string): string {
  if (existsSync(file)) {
    const token = readFileSync(file, 'utf8').trim();
    if (token.length >= 32) return token;
  }
  const token = randomBytes(32).toString('hex');
  writeFileSync(file, `${token}\n`, { mode: 0o600 });
  chmodSync(file, 0o600);
  return token;
}

/** The key in the path, percent-decoded; a malformed encoding is the client's error, not ours. */
function decodeKey(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    throw new AdminError(
      400,
      'INVALID_REQUEST',
      'the key in the path is not valid percent-encoding',
    );
  }
}

function text(value: unknown, field: string, max: number): string {
  if (typeof value !== 'string' || value.trim() === '' || value.length > max) {
    throw new AdminError(400, 'INVALID_REQUEST', `${field}: required, 1–${max} characters`);
  }
  return value.trim();
}

/**
 * The request's JSON body, which must arrive within `ms` of its head: Node's own bound on a
 * request is 5 min, so a body announced and never sent (its head carrying the token) held one
 * of the endpoint's few connections that long. Past `ms` it is answered 408 and its connection
 * closed (the rest of a body cannot be told from the next request).
 */
async function readJson(req: IncomingMessage, ms: number): Promise<Record<string, unknown>> {
  const reading = (async (): Promise<Buffer> => {
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of req) {
      const buffer = chunk as Buffer;
      size += buffer.length;
      if (size > MAX_BODY)
        throw new AdminError(413, 'PAYLOAD_TOO_LARGE', `body over ${MAX_BODY} bytes`);
      chunks.push(buffer);
    }
    return Buffer.concat(chunks);
  })();
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => {
      reject(
        new AdminError(408, 'REQUEST_TIMEOUT', `the request body did not arrive within ${ms} ms`),
      );
    }, ms);
  });
  let body: Buffer;
  try {
    body = await Promise.race([reading, late]);
  } catch (error) {
    // The read left behind ends with the connection, closed after the answer (fail()).
    reading.catch(() => undefined);
    throw error;
  } finally {
    clearTimeout(timer);
  }
  const raw = body.toString('utf8').trim();
  if (raw === '') return {};
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch {
    throw new AdminError(400, 'INVALID_REQUEST', 'the body is not valid JSON');
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new AdminError(400, 'INVALID_REQUEST', 'the body must be a JSON object');
  }
  return parsed as Record<string, unknown>;
}

function send(res: ServerResponse, status: number, body: unknown): void {
  const json = `${JSON.stringify(body)}\n`;
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(json),
    'cache-control': 'no-store',
  });
  res.end(json);
}

function problem(
  res: ServerResponse,
  status: number,
  code: string,
  detail: string,
  extra: Record<string, unknown> = {},
): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const json = `${JSON.stringify({ type: `urn:sluice:problem:${code.toLowerCase().replaceAll('_', '-')}`, title: code, status, code, detail, ...extra })}\n`;
  res.writeHead(status, {
    'content-type': 'application/problem+json',
    'content-length': Buffer.byteLength(json),
    'cache-control': 'no-store',
  });
  res.end(json);
}
