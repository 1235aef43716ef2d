import { existsSync } from 'node:fs';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sluicectl } from '../cli/helpers.js';
import { realComponent } from '../helpers/real.js';
import { loggedInPage } from './ui-logged-in-page.js';
import { call, login, ORPHAN, startUiSite, TOKENS, type UiSite } from './ui-site.js';

/**
 * An open command accepted before the gateway's wall clock was set back has an accepted time
 * ahead of the clock: its age cannot be told. `sluicectl stuck` and `show` say so; the status
 * page gave it as "0ms" in its list of open commands and "(0ms open)" on its command page, a
 * wrong age told to an operator deciding whether it is stuck. Now the page says it in the words
 * of stuck and show, from the `acceptedAheadMs` its API carries.
 *
 * The real daemon and its status page over TLS in a real headless Chromium, sluice-sim over real
 * sockets, sluicectl (a process) on the same site file; the journal seeded before the start with
 * an open command of a device no longer configured (nothing runs it: it stays open) accepted 5
 * minutes after the start: the clock step is the journal's time ahead of the daemon's clock.
 * Ground truth: the seeded accepted time, and what the page shows.
 */

const CHROMIUM_PATHS = ['/usr/bin/chromium', '/usr/bin/chromium-browser'];
const chromiumPath =
  process.env.SLUICE_CHROMIUM ?? CHROMIUM_PATHS.find((path) => existsSync(path)) ?? null;
const real = realComponent(
  'Chromium',
  chromiumPath !== null && existsSync(chromiumPath),
  'apt-get install chromium, or SLUICE_CHROMIUM=/path/to/chromium',
);

const AHEAD = 'ahead-of-clock';
/** How far its accepted time lies ahead of the daemon's start. */
const AHEAD_MS = 300_000;

let site: UiSite;
let browser: Browser;
let page: Page;
let seededAfter: number;

beforeAll(async () => {
  if (!real || chromiumPath === null) return;
  seededAfter = Date.now();
  // Accepted AHEAD_MS after the start, its deadline 30 s after that: not stuck while the test runs.
  site = await startUiSite({
    mqtt: false,
    opcua: false,
    laterOrphans: [{ key: AHEAD, acceptedInMs: AHEAD_MS, inMs: AHEAD_MS + 30_000 }],
  });
  ({ browser, page } = await loggedInPage(site, chromiumPath));
}, 90_000);

afterAll(async () => {
  if (!real) return;
  await browser.close();
  await site.stop();
});

/** Seconds its accepted time lies ahead of now, at most (seeded no earlier than seededAfter). */
const aheadAtLeastS = (): number => Math.floor((seededAfter + AHEAD_MS - Date.now()) / 1000) - 1;

describe.runIf(real)(
  'an open command accepted ahead of the gateway clock, on the status page',
  () => {
    it('is listed with its age unknown, as sluicectl stuck says it, not "0ms"', async () => {
      const { cookie } = await login(site, TOKENS.ops);
      const answer = await call(site, 'GET', '/ui/api/commands', { cookie });
      expect(answer.status, answer.body).toBe(200);
      const listed = answer
        .json<{ open: { key: string; acceptedAt: string; acceptedAheadMs: number | null }[] }>()
        .open.find((c) => c.key === AHEAD);
      expect(Date.parse(listed?.acceptedAt ?? '')).toBeGreaterThanOrEqual(seededAfter + AHEAD_MS);
      expect(listed?.acceptedAheadMs).toBeGreaterThan(aheadAtLeastS() * 1000);

      const ageCell = page.locator(`#open-commands tr[data-key="${AHEAD}"] td`).nth(5);
      await ageCell.waitFor({ state: 'visible', timeout: 10_000 });
      const age = await ageCell.innerText();
      const shown = /^unknown \(accepted in (\d+)m(\d+)?s?: clock set back\)$/.exec(age);
      expect(shown, age).not.toBeNull();
      const seconds = Number(shown?.[1]) * 60 + Number(shown?.[2] ?? 0);
      expect(seconds).toBeGreaterThanOrEqual(aheadAtLeastS() - 5);
      expect(seconds).toBeLessThanOrEqual(AHEAD_MS / 1000);

      const stuck = await sluicectl(['--config', site.configPath, '--no-color', 'stuck'], {
        timeoutMs: 30_000,
      });
      const row = stuck.stdout.split('\n').find((l) => l.startsWith(`${AHEAD} `));
      expect(row, stuck.stdout).toMatch(/ unknown \(accepted in \d+m(\d+s)?: clock set back\) /);
    }, 60_000);

    it('has its command page say its open time is unknown, as sluicectl show does, not "(0ms open)"', async () => {
      await page.click(`#open-commands tr[data-key="${AHEAD}"] a`);
      await page.locator('#command').waitFor({ state: 'visible' });
      const words =
        /still accepted: not settled yet \(open for an unknown time: accepted \d+m(\d+s)? ahead of the gateway's clock, which was set back since\)/;
      await expect
        .poll(() => page.locator('#command-fields').innerText(), { timeout: 5_000 })
        .toMatch(words);
      expect(await page.locator('#command-fields').innerText()).not.toContain('0ms open');
      const show = await sluicectl(
        ['--config', site.configPath, '--no-color', 'show', '--scope', ORPHAN.scope, AHEAD],
        { timeoutMs: 30_000 },
      );
      expect(show.code, show.stderr).toBe(0);
      expect(show.stdout).toMatch(words);
    }, 60_000);
  },
);
