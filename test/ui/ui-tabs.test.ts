import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { existsSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { realComponent } from '../helpers/real.js';
import { launchChromium, logIn } from './ui-logged-in-page.js';
import { call, ORPHAN, startUiSite, TOKENS, type UiSite } from './ui-site.js';

/**
 * Many pages of the status page open in one browser, in Debian's Chromium against the daemon
 * and sluice-sim. A browser opens at most six HTTP/1.1 connections to a host, and an event
 * stream holds one for as long as its page is open: with a stream per page, the sixth page
 * never loaded and every page's requests — a resolve among them — waited for ever. The pages
 * share one stream: eight pages load, all live, the daemon holds one stream (counted from the
 * server's own requests), a change shows on every page, the last page resolves a command, and
 * when the page holding the stream closes another takes it over.
 */

const CHROMIUM_PATHS = ['/usr/bin/chromium', '/usr/bin/chromium-browser'];
const chromiumPath =
  process.env.SLUICE_CHROMIUM ?? CHROMIUM_PATHS.find((path) => existsSync(path)) ?? null;
const real = realComponent(
  'Chromium',
  chromiumPath !== null && existsSync(chromiumPath),
  'apt-get install chromium, or SLUICE_CHROMIUM=/path/to/chromium',
);

let site: UiSite;
let browser: Browser;
let context: BrowserContext;
/** The event streams the daemon has open now: its own responses to /ui/api/events. */
const streams = new Set<ServerResponse>();
const onRequest = (message: unknown): void => {
  const { request, response } = message as { request: IncomingMessage; response: ServerResponse };
  if (request.url !== '/ui/api/events') return;
  streams.add(response);
  response.once('close', () => streams.delete(response));
};
const problems: string[] = [];

beforeAll(async () => {
  if (!real || chromiumPath === null) return;
  subscribe('http.server.request.start', onRequest);
  // The pages are looked at once drain-valve has arrived, never while it travels.
  site = await startUiSite({ mqtt: false, opcua: false, drainTravelMs: 800 });
  ({ browser, context } = await launchChromium(chromiumPath));
}, 90_000);

afterAll(async () => {
  if (!real) return;
  unsubscribe('http.server.request.start', onRequest);
  await browser.close();
  await site.stop();
});

async function newPage(): Promise<Page> {
  const page = await context.newPage();
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  await page.goto(`${site.origin}/ui/`, { timeout: 10_000 });
  return page;
}

async function live(page: Page): Promise<void> {
  await page.locator('#app').waitFor({ state: 'visible', timeout: 10_000 });
  await expect.poll(() => page.locator('#stream').innerText(), { timeout: 10_000 }).toBe('Live');
  await expect.poll(() => page.locator('#devices tbody tr').count(), { timeout: 10_000 }).toBe(2);
}

function drainValve(page: Page): Promise<string> {
  return page.locator('#devices tr[data-device="drain-valve"]').innerText();
}

describe.runIf(real)('many pages in one browser', () => {
  it('share one event stream: all load and stay live, act, and survive the holder closing', async () => {
    const first = await newPage();
    await logIn(first);
    await live(first);
    const pages = [first];
    // Past the six connections a browser opens to one host.
    for (let i = 1; i < 8; i++) {
      const page = await newPage();
      await live(page);
      pages.push(page);
    }
    expect(streams.size).toBe(1);

    // A change reaches every page.
    const opened = await call(
      site,
      'POST',
      '/v1/commands',
      {
        authorization: `Bearer ${TOKENS.ops}`,
        'content-type': 'application/json',
        'idempotency-key': 'tabs-open',
      },
      JSON.stringify({ device: 'drain-valve', action: 'open' }),
    );
    expect(opened.status).toBe(200);
    for (const page of pages) {
      await expect.poll(() => drainValve(page), { timeout: 10_000 }).toMatch(/OPEN\s+100 %/);
      await expect
        .poll(() => page.locator('#recent-commands tr[data-key="tabs-open"]').count(), {
          timeout: 10_000,
        })
        .toBe(1);
    }

    // The last page's requests are not starved: it resolves the stuck orphan.
    const last = pages[pages.length - 1]!;
    await last.goto(`${site.origin}/ui/#/command/${ORPHAN.scope}/${ORPHAN.key}`);
    await last.locator('#command-actions').waitFor({ state: 'visible', timeout: 10_000 });
    await last.fill('#reason', 'valve removed; checked by hand');
    await last.click('#resolve-form button[type=submit]');
    await expect
      .poll(() => last.locator('#action-result').innerText(), { timeout: 10_000 })
      .toMatch(/^RESOLVED by ops \(status page, 127\.0\.0\.1\): failed RESOLVED_BY_OPERATOR/);
    const audited = await call(site, 'GET', `/v1/commands/${ORPHAN.key}`, {
      authorization: `Bearer ${TOKENS.scada}`,
    });
    expect(audited.json()).toMatchObject({ state: 'failed', code: 'RESOLVED_BY_OPERATOR' });

    // The page holding the stream goes: another takes it over, and the rest stay live.
    await first.close();
    const rest = pages.slice(1);
    await expect.poll(() => streams.size, { timeout: 10_000 }).toBe(1);
    const closed = await call(
      site,
      'POST',
      '/v1/commands',
      {
        authorization: `Bearer ${TOKENS.ops}`,
        'content-type': 'application/json',
        'idempotency-key': 'tabs-close',
      },
      JSON.stringify({ device: 'drain-valve', action: 'close' }),
    );
    expect(closed.status).toBe(200);
    for (const page of rest) {
      await expect.poll(() => drainValve(page), { timeout: 10_000 }).toMatch(/CLOSED\s+0 %/);
      expect(await page.locator('#stream').innerText()).toBe('Live');
    }
    expect(streams.size).toBe(1);

    // Logging out on one page ends the session on all of them.
    await rest[0]!.click('#logout');
    for (const page of rest) {
      await page.locator('#login').waitFor({ state: 'visible', timeout: 10_000 });
    }
    await expect.poll(() => streams.size, { timeout: 10_000 }).toBe(0);
    expect(problems).toEqual([]);
  }, 150_000);
});
