import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { holdThreadPool } from '../helpers/thread-pool.js';
import { call, login, ORPHAN, startUiSite, TOKENS, type UiSite } from './ui-site.js';

/**
 * The status page's Resolve while the journal cannot make the resolve durable, over real HTTPS
 * against the daemon (in this process, so that its disk can be held) and sluice-sim. The
 * resolve takes effect at once (the journal's connection holds the outcome); only its sync
 * waits. The page used to wait for that sync with no bound — a stalled disk left the operator's
 * request unanswered — and a sync that failed answered 503 for a resolve that had taken effect;
 * the operator's retry then heard ALREADY_SETTLED, as if someone else had ended the command.
 * Now it answers as sluicectl's resolve does (operator-resolve.ts). Ground truth: the journal
 * file, read through a connection of the test's own.
 */

let site: UiSite;

beforeAll(async () => {
  site = await startUiSite({ mqtt: false, opcua: false });
}, 60_000);

afterAll(async () => {
  await site.stop();
});

function onFile(key: string): { state: string; code: string | null; detail: string | null } {
  const journal = SqliteJournal.open({ path: site.journalPath, readonly: true });
  try {
    const r = journal.findByKey(key)[0]!;
    return { state: r.state, code: r.code, detail: r.detail };
  } finally {
    journal.close();
  }
}

describe('Resolve on the status page while the journal sync stalls', () => {
  it('answers within the bound that it took effect and is not on disk; the retry is this resolve', async () => {
    const ops = await login(site, TOKENS.ops);
    const own = {
      cookie: ops.cookie,
      'x-csrf-token': ops.csrf,
      origin: site.origin,
      'content-type': 'application/json',
    };
    const path = `/ui/api/commands/${ORPHAN.scope}/${ORPHAN.key}/resolve`;
    const reason = 'valve removed in 2025; closed by hand';
    const body = JSON.stringify({ as: 'failed', reason });
    expect(onFile(ORPHAN.key).state).toBe('accepted');

    // The journal's fdatasync runs on libuv's pool: held, it cannot return, as on a disk whose
    // flush stalls.
    const pool = holdThreadPool();
    let first: Awaited<ReturnType<typeof call>>;
    const started = Date.now();
    try {
      first = await call(site, 'POST', path, own, body);
      // It took effect: the journal holds it (committed, not yet synced).
      expect(onFile(ORPHAN.key)).toMatchObject({ state: 'failed', code: 'RESOLVED_BY_OPERATOR' });
    } finally {
      await pool.release();
    }
    const tookMs = Date.now() - started;
    expect(tookMs).toBeGreaterThanOrEqual(4_900);
    expect(tookMs).toBeLessThan(15_000);
    expect(first.status).toBe(503);
    const problem = first.json<{ code: string; detail: string; by: string; result: unknown }>();
    expect(problem).toMatchObject({
      code: 'JOURNAL_UNAVAILABLE',
      by: 'ops (status page, 127.0.0.1)',
      result: { key: ORPHAN.key, state: 'failed', code: 'RESOLVED_BY_OPERATOR' },
    });
    expect(problem.detail).toContain('the resolve took effect');
    expect(problem.detail).toContain("the journal's sync has not returned within 5 s");
    expect(problem.detail).toContain('Ask for the same resolve again');

    // The operator asks again: this very resolve, on disk now — not someone else's.
    const again = await call(site, 'POST', path, own, body);
    expect(again.status).toBe(200);
    expect(again.json()).toMatchObject({
      replayed: true,
      by: 'ops (status page, 127.0.0.1)',
      detail: expect.stringMatching(
        /^already resolved by this same request at \S+; it is on disk$/,
      ) as unknown,
      result: { state: 'failed', code: 'RESOLVED_BY_OPERATOR' },
    });

    // Another reason is another resolve: refused, and the refusal says whose and why.
    const other = await call(
      site,
      'POST',
      path,
      own,
      JSON.stringify({ as: 'failed', reason: 'twice' }),
    );
    expect(other.status).toBe(409);
    expect(other.json()).toMatchObject({
      code: 'ALREADY_SETTLED',
      detail: expect.stringContaining(
        `resolved by "ops (status page, 127.0.0.1)": ${JSON.stringify(reason)}`,
      ) as unknown,
    });

    // One resolve in the history, on disk.
    const journal = SqliteJournal.open({ path: site.journalPath, readonly: true });
    try {
      const history = journal.history({ scope: ORPHAN.scope, key: ORPHAN.key });
      expect(history.filter((e) => e.to === 'failed')).toHaveLength(1);
    } finally {
      journal.close();
    }
  }, 90_000);
});
