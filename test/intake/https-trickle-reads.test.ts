import { afterAll, beforeAll, expect, it } from 'vitest';
import { tcpTableReads } from '../../src/intake/https-peer.js';
import {
  halfClosedClient,
  startShapedIntake,
  type ShapedIntake,
} from '../helpers/half-closed-client.js';
import { vethNamespaceAvailable } from '../helpers/veth-namespace.js';

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
 * its own (test/helpers/half-closed-client.ts), its link's MTU 222 bytes and its rate shaped
 * (tc tbf, 80 kbit/s) on the gateway's end: its /metrics answer (~20 KB) arrives over ~3 s, a
 * packet every ~25 ms. Ground truth: the
 * reads of /proc/self/net/tcp{,6} counted by the intake's own reader (https-peer.ts
 * tcpTableReads), and the client's own view: it is refused a second connection while its first
 * is kept (one per address) and accepted soon after it has taken the whole answer.
 *
 * Needs root and iproute2 (`ip netns`, `tc` with tbf): skipped without them.
 */

const canRun = vethNamespaceAvailable();

let site: ShapedIntake;

beforeAll(async () => {
  if (!canRun) return;
  // Small packets, slowly: each acknowledgement takes a little of the answer.
  site = await startShapedIntake('trickle', 't', 217, {
    mtu: 222,
    rate: '80kbit',
    burst: '400',
    latency: '10s',
  });
}, 60_000);

afterAll(async () => {
  if (!canRun) return;
  await site.stop();
});

it.skipIf(!canRun)(
  'a half-closed client trickling its answer costs a bounded number of reads of the kernel table',
  async () => {
    const readsBefore = tcpTableReads();
    const { outcome, line } = await halfClosedClient(site, 30_000);
    const reads = tcpTableReads() - readsBefore;
    const seen = `${line} reads ${String(reads)}`;
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
