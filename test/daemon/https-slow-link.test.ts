import { spawn } from 'node:child_process';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { HTTPS_TIMEOUTS } from '../../src/intake/https-server.js';
import { until } from '../helpers/mosquitto.js';
import {
  addVethNamespace,
  removeVethNamespace,
  run,
  vethNamespace,
  vethNamespaceAvailable,
} from '../helpers/veth-namespace.js';
import { call, startUiSite, type UiSite } from '../ui/ui-site.js';

/**
 * A large answer over a slow link, against the daemon (built from its site file) and sluice-sim:
 * `/metrics` of a plant of 400 valves (about 400 KB), fetched by a client in a network namespace
 * of its own whose link the kernel shapes to a rate (tc tbf on the gateway's end of a veth pair,
 * its queue a second of the rate: a longer one took the whole answer from the process at once)
 * at which the answer takes 20 s to go out, of which the gateway's process holds the part the
 * kernel's buffers do not take (about 250 KB) well past the request timeout (30 s in a gateway,
 * shortened here to 5 s: DaemonOptions.httpsTimeouts). Every byte
 * moves, so the answer is not cut: the bound on an answer going out is on progress, not time
 * (https-unread.ts boundAnswers). It was cut at the bound, the client left with part of
 * the answer and a reset, and its retry cut the same way. Ground truth: what the client read,
 * whole (its Content-Length, ending with a whole line).
 *
 * Needs root and iproute2 (`ip netns`, `tc` with tbf): skipped without them.
 */

const LINK = vethNamespace('slow', 's', 215);
const { ns: NS, hostLink: HOST_LINK, hostIp: HOST_IP } = LINK;
const VALVES = 400;
/** The request timeout, which bounds an answer going out that does not move. */
const REQUEST_TIMEOUT_MS = 5_000;
/** How long the answer should take to go out over the shaped link. */
const TRANSFER_MS = 20_000;

const canRun = vethNamespaceAvailable();
let site: UiSite | undefined;

beforeAll(async () => {
  if (!canRun) return;
  addVethNamespace(LINK);
  site = await startUiSite({
    mqtt: false,
    opcua: false,
    bulkValves: VALVES,
    httpsHost: '0.0.0.0',
    httpsTimeouts: { ...HTTPS_TIMEOUTS, requestMs: REQUEST_TIMEOUT_MS },
  });
}, 120_000);

afterAll(async () => {
  await site?.stop();
  if (!canRun) return;
  removeVethNamespace(LINK);
});

/** One GET over the shaped link, read to its end: what the client got. */
const CLIENT = `
import { request } from 'node:https';
const { HOST, PORT, CA, TOKEN } = process.env;
const started = Date.now();
let bytes = 0;
const chunks = [];
const req = request({ host: HOST, port: Number(PORT), path: '/metrics', ca: CA, agent: false,
  checkServerIdentity: () => undefined }, (res) => {
  res.on('data', (chunk) => { bytes += chunk.length; chunks.push(chunk); });
  const report = (error) => {
    const lastLine = Buffer.concat(chunks).toString('utf8').endsWith('\\n');
    process.stdout.write(JSON.stringify({ status: res.statusCode, length: Number(res.headers['content-length']),
      bytes, lastLine, ms: Date.now() - started, error: error?.code ?? error?.message ?? null }));
    process.exit(0);
  };
  res.on('end', () => report(null));
  res.on('error', report);
  res.on('aborted', () => report(new Error('aborted')));
});
req.on('error', (error) => { process.stdout.write(JSON.stringify({ bytes, error: error.code ?? error.message, ms: Date.now() - started })); process.exit(0); });
req.end();
`;

interface Fetched {
  readonly status?: number;
  readonly length?: number;
  readonly bytes: number;
  readonly lastLine?: boolean;
  readonly ms: number;
  readonly error: string | null;
}

it.skipIf(!canRun)(
  'a large answer over a slow link, held by the gateway past the request timeout while it moves, arrives whole',
  async () => {
    const s = site!;
    // The answer's size, on loopback: the link is shaped so that it takes TRANSFER_MS.
    const local = await call(s, 'GET', '/metrics');
    expect(local.status).toBe(200);
    const size = Buffer.byteLength(local.body);
    expect(size).toBeGreaterThan(300_000);
    const kbit = Math.max(8, Math.floor((size * 8) / (TRANSFER_MS / 1000) / 1000));
    run(
      'tc',
      'qdisc',
      'add',
      'dev',
      HOST_LINK,
      'root',
      'tbf',
      'rate',
      `${kbit}kbit`,
      'burst',
      '1600',
      'latency',
      '1s',
    );

    let out = '';
    const client = spawn(
      'ip',
      ['netns', 'exec', NS, process.execPath, '--input-type=module', '-e', CLIENT],
      {
        env: { ...process.env, HOST: HOST_IP, PORT: String(s.port), CA: s.cert },
        stdio: ['ignore', 'pipe', 'inherit'],
      },
    );
    client.stdout.on('data', (chunk: Buffer) => {
      out += chunk.toString('utf8');
    });
    const exited = new Promise((resolve) => client.once('exit', resolve));
    try {
      await until(() => (out.endsWith('}') ? true : undefined), 3 * TRANSFER_MS, 'the fetch');
    } finally {
      client.kill('SIGKILL');
      await exited;
    }
    const fetched = JSON.parse(out) as Fetched;
    // It took far longer than the bound.
    expect(fetched.ms, out).toBeGreaterThan(2 * REQUEST_TIMEOUT_MS);
    expect(fetched.error, out).toBeNull();
    expect(fetched.status).toBe(200);
    expect(fetched.bytes).toBe(fetched.length);
    expect(fetched.lastLine).toBe(true);
  },
  5 * TRANSFER_MS,
);
