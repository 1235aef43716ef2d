import { readFileSync } from 'node:fs';
import { request } from 'node:http';
import { connect } from 'node:net';
import { CliError, EXIT, messageOf } from './errors.js';

/**
 * A client of the daemon's local admin endpoint (docs/admin-api.md): HTTP/1.1 over its Unix
 * socket, with the bearer token from the token file. The daemon stays the journal's single
 * writer: `reverify` and `resolve` ask it, they never write the journal themselves.
 */

export interface AdminEndpointPaths {
  readonly socket: string;
  readonly tokenFile: string;
}

export interface AdminAnswer {
  readonly status: number;
  readonly body: unknown;
}

/**
 * The request went out and no answer came back (the connection closed, the daemon stopping or
 * restarting, no answer in time): what it asked for may have been done. The caller says what
 * that means for its action and how to learn which.
 */
export class AnswerLostError extends CliError {}

/** Problem codes that mean the command line must say more, not that something broke. */
const USAGE_CODES = new Set(['AMBIGUOUS_KEY', 'INVALID_REQUEST']);

export class AdminClient {
  private readonly paths: AdminEndpointPaths;
  private readonly timeoutMs: number;
  private token: string | null = null;

  constructor(paths: AdminEndpointPaths, timeoutMs = 30_000) {
    this.paths = paths;
    this.timeoutMs = timeoutMs;
  }

  /** GET; a problem answer throws. `accept` lists further statuses that carry a body (503). */
  async get(path: string, accept: readonly number[] = []): Promise<AdminAnswer> {
    return this.checked(await this.send('GET', path, undefined), accept);
  }

  /** POST; a problem answer throws, but for the statuses in `accept` (see get). */
  async post(path: string, body: unknown, accept: readonly number[] = []): Promise<AdminAnswer> {
    return this.checked(await this.send('POST', path, body), accept);
  }

  private checked(answer: AdminAnswer, accept: readonly number[]): AdminAnswer {
    if (answer.status >= 200 && answer.status < 300) return answer;
    if (accept.includes(answer.status)) return answer;
    const problem = (answer.body ?? {}) as { code?: unknown; detail?: unknown };
    const code = typeof problem.code === 'string' ? problem.code : `HTTP_${answer.status}`;
    const detail =
      typeof problem.detail === 'string' ? problem.detail : JSON.stringify(answer.body ?? null);
    const hint =
      code === 'UNAUTHORIZED'
        ? ` (the token in ${this.paths.tokenFile} does not match the running daemon's)`
        : '';
    throw new CliError(
      `the daemon refused: ${code}: ${detail}${hint}`,
      USAGE_CODES.has(code) ? EXIT.USAGE : EXIT.ERROR,
      code,
    );
  }

  private readToken(): string {
    if (this.token !== null) return this.token;
    let text: string;
    try {
      text = readFileSync(this.paths.tokenFile, 'utf8');
    } catch (error) {
      const code = (error as { code?: unknown }).code;
      if (code === 'ENOENT') {
        throw new CliError(
          `no admin token at ${this.paths.tokenFile}: sluiced writes it when it starts; is it running with this configuration?`,
        );
      }
      if (code === 'EACCES' || code === 'EPERM') {
        throw new CliError(
          `cannot read the admin token ${this.paths.tokenFile}: permission denied; run as the daemon's user or root (sudo)`,
        );
      }
      throw new CliError(
        `cannot read the admin token ${this.paths.tokenFile}: ${messageOf(error)}`,
      );
    }
    this.token = text.trim();
    return this.token;
  }

  private send(method: string, path: string, body: unknown): Promise<AdminAnswer> {
    const token = this.readToken();
    const payload = body === undefined ? undefined : JSON.stringify(body);
    return new Promise((resolve, reject) => {
      const req = request(
        {
          socketPath: this.paths.socket,
          // A connection of its own per request: one kept alive in Node's global pool could
          // be reused after the daemon closed it (a stop ends its connections), and fail as
          // "closed the connection before answering" for a request never sent.
          agent: false,
          method,
          path,
          // Host is required by HTTP/1.1; the socket is what names the daemon.
          headers: {
            host: 'sluiced',
            authorization: `Bearer ${token}`,
            accept: 'application/json',
            ...(payload === undefined
              ? {}
              : {
                  'content-type': 'application/json',
                  'content-length': Buffer.byteLength(payload),
                }),
          },
          timeout: this.timeoutMs,
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('error', (error) => {
            reject(this.unreachable(error));
          });
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            let parsed: unknown = text;
            try {
              parsed = text === '' ? null : (JSON.parse(text) as unknown);
            } catch {
              // Not JSON: kept as text for the error message.
            }
            resolve({ status: res.statusCode ?? 0, body: parsed });
          });
        },
      );
      // Once the request is written, the daemon may act on it whatever becomes of the answer.
      let sent = false;
      req.once('finish', () => {
        sent = true;
      });
      req.once('timeout', () => {
        req.destroy(
          Object.assign(new Error(`no answer within ${this.timeoutMs} ms`), { code: 'ETIMEDOUT' }),
        );
      });
      req.once('error', (error) => {
        reject(sent ? this.lost(error) : this.unreachable(error));
      });
      req.end(payload);
    });
  }

  private lost(error: Error): AnswerLostError {
    const code = (error as { code?: unknown }).code;
    return new AnswerLostError(
      code === 'ETIMEDOUT'
        ? `sluiced took the request at ${this.paths.socket} and gave no answer within ${this.timeoutMs} ms`
        : `sluiced closed the connection at ${this.paths.socket} before answering (${messageOf(error)}): it may be stopping or restarting`,
    );
  }

  private unreachable(error: Error): CliError {
    const code = (error as { code?: unknown }).code;
    const socket = this.paths.socket;
    switch (code) {
      case 'ENOENT':
      case 'ECONNREFUSED':
        return new CliError(
          `cannot reach sluiced's admin endpoint at ${socket} (${code}): is sluiced running with this configuration? (systemctl status sluiced)`,
        );
      case 'EACCES':
      case 'EPERM':
        return new CliError(
          `cannot connect to ${socket}: permission denied; run as the daemon's user or root (sudo)`,
        );
      default:
        return new CliError(`the admin endpoint at ${socket} failed: ${messageOf(error)}`);
    }
  }
}

/**
 * Whether a daemon listens on the admin socket: `absent` only when nothing does (no socket file,
 * or one a killed daemon left), `unknown` when that cannot be told (no permission, no answer
 * within `timeoutMs`). Connects and closes: nothing is asked of the daemon.
 */
export function daemonListening(
  socket: string,
  timeoutMs = 1_000,
): Promise<'listening' | 'absent' | 'unknown'> {
  return new Promise((resolve) => {
    const probe = connect({ path: socket });
    const done = (answer: 'listening' | 'absent' | 'unknown'): void => {
      clearTimeout(timer);
      probe.destroy();
      resolve(answer);
    };
    const timer = setTimeout(() => {
      done('unknown');
    }, timeoutMs);
    probe.once('connect', () => {
      done('listening');
    });
    probe.once('error', (error) => {
      const code = (error as { code?: unknown }).code;
      done(code === 'ENOENT' || code === 'ECONNREFUSED' ? 'absent' : 'unknown');
    });
  });
}
