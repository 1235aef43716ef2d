import { existsSync } from 'node:fs';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { systemClock, type Clock } from '../../src/core/clock.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { realComponent } from '../helpers/real.js';
import { loggedInPage } from './ui-logged-in-page.js';
import { call, login, openWithReadsHeld, startUiSite, TOKENS, type UiSite } from './ui-site.js';

/**
 * A device's command in flight, accepted before the gateway's wall clock was set back, has an
 * accepted time ahead of the clock: its age cannot be told. The status page's devices table
 * gave it as "for 0ms" (the clamped age), where its lists of open commands and `sluicectl stuck`
 * say the age is unknown. Now the devices table says so too, from the `acceptedAheadMs` of the
 * device's `command`, and the page is sent the device again when the clock is set back.
 *
 * The real daemon and its status page over TLS in a real headless Chromium, sluice-sim over real
 * sockets. The command is written to the valve (its write in the simulator's write log) and its
 * reads held, so that no readback settles it; then the test sets the daemon's wall clock back
 * 5 minutes (SPEC §6: wall time may step), the clock the daemon is given being this process's
 * plus an offset the test sets. Ground truth: the command's accepted time in the journal, and
 * what the page shows.
 */

const CHROMIUM_PATHS = ['/usr/bin/chromium', '/usr/bin/chromium-browser'];
const chromiumPath =
  process.env.SLUICE_CHROMIUM ?? CHROMIUM_PATHS.find((path) => existsSync(path)) ?? null;
const real = realComponent(
  'Chromium',
  chromiumPath !== null && existsSync(chromiumPath),
  'apt-get install chromium, or SLUICE_CHROMIUM=/path/to/chromium',
);

const KEY = 'in-flight-ahead';
/** How far the daemon's wall clock is set back. */
const BACK_MS = 300_000;

/** Added to the daemon's wall time (its monotonic clock is left alone). */
let stepMs = 0;
const clock: Clock = { ...systemClock, now: () => Date.now() + stepMs };

let site: UiSite;
let browser: Browser;
let page: Page;

beforeAll(async () => {
  if (!real || chromiumPath === null) return;
  site = await startUiSite({ mqtt: false, opcua: false, clock });
  ({ browser, page } = await loggedInPage(site, chromiumPath));
}, 90_000);

afterAll(async () => {
  if (!real) return;
  await browser.close();
  await site.stop();
});

/** The drain valve's cell of the command in flight. */
const inFlightCell = (): Promise<string> =>
  page.locator('#devices tr[data-device="drain-valve"] td').nth(8).innerText({ timeout: 1_000 });

/** The command's accepted time (the daemon's wall time), as journaled. */
function acceptedAt(): number {
  const journal = SqliteJournal.open({ path: site.journalPath, readonly: true });
  try {
    const record = journal.findByKey(KEY)[0];
    if (record === undefined) throw new Error(`${KEY} is not journaled`);
    return record.acceptedAt;
  } finally {
    journal.close();
  }
}

const UNKNOWN = /for an unknown time \(accepted in (\d+)m(?:(\d+)s)?: clock set back\)/;

describe.runIf(real)("a device's command in flight, the gateway clock set back", () => {
  it('is shown in the devices table with its age unknown, not "for 0ms"', async () => {
    const { drain, writesBefore } = await openWithReadsHeld(site, KEY);
    expect(drain.writeLog.length).toBeGreaterThan(writesBefore);
    // Its age known while the clock is not stepped.
    await expect
      .poll(inFlightCell, { timeout: 10_000 })
      .toMatch(new RegExp(`${KEY} open dispatched\\s+for \\d`));

    stepMs = -BACK_MS;
    const accepted = acceptedAt();
    /** Seconds its accepted time lies ahead of the daemon's clock, at most and at least. */
    const aheadS = (): { most: number; least: number } => {
      const ahead = accepted - (Date.now() + stepMs);
      return { most: Math.ceil(ahead / 1000) + 1, least: Math.floor(ahead / 1000) - 5 };
    };
    const shownS = (text: string): number => {
      const m = UNKNOWN.exec(text);
      return m === null ? NaN : Number(m[1]) * 60 + Number(m[2] ?? 0);
    };
    // The page is sent the device again on the step.
    await expect.poll(inFlightCell, { timeout: 10_000 }).toMatch(UNKNOWN);
    const shown = await inFlightCell();
    expect(shown).toContain(KEY);
    expect(shownS(shown)).toBeLessThanOrEqual(aheadS().most);
    expect(shownS(shown)).toBeGreaterThanOrEqual(aheadS().least);

    // The API's document carries how far ahead it lies, and an age of 0.
    const { cookie } = await login(site, TOKENS.ops);
    const answer = await call(site, 'GET', '/ui/api/devices', { cookie });
    expect(answer.status, answer.body).toBe(200);
    const command = answer
      .json<{
        devices: {
          id: string;
          command: { key: string; ageMs: number; acceptedAheadMs: number | null } | null;
        }[];
      }>()
      .devices.find((d) => d.id === 'drain-valve')?.command;
    expect(command?.key).toBe(KEY);
    expect(command?.ageMs).toBe(0);
    expect(command?.acceptedAheadMs).toBeGreaterThan((aheadS().least - 1) * 1000);

    // A page loaded after the step reads the same from the document it fetches.
    await page.reload();
    await page.locator('#app').waitFor({ state: 'visible', timeout: 10_000 });
    await expect.poll(inFlightCell, { timeout: 10_000 }).toMatch(UNKNOWN);
    expect(await inFlightCell()).not.toMatch(/for \d+ms/);

    // The clock caught up again: its age is told once more.
    stepMs = 0;
    await expect
      .poll(inFlightCell, { timeout: 10_000 })
      .toMatch(new RegExp(`${KEY} open dispatched\\s+for \\d`));
    drain.clearFault('stall');
  }, 90_000);
});
