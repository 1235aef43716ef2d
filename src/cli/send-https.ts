import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { checkServerIdentity, type PeerCertificate } from 'node:tls';
import { request } from 'node:https';
import { CliError, UsageError, messageOf } from './errors.js';
import { isResultDocument, type ResultDocument } from './result-view.js';
import { refused, retryHint, type Delivery, type SendTarget } from './send-common.js';
import { readConfiguredFile, unitCredential } from './unit-environment.js';
import { hostAndPort } from '../config/network-addresses.js';

/**
 * `send --via https`: POST /v1/commands (docs/http-api.md) with the key, `Prefer: wait=N`, then
 * GET /v1/commands/{key} until the command is terminal or the wait is over.
 */

interface Answer {
  readonly status: number;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly body: unknown;
}

const POLL_MS = 250;

/**
 * The connection failed after it was set up (reset, closed, no answer in time): the request may
 * have reached the intake, and the command may be journaled and written. Not "cannot reach".
 */
class AnswerLost extends Error {}
const TERMINAL = new Set(['confirmed', 'rejected', 'failed']);

/** The bearer token: --token-file, SLUICE_TOKEN, or the one identity with a tokenFile. */
function token(target: SendTarget): string {
  const { options, ctx, config } = target;
  const fromFile = (file: string, what: string): string => {
    let text: string;
    try {
      text = readFileSync(file, 'utf8').trim();
    } catch (error) {
      throw new CliError(`cannot read the token (${what}) ${file}: ${messageOf(error)}`);
    }
    if (text === '') throw new CliError(`the token file ${file} (${what}) is empty`);
    return text;
  };
  if (options.tokenFile !== undefined) return fromFile(options.tokenFile, '--token-file');
  const env = ctx.io.env.SLUICE_TOKEN;
  if (env !== undefined && env !== '') return env;
  const withFiles = Object.entries(config.identities).filter(([, i]) => i.tokenFile !== undefined);
  if (withFiles.length === 1 && withFiles[0] !== undefined) {
    const [name, identity] = withFiles[0];
    return fromFile(unitCredential(identity.tokenFile ?? ''), `identities.${name}.tokenFile`);
  }
  throw new UsageError(
    "no bearer token for HTTPS: give --token-file FILE or set SLUICE_TOKEN (an identity's token)",
  );
}

interface Endpoint {
  readonly host: string;
  readonly port: number;
  readonly ca: Buffer;
  /** The names the server's certificate is checked against, when not `host` (siteNames). */
  readonly names: readonly string[] | null;
}

function endpoint(target: SendTarget): Endpoint {
  const https = target.config.https;
  if (https === undefined)
    throw new UsageError('--via https: the configuration has no https section');
  // A wildcard listener is reached on loopback from the gateway itself.
  const host = https.host === '0.0.0.0' ? '127.0.0.1' : https.host === '::' ? '::1' : https.host;
  const caFile = target.options.ca;
  let ca: Buffer;
  if (caFile === undefined) {
    // The site's own certificate, under ${CREDENTIALS_DIRECTORY} too (unitCredential).
    ca = readConfiguredFile(https.certFile, 'the CA certificate (--ca, default https.certFile)');
  } else {
    try {
      ca = readFileSync(caFile);
    } catch (error) {
      throw new CliError(`cannot read the CA certificate ${caFile} (--ca): ${messageOf(error)}`);
    }
  }
  const names = isIP(host) === 0 ? null : siteNames(unitCredential(https.certFile));
  return { host, port: https.port, ca, names };
}

/**
 * The names in the site's own certificate (https.certFile: DNS names, IP addresses, else its
 * CN), for a listener reached at an address: a gateway's certificate names the gateway
 * (`gw-7.plant`), not the loopback address a wildcard listener (`0.0.0.0`, the shipped
 * systemd/sluice.yaml's) is reached on, nor the address a listener binds, so the usual check
 * of the address against the certificate refused every send ("IP: 127.0.0.1 is not in the
 * cert's list"). The chain is still checked against the CA; the server must present a
 * certificate for one of the gateway's own names. Null when the file cannot be read (the usual
 * check then applies, and says what is wrong).
 */
function siteNames(certFile: string): string[] | null {
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(readFileSync(certFile));
  } catch {
    return null;
  }
  const names = (cert.subjectAltName ?? '')
    .split(', ')
    .map((entry) => /^(?:DNS:|IP Address:)(.+)$/.exec(entry)?.[1])
    .filter((name): name is string => name !== undefined);
  const cn = /^CN=(.+)$/m.exec(cert.subject)?.[1];
  return names.length > 0 ? names : cn === undefined ? null : [cn];
}

/** checkServerIdentity against `names`: the certificate is good for any one of them. */
function identityAmong(
  names: readonly string[],
): (host: string, cert: PeerCertificate) => Error | undefined {
  return (host, cert) => {
    for (const name of names) {
      if (checkServerIdentity(name, cert) === undefined) return undefined;
    }
    return new Error(
      `the server's certificate names none of the gateway's names in https.certFile (${names.join(', ')}), reached at ${host}`,
    );
  };
}

/**
 * The intake's URL, as the messages name it: the host and port as hostAndPort writes them (an
 * IPv6 address in brackets), a link-local one's zone after `%25` (RFC 6874: the percent sign of
 * `fe80::1%eth0` encoded), as in `https://[fe80::1%25eth0]:8443`. `https://fe80::1%eth0:8443`
 * read as no host and port.
 */
function intakeUrl(at: Pick<Endpoint, 'host' | 'port'>): string {
  return `https://${hostAndPort(at.host.replace('%', '%25'), at.port)}`;
}

function call(
  at: Endpoint,
  bearer: string,
  method: string,
  path: string,
  headers: Record<string, string>,
  body: string | undefined,
  timeoutMs: number,
): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: at.host,
        port: at.port,
        method,
        path,
        ca: at.ca,
        ...(at.names === null ? {} : { checkServerIdentity: identityAmong(at.names) }),
        agent: false,
        timeout: timeoutMs,
        headers: {
          authorization: `Bearer ${bearer}`,
          accept: 'application/json',
          ...headers,
          ...(body === undefined
            ? {}
            : {
                'content-type': 'application/json',
                'content-length': String(Buffer.byteLength(body)),
              }),
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let parsed: unknown = text;
          try {
            parsed = JSON.parse(text) as unknown;
          } catch {
            // Kept as text for the error message.
          }
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: parsed });
        });
      },
    );
    // Once the TLS handshake is done the request goes out: a failure from then on may come
    // after the intake took it. Before it (refused, a certificate not trusted) nothing was sent.
    let connected = false;
    req.once('socket', (socket) => {
      socket.once('secureConnect', () => {
        connected = true;
      });
    });
    req.once('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.once('error', (error) => {
      reject(
        connected
          ? new AnswerLost(messageOf(error))
          : new CliError(`cannot reach the HTTPS intake at ${intakeUrl(at)}: ${messageOf(error)}`),
      );
    });
    req.end(body);
  });
}

function problemOf(answer: Answer): { code: string; detail: string } {
  const b = (typeof answer.body === 'object' && answer.body !== null ? answer.body : {}) as {
    code?: unknown;
    detail?: unknown;
    errors?: unknown;
  };
  const errors = Array.isArray(b.errors) ? ` (${b.errors.map(String).join('; ')})` : '';
  return {
    code: typeof b.code === 'string' ? b.code : `HTTP_${answer.status}`,
    detail:
      (typeof b.detail === 'string'
        ? b.detail
        : typeof answer.body === 'string'
          ? answer.body
          : '') + errors,
  };
}

/** The result in an answer: 200/202 bodies, and rejected/failed problems extended by it. */
function resultIn(body: unknown): ResultDocument | null {
  if (!isResultDocument(body)) return null;
  // GET /v1/commands/{key} adds the history: the result is the rest.
  const result: Record<string, unknown> = { ...body };
  delete result.history;
  return result as unknown as ResultDocument;
}

export async function sendHttps(target: SendTarget): Promise<Delivery> {
  const at = endpoint(target);
  const bearer = token(target);
  const { key, options } = target;
  const started = target.ctx.now();
  const waitS = Math.max(0, Math.ceil(options.waitMs / 1000));
  let answer: Answer;
  try {
    answer = await call(
      at,
      bearer,
      'POST',
      '/v1/commands',
      { 'idempotency-key': key, prefer: waitS === 0 ? 'respond-async' : `wait=${waitS}` },
      JSON.stringify(target.command),
      options.waitMs + 15_000,
    );
  } catch (error) {
    if (!(error instanceof AnswerLost)) throw error;
    return {
      result: null,
      replayed: false,
      httpStatus: null,
      note:
        `the connection to ${intakeUrl(at)} was lost after the command was sent (${error.message}): ` +
        `whether the intake took it is unknown (it may be journaled, and the valve may move); ${retryHint(target)}`,
      lost: true,
    };
  }
  const replayed = answer.headers['idempotent-replayed'] === 'true';
  let result = resultIn(answer.body);
  const inProgress = answer.status === 409 && problemOf(answer).code === 'IN_PROGRESS';
  if (result === null && !inProgress) {
    const p = problemOf(answer);
    const state = heldState(answer.body, key);
    if (state !== null) return holding(target, answer.status, p, state);
    throw refused(p.code, p.detail, target, answer.status);
  }
  // 202, or a retry of a command still in flight: follow it until it is terminal or time is up.
  while (result === null || !TERMINAL.has(result.state)) {
    const left = started + options.waitMs - target.ctx.now();
    if (left <= 0) break;
    await new Promise((r) => setTimeout(r, Math.min(POLL_MS, left)));
    let poll: Answer;
    try {
      poll = await call(
        at,
        bearer,
        'GET',
        `/v1/commands/${encodeURIComponent(key)}`,
        {},
        undefined,
        10_000,
      );
    } catch (error) {
      // The intake took the command (its answer said so): following it failed, not the command.
      if (!(error instanceof AnswerLost) && !(error instanceof CliError)) throw error;
      return following(target, answer.status, result, inProgress, messageOf(error));
    }
    if (poll.status !== 200) {
      const p = problemOf(poll);
      return following(
        target,
        answer.status,
        result,
        inProgress,
        `HTTP ${poll.status} ${p.code}: ${p.detail}`,
      );
    }
    result = resultIn(poll.body);
  }
  return {
    result,
    replayed,
    httpStatus: answer.status,
    note:
      result !== null && TERMINAL.has(result.state)
        ? inProgress
          ? `this run sent nothing: key ${key} was already in flight (IN_PROGRESS), and this is the result of the command under way`
          : null
        : `the command is journaled and ${result?.state ?? 'in flight'}; it settles on its own`,
  };
}

/**
 * The state of the command a problem answer says the intake holds: its body carries the
 * command's `key` and `state` (a `503 JOURNAL_UNAVAILABLE` whose key was in the journal when the
 * journal failed, docs/http-api.md). Null for any other problem: a refusal, nothing accepted.
 */
function heldState(body: unknown, key: string): string | null {
  if (typeof body !== 'object' || body === null) return null;
  const held = body as { key?: unknown; state?: unknown };
  return held.key === key && typeof held.state === 'string' ? held.state : null;
}

/**
 * The intake holds the command but could not answer for it (its journal could not make the
 * answer durable): not a refusal. Said as "refused", with no key, it sent the operator to run
 * `send` again, a new command under a new key unless --key was given: a second actuation. The
 * key, where the command stands and the retry that is never written twice.
 */
function holding(
  target: SendTarget,
  status: number,
  problem: { code: string; detail: string },
  state: string,
): Delivery {
  return {
    result: null,
    replayed: false,
    httpStatus: status,
    note:
      `the intake holds the command (${state} in its journal) but could not answer for it ` +
      `(${problem.code}: ${problem.detail}); ${retryHint(target)}`,
    lost: true,
  };
}

/**
 * The intake answered that it holds the command (202, or 409 IN_PROGRESS), and a later look at
 * it failed (the daemon restarting, the link down): the command is journaled and settles on its
 * own. Said with the key, not as "cannot reach the HTTPS intake", which would read as though
 * nothing had been sent.
 */
function following(
  target: SendTarget,
  status: number,
  result: ResultDocument | null,
  inProgress: boolean,
  why: string,
): Delivery {
  const { key } = target;
  const taken = inProgress
    ? `key ${key} was already in flight (HTTP ${status} IN_PROGRESS; this run sent nothing)`
    : `the intake took the command (HTTP ${status})`;
  return {
    result,
    replayed: false,
    httpStatus: status,
    note:
      `${taken}, but following it failed (${why}): it is journaled and settles on its own; ` +
      retryHint(target),
    lost: true,
  };
}
