import { spawn } from 'node:child_process';
import { afterAll, beforeAll, expect, it } from 'vitest';
import {
  addVethNamespace,
  removeVethNamespace,
  run,
  vethNamespace,
  vethNamespaceAvailable,
} from '../helpers/veth-namespace.js';
import { startStack, TOKENS, type Stack } from '../helpers/stack.js';
import { makePki, startIntake, until, type Pki, type RunningIntake } from './https-client.js';

/**
 * A client that half-closes its connection once its request is sent (a FIN: `nc -N`, socat,
 * some embedded clients) and reads its answer frees its place among the intake's connections
 * once it has taken the answer, as a client that closes does. The intake keeps such a socket
 * open while the kernel holds answer bytes its client has not acknowledged (https-half-closed.ts
 * keepUntilTaken: one that never reads is reset under the bound instead of lingering orphaned),
 * and let it go only at its next look at the kernel's table, every 5 s: any answer still on the
 * wire when the connection ended (a client anywhere but on the gateway itself) kept the slot up
 * to 5 s after the client's last byte, and a client sending one request per connection this way
 * under https.maxConnectionsPerAddress was refused its next connection meanwhile.
 *
 * Real intake over TLS (sluice-sim, SQLite under it), its default timeouts (its look every 5 s),
 * at most one connection per address. The client is in a network namespace of its own, its
 * link shaped (tc tbf on the gateway's end of a veth pair) so that its answer takes about 0.6 s
 * to arrive: the kernel takes it from the process at once, and it is on the wire when the
 * connection ends. Ground truth: the intake's own bound, seen by the client: a second
 * connection refused while the first is open, then, once the client has the whole answer, new
 * connections tried until one is accepted.
 *
 * Needs root and iproute2 (`ip netns`, `tc` with tbf): skipped without them.
 */

const LINK = vethNamespace('half', 'h', 216);
const { ns: NS, hostLink: HOST_LINK, hostIp: HOST_IP } = LINK;

const canRun = vethNamespaceAvailable();

let stack: Stack;
let pki: Pki;
let api: RunningIntake;

beforeAll(async () => {
  if (!canRun) return;
  addVethNamespace(LINK);
  // 40 KB/s towards the client, a queue of a second: an answer of ~20 KB takes ~0.5 s.
  run(
    'tc',
    'qdisc',
    'add',
    'dev',
    HOST_LINK,
    'root',
    'tbf',
    'rate',
    '320kbit',
    'burst',
    '1600',
    'latency',
    '1s',
  );
  pki = await makePki();
  stack = await startStack({ opcua: false });
  api = await startIntake(stack, pki, {
    https: { host: '0.0.0.0', maxConnectionsPerAddress: 1 },
  });
}, 60_000);

afterAll(async () => {
  if (!canRun) return;
  await api.stop();
  await stack.stop();
  pki.cleanup();
  removeVethNamespace(LINK);
});

/**
 * The client: connects, checks that a second connection is refused (its place is taken), sends
 * GET /metrics and half-closes, reads the answer whole (its Content-Length), then opens
 * connections until one is accepted. Prints one JSON line.
 */
const CLIENT = `
import { connect } from 'node:tls';
const { HOST, PORT, CA, TOKEN } = process.env;
const options = { host: HOST, port: Number(PORT), ca: CA, checkServerIdentity: () => undefined };
const attempt = () => new Promise((resolve) => {
  const s = connect(options);
  s.on('error', () => undefined);
  s.once('secureConnect', () => { s.destroy(); resolve('accepted'); });
  s.once('close', () => resolve('refused'));
});
const report = (o) => { process.stdout.write(JSON.stringify(o) + '\\n'); process.exit(0); };
const a = connect(options, async () => {
  const whileOpen = await attempt();
  let text = '';
  let takenAt = null;
  let endedAt = null;
  const errors = [];
  a.on('error', (e) => errors.push(e.code ?? e.message));
  a.on('end', () => { endedAt = performance.now(); });
  a.on('data', async (chunk) => {
    text += chunk.toString('latin1');
    const head = text.indexOf('\\r\\n\\r\\n');
    const length = Number(/content-length: (\\d+)/i.exec(text)?.[1] ?? NaN);
    if (takenAt !== null || head < 0 || text.length < head + 4 + length) return;
    takenAt = performance.now();
    let refused = 0;
    for (;;) {
      const outcome = await attempt();
      if (outcome === 'accepted') break;
      refused++;
      if (performance.now() - takenAt > 8000) break;
    }
    const freedMs = performance.now() - takenAt;
    report({ whileOpen, status: text.slice(0, 12), bytes: text.length, refused, freedMs,
      endedMs: endedAt === null ? null : endedAt - takenAt, errors });
  });
  a.write('GET /metrics HTTP/1.1\\r\\nHost: localhost\\r\\nAuthorization: Bearer ' + TOKEN + '\\r\\n\\r\\n');
  a.end();
});
a.on('error', (e) => report({ error: e.code ?? e.message }));
`;

interface Outcome {
  readonly whileOpen: 'accepted' | 'refused';
  readonly status: string;
  readonly bytes: number;
  readonly refused: number;
  readonly freedMs: number;
  readonly endedMs: number | null;
  readonly errors: string[];
}

it.skipIf(!canRun)(
  'a half-closed client that reads frees its slot once it has taken its answer, not at the next look seconds later',
  async () => {
    let out = '';
    const client = spawn(
      'ip',
      ['netns', 'exec', NS, process.execPath, '--input-type=module', '-e', CLIENT],
      {
        env: {
          ...process.env,
          HOST: HOST_IP,
          PORT: String(api.port),
          CA: api.ca,
          TOKEN: TOKENS.ops,
        },
        stdio: ['ignore', 'pipe', 'inherit'],
      },
    );
    client.stdout.on('data', (chunk: Buffer) => {
      out += chunk.toString('utf8');
    });
    const exited = new Promise((resolve) => client.once('exit', resolve));
    try {
      await until(() => out.endsWith('\n'), 20_000, "the client's report");
    } finally {
      client.kill('SIGKILL');
      await exited;
    }
    const outcome = JSON.parse(out) as Outcome;
    // The bound holds: its place is taken while its connection is open.
    expect(outcome.whileOpen, out).toBe('refused');
    expect(outcome.status).toBe('HTTP/1.1 200');
    // Long enough on the wire that the connection ended before the client had it all.
    expect(outcome.bytes).toBeGreaterThan(15_000);
    expect(outcome.errors).toEqual([]);
    // Freed once the answer is taken: not seconds later at the intake's next look.
    expect(outcome.freedMs, out).toBeLessThan(1_000);
  },
  40_000,
);
