import { spawn } from 'node:child_process';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { tcpTableReads } from '../../src/intake/https-peer.js';
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
 * A half-closed client that takes its answer a little at a time (a trickle: here a slow link
 * carrying small packets, one every ~25 ms) costs the intake a bounded number of reads of the
 * kernel's TCP table, each of which reads every connection of the namespace. The intake keeps
 * such a connection while the kernel holds answer bytes its client has not acknowledged, and
 * looks at the table to let it go once they are taken (https-half-closed.ts watchReleases): every
 * look that found the client had taken bytes brought the next one back to 25 ms, so a client
 * taking a few bytes between looks had the table read up to 40 times a second for as long as it
 * trickled (~100 reads for this 3 s answer). The looks now back off whatever the client takes,
 * and start again at 25 ms only when another connection starts waiting.
 *
 * Real intake over TLS (sluice-sim, SQLite under it). The client is in a network namespace of
 * its own, its link's MTU 222 bytes and its rate shaped (tc tbf, 80 kbit/s) on the gateway's
 * end: its /metrics answer (~20 KB) arrives over ~3 s, a packet every ~25 ms. Ground truth: the
 * reads of /proc/self/net/tcp{,6} counted by the intake's own reader (https-peer.ts
 * tcpTableReads), and the client's own view: it is refused a second connection while its first
 * is kept (one per address) and accepted soon after it has taken the whole answer.
 *
 * Needs root and iproute2 (`ip netns`, `tc` with tbf): skipped without them.
 */

const LINK = vethNamespace('trickle', 't', 217);
const { ns: NS, hostLink: HOST_LINK, nsLink: NS_LINK, hostIp: HOST_IP } = LINK;

const canRun = vethNamespaceAvailable();

let stack: Stack;
let pki: Pki;
let api: RunningIntake;

beforeAll(async () => {
  if (!canRun) return;
  addVethNamespace(LINK);
  // Small packets, slowly: each acknowledgement takes a little of the answer.
  run('ip', 'link', 'set', 'dev', HOST_LINK, 'mtu', '222');
  run('ip', '-n', NS, 'link', 'set', 'dev', NS_LINK, 'mtu', '222');
  run(
    'tc',
    'qdisc',
    'add',
    'dev',
    HOST_LINK,
    'root',
    'tbf',
    'rate',
    '80kbit',
    'burst',
    '400',
    'latency',
    '10s',
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
 * The client: connects, checks that a second connection is refused, sends GET /metrics and
 * half-closes, reads the answer whole (its Content-Length), then opens connections until one is
 * accepted. Prints one JSON line.
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
  const errors = [];
  a.on('error', (e) => errors.push(e.code ?? e.message));
  const sentAt = performance.now();
  a.on('data', async (chunk) => {
    text += chunk.toString('latin1');
    const head = text.indexOf('\\r\\n\\r\\n');
    const length = Number(/content-length: (\\d+)/i.exec(text)?.[1] ?? NaN);
    if (takenAt !== null || head < 0 || text.length < head + 4 + length) return;
    takenAt = performance.now();
    for (;;) {
      if ((await attempt()) === 'accepted') break;
      if (performance.now() - takenAt > 8000) break;
    }
    report({ whileOpen, status: text.slice(0, 12), bytes: text.length,
      answerMs: takenAt - sentAt, freedMs: performance.now() - takenAt, errors });
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
  readonly answerMs: number;
  readonly freedMs: number;
  readonly errors: string[];
}

it.skipIf(!canRun)(
  'a half-closed client trickling its answer costs a bounded number of reads of the kernel table',
  async () => {
    let out = '';
    const readsBefore = tcpTableReads();
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
      await until(() => out.endsWith('\n'), 30_000, "the client's report");
    } finally {
      client.kill('SIGKILL');
      await exited;
    }
    const reads = tcpTableReads() - readsBefore;
    const outcome = JSON.parse(out) as Outcome;
    const seen = `${out.trim()} reads ${String(reads)}`;
    expect(outcome.whileOpen, seen).toBe('refused');
    expect(outcome.status).toBe('HTTP/1.1 200');
    expect(outcome.errors).toEqual([]);
    // The answer trickled in over seconds: the intake kept the connection all that time.
    expect(outcome.bytes).toBeGreaterThan(15_000);
    expect(outcome.answerMs, seen).toBeGreaterThan(2_000);
    // Bounded: a back-off to 1 s and a few looks timed on the client's pace (~100 before).
    expect(reads, seen).toBeLessThanOrEqual(20);
    // Still let go soon after its last byte.
    expect(outcome.freedMs, seen).toBeLessThan(1_000);
  },
  60_000,
);
