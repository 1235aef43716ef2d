import { writeFileSync } from 'node:fs';
import type { IncomingHttpHeaders } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { join } from 'node:path';
import { generate } from 'selfsigned';
import { afterAll, beforeAll } from 'vitest';
import { readHttpsTlsFiles } from '../../src/config/preflight.js';
import type { Clock } from '../../src/core/clock.js';
import { silentLogger, type Logger } from '../../src/core/logger.js';
import { HttpsIntake, type HttpsConfig, type Readiness } from '../../src/intake/https.js';
import type { DrainLimits } from '../../src/intake/https-drain.js';
import type { HttpsTimeouts } from '../../src/intake/https-server.js';
import type { IdentityRegistry } from '../../src/intake/identities.js';
import { tempDir } from '../helpers/fixtures.js';
import { startStack, type Stack } from '../helpers/stack.js';

/**
 * A real HTTPS client for the intake tests (node:https, a fresh connection per request, the
 * test CA trusted), the test PKI made with selfsigned, and an intake started on 127.0.0.1.
 */

export interface Pem {
  readonly cert: string;
  readonly key: string;
}

export interface Pki {
  /** The CA that signed the server certificate: what clients trust. */
  readonly serverCa: Pem;
  readonly server: Pem;
  /** The CA the intake trusts for client certificates (mutual TLS). */
  readonly clientCa: Pem;
  readonly dir: string;
  readonly certFile: string;
  readonly keyFile: string;
  readonly clientCaFile: string;
  /**
   * A client certificate for `cn` signed by `ca` (the client CA by default); `expired`: its
   * validity ended a day ago; `notAfter`: its validity ends then (X.509 keeps whole seconds).
   */
  client(cn: string, options?: { ca?: Pem; expired?: boolean; notAfter?: Date }): Promise<Pem>;
  /** A CA nobody configured. */
  foreignCa(): Promise<Pem>;
  cleanup(): void;
}

const DAY = 86_400_000;

async function makeCa(name: string): Promise<Pem> {
  const ca = await generate([{ name: 'commonName', value: name }], {
    keyType: 'ec',
    algorithm: 'sha256',
    extensions: [
      { name: 'basicConstraints', cA: true, critical: true },
      {
        name: 'keyUsage',
        keyCertSign: true,
        cRLSign: true,
        digitalSignature: true,
        critical: true,
      },
    ],
  });
  return { cert: ca.cert, key: ca.private };
}

export async function makePki(): Promise<Pki> {
  const { dir, cleanup } = tempDir('sluice-https-');
  const serverCa = await makeCa('Sluice test server CA');
  const clientCa = await makeCa('Sluice test client CA');
  const s = await generate([{ name: 'commonName', value: 'localhost' }], {
    keyType: 'ec',
    algorithm: 'sha256',
    ca: { key: serverCa.key, cert: serverCa.cert },
    extensions: [
      { name: 'basicConstraints', cA: false },
      { name: 'keyUsage', digitalSignature: true, keyEncipherment: true },
      { name: 'extKeyUsage', serverAuth: true },
      {
        name: 'subjectAltName',
        altNames: [
          { type: 7, ip: '127.0.0.1' },
          { type: 2, value: 'localhost' },
        ],
      },
    ],
  });
  const server = { cert: s.cert, key: s.private };
  const certFile = join(dir, 'server.crt');
  const keyFile = join(dir, 'server.key');
  const clientCaFile = join(dir, 'client-ca.crt');
  writeFileSync(certFile, server.cert);
  writeFileSync(keyFile, server.key, { mode: 0o600 });
  writeFileSync(clientCaFile, clientCa.cert);
  return {
    serverCa,
    server,
    clientCa,
    dir,
    certFile,
    keyFile,
    clientCaFile,
    client: async (cn, options = {}) => {
      const ca = options.ca ?? clientCa;
      const now = Date.now();
      const c = await generate([{ name: 'commonName', value: cn }], {
        keyType: 'ec',
        algorithm: 'sha256',
        ca: { key: ca.key, cert: ca.cert },
        ...(options.expired === true
          ? { notBeforeDate: new Date(now - 2 * DAY), notAfterDate: new Date(now - DAY) }
          : {}),
        ...(options.notAfter === undefined
          ? {}
          : { notBeforeDate: new Date(now - DAY), notAfterDate: options.notAfter }),
        extensions: [
          { name: 'basicConstraints', cA: false },
          { name: 'keyUsage', digitalSignature: true },
          { name: 'extKeyUsage', clientAuth: true },
        ],
      });
      return { cert: c.cert, key: c.private };
    },
    foreignCa: () => makeCa('Somebody else'),
    cleanup,
  };
}

export interface Target {
  readonly port: number;
  readonly ca: string;
}

export interface CallOptions {
  readonly token?: string;
  /** An array sends the header once per value (a repeated header). */
  readonly headers?: Record<string, string | string[]>;
  /** Sent as JSON with Content-Type application/json (unless headers say otherwise). */
  readonly json?: unknown;
  /** Sent as is. */
  readonly body?: string | Buffer;
  readonly clientCert?: Pem;
  readonly maxVersion?: 'TLSv1.2' | 'TLSv1.3';
  /** The client's own address (on Linux any of 127.0.0.0/8 reaches loopback): another client. */
  readonly localAddress?: string;
}

export interface HttpResult {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  readonly body: Buffer;
  readonly text: string;
  /** The body parsed as a JSON object; empty when it is not one. */
  readonly json: Record<string, unknown>;
}

export function call(
  target: Target,
  method: string,
  path: string,
  options: CallOptions = {},
): Promise<HttpResult> {
  const headers: Record<string, string | string[]> = {};
  if (options.token !== undefined) headers.authorization = `Bearer ${options.token}`;
  let body: Buffer | undefined;
  if (options.json !== undefined) {
    body = Buffer.from(JSON.stringify(options.json));
    headers['content-type'] = 'application/json';
  } else if (options.body !== undefined) {
    body = Buffer.from(options.body);
  }
  Object.assign(headers, options.headers);
  if (body !== undefined) headers['content-length'] = String(body.length);
  return new Promise((resolve, reject) => {
    const req = httpsRequest(
      {
        host: '127.0.0.1',
        port: target.port,
        method,
        path,
        headers,
        ca: target.ca,
        // A fresh connection per request: each request may present other credentials.
        agent: false,
        ...(options.clientCert === undefined
          ? {}
          : { cert: options.clientCert.cert, key: options.clientCert.key }),
        ...(options.maxVersion === undefined ? {} : { maxVersion: options.maxVersion }),
        ...(options.localAddress === undefined ? {} : { localAddress: options.localAddress }),
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('error', reject);
        res.on('end', () => {
          const raw = Buffer.concat(chunks);
          const text = raw.toString('utf8');
          let json: Record<string, unknown> = {};
          try {
            const parsed: unknown = JSON.parse(text);
            if (typeof parsed === 'object' && parsed !== null)
              json = parsed as Record<string, unknown>;
          } catch {
            // Not JSON (e.g. /metrics): tests read `text`.
          }
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: raw, text, json });
        });
      },
    );
    req.setTimeout(30_000, () => {
      req.destroy(new Error(`${method} ${path}: no answer in 30 s`));
    });
    req.on('error', reject);
    req.end(body);
  });
}

export interface RunningIntake extends Target {
  readonly intake: HttpsIntake;
  stop(): Promise<void>;
}

export interface IntakeOptions {
  readonly https?: Partial<HttpsConfig>;
  readonly identities?: IdentityRegistry;
  readonly readiness?: () => Readiness;
  readonly clock?: Clock;
  readonly logger?: Logger;
  readonly mutualTls?: boolean;
  readonly timeouts?: HttpsTimeouts;
  readonly bodyDrain?: DrainLimits;
}

export async function startIntake(
  stack: Stack,
  pki: Pki,
  options: IntakeOptions = {},
): Promise<RunningIntake> {
  const config: HttpsConfig = {
    host: '127.0.0.1',
    port: 0,
    certFile: pki.certFile,
    keyFile: pki.keyFile,
    bodyLimitBytes: 16_384,
    maxConnections: 1024,
    maxConnectionsPerAddress: 256,
    trustedProxies: [],
    defaultWaitS: 10,
    maxWaitS: 60,
    rateLimit: { perSecond: 1_000, burst: 1_000 },
    ...(options.mutualTls === true ? { clientCaFile: pki.clientCaFile } : {}),
    ...options.https,
  };
  // Read and checked as the daemon's start does (src/config/preflight.ts), which hands the
  // intake the material it serves.
  const read = readHttpsTlsFiles(config);
  if (!read.ok) throw new Error(`the test's TLS files: ${read.errors.join('; ')}`);
  const intake = new HttpsIntake({
    config,
    tls: read.files,
    pipeline: stack.pipeline,
    identities: options.identities ?? stack.identities,
    metrics: stack.metrics,
    logger: options.logger ?? silentLogger,
    readiness: options.readiness ?? (() => ({ ready: true, checks: {} })),
    ...(options.clock === undefined ? {} : { clock: options.clock }),
    ...(options.timeouts === undefined ? {} : { timeouts: options.timeouts }),
    ...(options.bodyDrain === undefined ? {} : { bodyDrain: options.bodyDrain }),
  });
  const { port } = await intake.start();
  return { intake, port, ca: pki.serverCa.cert, stop: () => intake.stop() };
}

/** Polls `predicate` every 10 ms until it holds, for at most `timeoutMs`. */
export async function until(
  predicate: () => boolean | Promise<boolean>,
  timeoutMs = 5_000,
  what = 'condition',
): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > end)
      throw new Error(`timed out after ${String(timeoutMs)} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** A logger that keeps every line, to check what the intake logs (and never logs). */
export function memoryLogger(): Logger & { readonly lines: string[] } {
  const lines: string[] = [];
  const make = (bindings: Record<string, unknown>): Logger => {
    const write =
      (level: string) =>
      (obj: object, msg?: string): void => {
        lines.push(JSON.stringify({ level, ...bindings, ...obj, msg }));
      };
    return {
      debug: write('debug'),
      info: write('info'),
      warn: write('warn'),
      error: write('error'),
      child: (more) => make({ ...bindings, ...more }),
    };
  };
  return Object.assign(make({}), { lines });
}

/** A stack, its PKI and an HTTPS intake on them, shared by the tests of one file. */
export interface IntakeFixture {
  readonly stack: Stack;
  readonly pki: Pki;
  readonly api: RunningIntake;
}

/**
 * Starts an IntakeFixture before the tests of the file that calls it and stops it after them.
 * Its fields are readable once the tests run. `stack` goes to startStack (e.g. `opcua: false`
 * for a file that never addresses `u1`).
 */
export function intakeForFile(
  options: { stack?: Parameters<typeof startStack>[0] } = {},
): IntakeFixture {
  let running: IntakeFixture | undefined;
  beforeAll(async () => {
    const pki = await makePki();
    const stack = await startStack(options.stack);
    running = { pki, stack, api: await startIntake(stack, pki) };
  });
  afterAll(async () => {
    if (running === undefined) return;
    await running.api.stop();
    await running.stack.stop();
    running.pki.cleanup();
  });
  const started = (): IntakeFixture => {
    if (running === undefined) throw new Error('the intake fixture is not started yet');
    return running;
  };
  return {
    get stack() {
      return started().stack;
    },
    get pki() {
      return started().pki;
    },
    get api() {
      return started().api;
    },
  };
}
