import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import type { ClientRequest } from 'node:http';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { MAX_STREAMS_PER_SESSION, type StreamPeerBounds } from '../../src/intake/ui-events.js';
import { until } from '../helpers/mosquitto.js';
import { realComponent } from '../helpers/real.js';
import { login, requestEvents, startUiSite, TOKENS, type UiSite } from './ui-site.js';

/**
 * A status page whose network vanishes without a FIN or a reset, against the daemon and
 * sluice-sim: the page's four event streams come over a veth pair from a network namespace of
 * their own, and the namespace's end of the link is taken down. From then on nothing the daemon
 * sends is acknowledged and nothing is sent back — what a tablet carried out of a radio's reach
 * or a dropped VPN looks like to the gateway, and what a client that only stops reading does not
 * show (its kernel still acknowledges, and answers window probes): so the real link, not a
 * paused client. The operator then reopens the page (on loopback, as from another network): it
 * must get a stream within the bound (ui-events.ts: heartbeat + peerSilentMs + a look; 50 s in
 * a gateway, shortened here to 3.25 s: DaemonOptions.uiStreamPeerBounds), where the four held the
 * session's places until TCP gave up, about 15 minutes. Ground truth: the kernel's own table of the daemon's connections (`ss`) shows the
 * four gone. A stream of another session, read on loopback all along, is kept.
 *
 * Needs root and iproute2 (`ip netns`, `ss`): skipped without them.
 */

const id = process.pid % 250;
const NS = `sluice-gone-${process.pid}`;
const HOST_LINK = `slgh${process.pid}`.slice(0, 15);
const NS_LINK = `slgn${process.pid}`.slice(0, 15);
const HOST_IP = `10.214.${id}.1`;
const PAGE_IP = `10.214.${id}.2`;

/** The gateway's STREAM_PEER_BOUNDS (15 s, 5 s, 30 s), shortened: the test waits their sum. */
const BOUNDS: StreamPeerBounds = { heartbeatMs: 1_000, peerCheckMs: 250, peerSilentMs: 2_000 };
/** The bound ui-events.ts promises, with room for a loaded machine. */
const BOUND_MS = BOUNDS.heartbeatMs + BOUNDS.peerSilentMs + BOUNDS.peerCheckMs + 10_000;

function ip(...args: string[]): void {
  execFileSync('ip', args, { stdio: 'pipe' });
}

function canMakeNamespaces(): boolean {
  if (process.getuid?.() !== 0) return false;
  try {
    execFileSync('ip', ['netns', 'list'], { stdio: 'pipe' });
    execFileSync('ss', ['-V'], { stdio: 'pipe' });
    return true;
  } catch {
    return false;
  }
}

const runnable = realComponent(
  'network namespaces (root, iproute2: ip netns, ss)',
  canMakeNamespaces(),
  'run as root with iproute2 installed',
);
let site: UiSite | undefined;
let page: ChildProcess | undefined;
const held: ClientRequest[] = [];

beforeAll(async () => {
  if (!runnable) return;
  ip('netns', 'add', NS);
  ip('link', 'add', HOST_LINK, 'type', 'veth', 'peer', 'name', NS_LINK);
  ip('link', 'set', NS_LINK, 'netns', NS);
  ip('addr', 'add', `${HOST_IP}/30`, 'dev', HOST_LINK);
  ip('link', 'set', HOST_LINK, 'up');
  ip('-n', NS, 'addr', 'add', `${PAGE_IP}/30`, 'dev', NS_LINK);
  ip('-n', NS, 'link', 'set', NS_LINK, 'up');
  site = await startUiSite({
    mqtt: false,
    opcua: false,
    httpsHost: '0.0.0.0',
    uiStreamPeerBounds: BOUNDS,
  });
}, 90_000);

afterAll(async () => {
  for (const req of held) req.destroy();
  page?.kill('SIGKILL');
  await site?.stop();
  if (!runnable) return;
  try {
    ip('link', 'del', HOST_LINK);
  } catch {
    // Gone with the namespace already.
  }
  ip('netns', 'del', NS);
});

/** The daemon's established connections to the page's address, as the kernel lists them. */
function connectionsToPage(): number {
  const out = execFileSync('ss', ['-Htn', 'state', 'established', 'dst', PAGE_IP], {
    encoding: 'utf8',
  });
  return out.split('\n').filter((line) => line.trim() !== '').length;
}

interface Opened {
  readonly status: number;
  readonly req: ClientRequest;
  /** Bytes of the stream read so far. */
  bytes(): number;
}

/** Asks for an event stream on loopback; answered once its status is known. */
function openStream(s: UiSite, cookie: string): Promise<Opened> {
  return new Promise((resolve, reject) => {
    let bytes = 0;
    const req = requestEvents(s, cookie, (res) => {
      res.on('data', (chunk: Buffer) => {
        bytes += chunk.length;
      });
      resolve({ status: res.statusCode ?? 0, req, bytes: () => bytes });
    });
    req.once('error', reject);
  });
}

/** Four streams from the namespace, read as they come, by a client of its own. */
const PAGE_CLIENT = `
import { connect } from 'node:tls';
const { HOST, PORT, CA, COOKIE, COUNT } = process.env;
for (let i = 0; i < Number(COUNT); i++) {
  const socket = connect({ host: HOST, port: Number(PORT), ca: CA, checkServerIdentity: () => undefined }, () => {
    socket.write('GET /ui/api/events HTTP/1.1\\r\\nHost: ' + HOST + ':' + PORT + '\\r\\nCookie: ' + COOKIE + '\\r\\nAccept: text/event-stream\\r\\n\\r\\n');
  });
  let first = true;
  socket.on('data', (chunk) => {
    if (first) process.stdout.write('stream ' + chunk.toString('latin1').split('\\r\\n')[0] + '\\n');
    first = false;
  });
  socket.on('error', (error) => process.stdout.write('error ' + error.code + '\\n'));
}
setInterval(() => {}, 60_000);
`;

it.skipIf(!runnable)(
  "a page whose network vanished without a FIN gives its session's streams back within the bound",
  async () => {
    const s = site!;
    const { cookie } = await login(s, TOKENS.ops);
    // Another operator's page, read on loopback throughout: its stream is not the one gone.
    const desk = await openStream(s, (await login(s, TOKENS.desk)).cookie);
    held.push(desk.req);
    expect(desk.status).toBe(200);

    let out = '';
    page = spawn(
      'ip',
      ['netns', 'exec', NS, process.execPath, '--input-type=module', '-e', PAGE_CLIENT],
      {
        env: {
          ...process.env,
          HOST: HOST_IP,
          PORT: String(s.port),
          CA: s.cert,
          COOKIE: cookie,
          COUNT: String(MAX_STREAMS_PER_SESSION),
        },
        stdio: ['ignore', 'pipe', 'inherit'],
      },
    );
    page.stdout!.on('data', (chunk: Buffer) => {
      out += chunk.toString('utf8');
    });
    await until(
      () =>
        out.split('\n').filter((line) => line === 'stream HTTP/1.1 200 OK').length ===
        MAX_STREAMS_PER_SESSION
          ? true
          : undefined,
      20_000,
      `the page's ${MAX_STREAMS_PER_SESSION} streams open from the namespace`,
    );
    expect(out).not.toContain('error');
    expect(connectionsToPage()).toBe(MAX_STREAMS_PER_SESSION);
    // The session's places are taken: the operator's fifth stream is refused.
    const refused = await openStream(s, cookie);
    refused.req.destroy();
    expect(refused.status).toBe(503);

    // The page's network vanishes: no FIN, no reset, nothing acknowledged from now on.
    ip('-n', NS, 'link', 'set', NS_LINK, 'down');
    const gone = performance.now();
    const reopened = await until(
      async () => {
        const attempt = await openStream(s, cookie);
        if (attempt.status === 200) return attempt;
        attempt.req.destroy();
        await new Promise((resolve) => setTimeout(resolve, 200));
        return undefined;
      },
      BOUND_MS,
      'a stream for the operator who reopened the page',
    );
    held.push(reopened.req);
    const tookMs = performance.now() - gone;
    expect(tookMs).toBeLessThan(BOUND_MS);
    // The kernel holds none of the four any more: reset, not left retransmitting.
    await until(() => (connectionsToPage() === 0 ? true : undefined), 5_000, 'no connection left');
    // The other session's stream was kept, and read on.
    const before = desk.bytes();
    await until(
      () => (desk.bytes() > before ? true : undefined),
      20_000,
      'the desk stream reads on',
    );
    expect(desk.req.destroyed).toBe(false);
  },
  BOUND_MS + 60_000,
);
