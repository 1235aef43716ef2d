import { afterAll, beforeAll, expect, it } from 'vitest';
import {
  halfClosedClient,
  startShapedIntake,
  type ShapedIntake,
} from '../helpers/half-closed-client.js';
import { vethNamespaceAvailable } from '../helpers/veth-namespace.js';

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
 * at most one connection per address. The client is in a network namespace of its own
 * (test/helpers/half-closed-client.ts), its link shaped (tc tbf on the gateway's end of a veth
 * pair) so that its answer takes about 0.6 s to arrive: the kernel takes it from the process
 * at once, and it is on the wire when the connection ends. Ground truth: the intake's own
 * bound, seen by the client: a second connection refused while the first is open, then, once
 * the client has the whole answer, new connections tried until one is accepted.
 *
 * Needs root and iproute2 (`ip netns`, `tc` with tbf): skipped without them.
 */

const canRun = vethNamespaceAvailable();

let site: ShapedIntake;

beforeAll(async () => {
  if (!canRun) return;
  // 40 KB/s towards the client, a queue of a second: an answer of ~20 KB takes ~0.5 s.
  site = await startShapedIntake('half', 'h', 216, {
    rate: '320kbit',
    burst: '1600',
    latency: '1s',
  });
}, 60_000);

afterAll(async () => {
  if (!canRun) return;
  await site.stop();
});

it.skipIf(!canRun)(
  'a half-closed client that reads frees its slot once it has taken its answer, not at the next look seconds later',
  async () => {
    const { outcome, line } = await halfClosedClient(site, 20_000);
    // The bound holds: its place is taken while its connection is open.
    expect(outcome.whileOpen, line).toBe('refused');
    expect(outcome.status).toBe('HTTP/1.1 200');
    // Long enough on the wire that the connection ended before the client had it all.
    expect(outcome.bytes).toBeGreaterThan(15_000);
    expect(outcome.errors).toEqual([]);
    // Freed once the answer is taken: not seconds later at the intake's next look.
    expect(outcome.freedMs, line).toBeLessThan(1_000);
  },
  40_000,
);
