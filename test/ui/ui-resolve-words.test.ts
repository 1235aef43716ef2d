import { hostname } from 'node:os';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { sluicectlInProcess } from '../cli/helpers.js';
import { call, login, ORPHAN, startUiSite, TOKENS, type UiSite } from './ui-site.js';

/**
 * An operator's resolve journals who and why so that neither reads as the other
 * (resolve-detail.ts): `resolved by "<who>": "<reason>"; <note>`. Journaled bare, as
 * `resolved by <who>: <reason>; <note>` was, a reason holding ": " read as part of another
 * operator's name, and the retry check took such another operator's request for the first's
 * retry ('already resolved by this same request'). Real daemon, its status page over TLS, the
 * admin endpoint through sluicectl, sluice-sim; ground truth: the journal file, read through a
 * connection of the test's own.
 */

const HOST = hostname();
let site: UiSite;

beforeAll(async () => {
  site = await startUiSite({ mqtt: false, opcua: false, orphans: ['orphan-2'] });
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

const cli = (user: string, ...args: string[]) =>
  sluicectlInProcess(['--config', site.configPath, ...args], {
    env: { SUDO_USER: user, USER: 'root' },
    timeoutMs: 30_000,
  });

describe("an operator's resolve: who and why read apart", () => {
  it('from the status page: journaled quoted, shown so by the page, the API and sluicectl show', async () => {
    const ops = await login(site, TOKENS.ops);
    const reason =
      'seal "B" gone: shut by hand; nothing was written to the controller by the fitter\nlocked out';
    const by = 'ops (status page, 127.0.0.1)';
    const answer = await call(
      site,
      'POST',
      `/ui/api/commands/${ORPHAN.scope}/${ORPHAN.key}/resolve`,
      {
        cookie: ops.cookie,
        'x-csrf-token': ops.csrf,
        origin: site.origin,
        'content-type': 'application/json',
      },
      JSON.stringify({ as: 'failed', reason }),
    );
    expect(answer.status).toBe(200);
    const detail = `resolved by ${JSON.stringify(by)}: ${JSON.stringify(reason)}; nothing was written to the controller`;
    expect(onFile(ORPHAN.key)).toEqual({ state: 'failed', code: 'RESOLVED_BY_OPERATOR', detail });

    // The page's command: who and why apart.
    const page = await call(site, 'GET', `/ui/api/commands/${ORPHAN.scope}/${ORPHAN.key}`, {
      cookie: ops.cookie,
    });
    expect(page.status).toBe(200);
    expect(
      page.json<{ operator: { detail: string; resolve: unknown }[] }>().operator,
    ).toMatchObject([
      {
        detail: `RESOLVED_BY_OPERATOR: ${detail}`,
        resolve: { by, reason, note: 'nothing was written to the controller' },
      },
    ]);

    // The API: the issuer's GET returns the journaled words.
    const api = await call(site, 'GET', `/v1/commands/${ORPHAN.key}`, {
      authorization: `Bearer ${TOKENS.scada}`,
    });
    expect(api.status).toBe(200);
    expect(api.json<{ detail: string }>().detail).toBe(detail);

    // sluicectl show: one line, the reason's line break escaped, not a line of its own.
    const show = await cli('alice', 'show', ORPHAN.key);
    expect(show.code).toBe(0);
    const line = show.stdout.split('\n').find((l) => l.trimStart().startsWith('operator'));
    expect(line).toContain(detail.replace('\n', '\\n'));
  }, 30_000);

  it("another operator's resolve whose name and reason read alike is refused, not taken for a retry", async () => {
    const first = await cli(
      'alice',
      'resolve',
      '--as',
      'failed',
      '--reason',
      `bob@${HOST}: valve shut`,
      'orphan-2',
    );
    expect(first.code).toBe(0);
    expect(onFile('orphan-2').detail).toBe(
      `resolved by ${JSON.stringify(`alice@${HOST}`)}: ${JSON.stringify(`bob@${HOST}: valve shut`)}; nothing was written to the controller`,
    );
    // `alice@HOST: bob` at HOST with `valve shut`: the same words once joined bare.
    const other = await cli(
      `alice@${HOST}: bob`,
      'resolve',
      '--as',
      'failed',
      '--reason',
      'valve shut',
      'orphan-2',
    );
    expect(other.code).not.toBe(0);
    expect(other.stdout + other.stderr).not.toContain('already resolved by this same request');
    expect(other.stdout + other.stderr).toContain('already failed');
    // The very same request again is this resolve.
    const again = await cli(
      'alice',
      'resolve',
      '--as',
      'failed',
      '--reason',
      `bob@${HOST}: valve shut`,
      'orphan-2',
    );
    expect(again.code).toBe(0);
    expect(again.stdout).toContain('already resolved by this same request');
    const journal = SqliteJournal.open({ path: site.journalPath, readonly: true });
    try {
      const history = journal.history({ scope: ORPHAN.scope, key: 'orphan-2' });
      expect(history.filter((e) => e.to === 'failed')).toHaveLength(1);
    } finally {
      journal.close();
    }
  }, 30_000);
});
