import { spawn } from 'node:child_process';
import {
  makePki,
  startIntake,
  until,
  type Pki,
  type RunningIntake,
} from '../intake/https-client.js';
import { startStack, TOKENS, type Stack } from './stack.js';
import {
  addVethNamespace,
  removeVethNamespace,
  run,
  vethNamespace,
  type VethNamespace,
} from './veth-namespace.js';

/**
 * A half-closed client across a shaped link, for the tests of how the HTTPS intake keeps and
 * lets go a connection whose client half-closed (https-half-closed.ts): the real intake over
 * TLS (sluice-sim, SQLite under it), listening on every address with one connection per
 * address, and a client in a network namespace of its own, its link's rate shaped (tc tbf on
 * the gateway's end of a veth pair), its MTU too when asked. The client, a Node process in the
 * namespace, reports what it saw itself (halfClosedClient).
 *
 * Needs root and iproute2 (`ip netns`, `tc` with tbf): the caller skips without them
 * (vethNamespaceAvailable).
 */

/** The gateway's end of the link, towards the client. */
export interface LinkShape {
  /** tc tbf's rate, burst and latency (`80kbit`, `400`, `10s`). */
  readonly rate: string;
  readonly burst: string;
  readonly latency: string;
  /** Both ends' MTU (bytes), when smaller packets are wanted. */
  readonly mtu?: number;
}

export interface ShapedIntake {
  readonly link: VethNamespace;
  readonly api: RunningIntake;
  stop(): Promise<void>;
}

/**
 * Makes the namespace `sluice-TAG-PID` (veth-namespace.ts: `code` names its links, `net` is the
 * second octet of its /30, each test file its own), shapes its link, and starts the stack and
 * an intake that listens on 0.0.0.0 with https.maxConnectionsPerAddress 1.
 */
export async function startShapedIntake(
  tag: string,
  code: string,
  net: number,
  shape: LinkShape,
): Promise<ShapedIntake> {
  const link = vethNamespace(tag, code, net);
  addVethNamespace(link);
  let pki: Pki | undefined;
  let stack: Stack | undefined;
  let api: RunningIntake | undefined;
  const stop = async (): Promise<void> => {
    await api?.stop();
    await stack?.stop();
    pki?.cleanup();
    removeVethNamespace(link);
  };
  try {
    if (shape.mtu !== undefined) {
      run('ip', 'link', 'set', 'dev', link.hostLink, 'mtu', String(shape.mtu));
      run('ip', '-n', link.ns, 'link', 'set', 'dev', link.nsLink, 'mtu', String(shape.mtu));
    }
    run(
      'tc',
      'qdisc',
      'add',
      'dev',
      link.hostLink,
      'root',
      'tbf',
      'rate',
      shape.rate,
      'burst',
      shape.burst,
      'latency',
      shape.latency,
    );
    pki = await makePki();
    stack = await startStack({ opcua: false });
    api = await startIntake(stack, pki, {
      https: { host: '0.0.0.0', maxConnectionsPerAddress: 1 },
    });
  } catch (error) {
    await stop();
    throw error;
  }
  return { link, api, stop };
}

/**
 * The client: connects, checks that a second connection is refused (its place is taken), sends
 * GET /metrics and half-closes, reads the answer whole (its Content-Length), then opens
 * connections until one is accepted (for 8 s at most). Prints one JSON line (HalfClosedOutcome).
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
  const sentAt = performance.now();
  a.on('data', async (chunk) => {
    text += chunk.toString('latin1');
    const head = text.indexOf('\\r\\n\\r\\n');
    const length = Number(/content-length: (\\d+)/i.exec(text)?.[1] ?? NaN);
    if (takenAt !== null || head < 0 || text.length < head + 4 + length) return;
    takenAt = performance.now();
    let refused = 0;
    for (;;) {
      if ((await attempt()) === 'accepted') break;
      refused++;
      if (performance.now() - takenAt > 8000) break;
    }
    report({ whileOpen, status: text.slice(0, 12), bytes: text.length, refused,
      answerMs: takenAt - sentAt, freedMs: performance.now() - takenAt,
      endedMs: endedAt === null ? null : endedAt - takenAt, errors });
  });
  a.write('GET /metrics HTTP/1.1\\r\\nHost: localhost\\r\\nAuthorization: Bearer ' + TOKEN + '\\r\\n\\r\\n');
  a.end();
});
a.on('error', (e) => report({ error: e.code ?? e.message }));
`;

/** What the client saw. */
export interface HalfClosedOutcome {
  /** Its second connection, tried while the first was open. */
  readonly whileOpen: 'accepted' | 'refused';
  /** The answer's status line's start (`HTTP/1.1 200`) and its size with its head. */
  readonly status: string;
  readonly bytes: number;
  /** From the request sent to the whole answer taken. */
  readonly answerMs: number;
  /** Connections refused after the answer was taken, before one was accepted. */
  readonly refused: number;
  /** From the whole answer taken to a connection accepted. */
  readonly freedMs: number;
  /** When the intake's end came, from the whole answer taken (null: not seen). */
  readonly endedMs: number | null;
  readonly errors: string[];
}

/**
 * Runs the client in the namespace against the intake, as identity `ops`; returns its report and
 * the line as printed (to show in a failed expectation). Killed if it has not reported within
 * `timeoutMs`.
 */
export async function halfClosedClient(
  site: ShapedIntake,
  timeoutMs: number,
): Promise<{ readonly outcome: HalfClosedOutcome; readonly line: string }> {
  let out = '';
  const client = spawn(
    'ip',
    ['netns', 'exec', site.link.ns, process.execPath, '--input-type=module', '-e', CLIENT],
    {
      env: {
        ...process.env,
        HOST: site.link.hostIp,
        PORT: String(site.api.port),
        CA: site.api.ca,
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
    await until(() => out.endsWith('\n'), timeoutMs, "the client's report");
  } finally {
    client.kill('SIGKILL');
    await exited;
  }
  return { outcome: JSON.parse(out) as HalfClosedOutcome, line: out.trim() };
}
