import { existsSync } from 'node:fs';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { lockHolder } from '../helpers/journal-lock.js';
import { until } from '../helpers/mosquitto.js';
import { realComponent } from '../helpers/real.js';
import { loggedInPage } from './ui-logged-in-page.js';
import { call, login, ORPHAN, startUiSite, TOKENS, type UiSite } from './ui-site.js';

/**
 * The status page says when the journal is the cause: while it is unavailable, the gateway band
 * shows UNAVAILABLE with /readyz's words for why, and each open command's why begins with them;
 * both clear once the journal works again. The page showed stuck commands and a journal size,
 * and nowhere that every command was refused, while /readyz and the status line said it.
 *
 * The real daemon and its status page over TLS in a real headless Chromium, sluice-sim over real
 * sockets, the real journal, its write lock held by another process (test/helpers/journal-lock.ts:
 * a sqlite3 shell or a backup in the field); the journal seeded before the start with a stuck
 * command of a device no longer configured. Ground truth: the journal file (no row for a
 * command refused meanwhile, one once the lock is let go), /readyz, and what the page shows.
 */

const CHROMIUM_PATHS = ['/usr/bin/chromium', '/usr/bin/chromium-browser'];
const chromiumPath =
  process.env.SLUICE_CHROMIUM ?? CHROMIUM_PATHS.find((path) => existsSync(path)) ?? null;
const real = realComponent(
  'Chromium',
  chromiumPath !== null && existsSync(chromiumPath),
  'apt-get install chromium, or SLUICE_CHROMIUM=/path/to/chromium',
);

/** /readyz's words for the lock, whichever write met it first. */
const LOCKED =
  /journal unavailable \((?:check|claim|commit)\): SQLITE_BUSY: another program holds the write lock of /;

let site: UiSite;
let browser: Browser;
let page: Page;

beforeAll(async () => {
  if (!real || chromiumPath === null) return;
  site = await startUiSite({ mqtt: false, opcua: false, journalBusyTimeoutMs: 300 });
  ({ browser, page } = await loggedInPage(site, chromiumPath));
}, 90_000);

afterAll(async () => {
  if (!real) return;
  await browser.close();
  await site.stop();
});

const band = (): Promise<string> => page.locator('#gateway').innerText({ timeout: 1_000 });
const row = (key: string): Promise<string> =>
  page.locator(`#open-commands tr[data-key="${key}"]`).innerText({ timeout: 1_000 });

function journaled(key: string): boolean {
  const journal = SqliteJournal.open({ path: site.journalPath, readonly: true });
  try {
    return journal.findByKey(key).length > 0;
  } finally {
    journal.close();
  }
}

function post(key: string): ReturnType<typeof call> {
  return call(
    site,
    'POST',
    '/v1/commands',
    {
      authorization: `Bearer ${TOKENS.scada}`,
      'idempotency-key': key,
      'content-type': 'application/json',
      prefer: 'respond-async',
    },
    JSON.stringify({ device: 'drain-valve', action: 'open' }),
  );
}

describe.runIf(real)('the status page, the journal locked by another program', () => {
  it('says the journal is unavailable, and why, in its band and its open commands', async () => {
    await expect.poll(() => row(ORPHAN.key), { timeout: 10_000 }).toMatch(/STUCK/);
    expect(await band()).toMatch(/Journal\s+\d/);
    const { cookie } = await login(site, TOKENS.ops);
    const gateway = async (): Promise<{ bytes: number | null; unavailable: string | null }> =>
      (await call(site, 'GET', '/ui/api/gateway', { cookie })).json<{
        journal: { bytes: number | null; unavailable: string | null };
      }>().journal;

    const lock = await lockHolder(site.journalPath);
    try {
      await lock.hold(60_000);
      // Ground truth: a command is refused, and the journal has no row for it.
      const refused = await post('locked-1');
      expect(refused.status, refused.body).toBe(503);
      expect(journaled('locked-1')).toBe(false);

      // The page's band, the why of its stuck command (fetched again on the stream's cue) and
      // its gateway document say it, in /readyz's words.
      await expect
        .poll(band, { timeout: 5_000 })
        .toMatch(/Journal\s+UNAVAILABLE journal unavailable/);
      expect(await band()).toMatch(LOCKED);
      await expect.poll(() => row(ORPHAN.key), { timeout: 5_000 }).toMatch(LOCKED);
      expect(await row(ORPHAN.key)).toMatch(/STUCK/);
      expect((await gateway()).unavailable).toMatch(LOCKED);
      const ready = await call(site, 'GET', '/readyz');
      const journal = ready.json<{ checks: { journal: { ok: boolean; detail: string } } }>().checks
        .journal;
      expect(journal.ok).toBe(false);
      expect(journal.detail).toMatch(LOCKED);
    } finally {
      lock.close();
    }

    // Let go: the band and the why clear, and the next command is journaled.
    await expect.poll(band, { timeout: 10_000 }).not.toMatch(/UNAVAILABLE/);
    expect((await gateway()).unavailable).toBeNull();
    await expect.poll(() => row(ORPHAN.key), { timeout: 5_000 }).not.toMatch(/journal unavailable/);
    const taken = await post('after-1');
    expect(taken.status, taken.body).toBe(202);
    await until(() => (journaled('after-1') ? true : undefined), 5_000, 'after-1 journaled');
  }, 90_000);
});
