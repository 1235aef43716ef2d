import { existsSync } from 'node:fs';
import {
  chromium,
  type Browser,
  type BrowserContext,
  type Page,
  type Route,
} from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { until } from '../helpers/mosquitto.js';
import { isRoot, realComponent } from '../helpers/real.js';
import { call, startUiSite, TOKENS, type UiSite } from './ui-site.js';

/**
 * How the status page keeps its tables up to date, in Debian's Chromium against the daemon and
 * sluice-sim: an answer to an older list request that arrives after a newer one (a slow
 * network, a filter changed twice) does not put the older list back.
 *
 * The page's answers come from the daemon; the test only holds one back in the browser (as a
 * slow network would). When the page has read an answer is known from the page itself: a
 * script added before the page's own records each response body it read, once the page's
 * handlers of that body have run.
 */

const CHROMIUM_PATHS = ['/usr/bin/chromium', '/usr/bin/chromium-browser'];
const chromiumPath =
  process.env.SLUICE_CHROMIUM ?? CHROMIUM_PATHS.find((path) => existsSync(path)) ?? null;
const real = realComponent(
  'Chromium',
  chromiumPath !== null && existsSync(chromiumPath),
  'apt-get install chromium, or SLUICE_CHROMIUM=/path/to/chromium',
);

/** Records, in `window.answered`, the URL of each response whose body the page has read. */
const RECORD_ANSWERS = `
  window.answered = [];
  (function () {
    var text = Response.prototype.text;
    Response.prototype.text = function () {
      var url = this.url;
      var read = text.call(this);
      // A task after the body is read: the page's own handlers of it (microtasks) have run.
      read.then(function () {
        setTimeout(function () { window.answered.push(url); }, 0);
      });
      return read;
    };
  })();
`;

let site: UiSite;
let browser: Browser;
let context: BrowserContext;
let page: Page;
const problems: string[] = [];

beforeAll(async () => {
  if (!real || chromiumPath === null) return;
  site = await startUiSite({ mqtt: false, opcua: false });
  // One settled command on each valve, before the page opens.
  await send('upd-drain', 'drain-valve', 'open');
  await send('upd-inlet', 'inlet-valve', 'open');
  browser = await chromium.launch({
    executablePath: chromiumPath,
    args: isRoot ? ['--no-sandbox'] : [],
  });
  context = await browser.newContext({ ignoreHTTPSErrors: true });
  page = await context.newPage();
  await page.addInitScript(RECORD_ANSWERS);
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  await page.goto(`${site.origin}/ui/`, { timeout: 10_000 });
  await page.locator('#login').waitFor({ state: 'visible' });
  await page.fill('#token', TOKENS.ops);
  await page.click('#login-form button[type=submit]');
  await page.locator('#app').waitFor({ state: 'visible', timeout: 10_000 });
  await until(
    async () => ((await page.locator('#stream').innerText()) === 'Live' ? true : undefined),
    10_000,
    'the page live',
  );
}, 120_000);

afterAll(async () => {
  if (!real) return;
  await browser.close();
  await site.stop();
});

/** Sends a command over HTTPS and waits until the journal has it confirmed. */
async function send(key: string, device: string, action: string): Promise<void> {
  const sent = await call(
    site,
    'POST',
    '/v1/commands',
    {
      authorization: `Bearer ${TOKENS.ops}`,
      'content-type': 'application/json',
      'idempotency-key': key,
    },
    JSON.stringify({ device, action }),
  );
  expect(sent.status, sent.body).toBe(200);
  await until(
    async () => {
      const shown = await call(site, 'GET', `/v1/commands/${key}`, {
        authorization: `Bearer ${TOKENS.ops}`,
      });
      return shown.json<{ state: string }>().state === 'confirmed' ? true : undefined;
    },
    20_000,
    `${key} confirmed`,
  );
}

/** The keys in the recent commands table, top to bottom. */
function recentKeys(): Promise<(string | null)[]> {
  return page.evaluate<(string | null)[]>(
    "Array.from(document.querySelectorAll('#recent-commands tbody tr'), (r) => r.getAttribute('data-key'))",
  );
}

/** Waits until the page has read (and handled) the answer from a URL ending in `suffix`. */
async function pageRead(suffix: string): Promise<void> {
  await expect
    .poll(
      () =>
        page.evaluate<boolean>(
          `window.answered.some((url) => url.endsWith(${JSON.stringify(suffix)}))`,
        ),
      { timeout: 10_000 },
    )
    .toBe(true);
}

describe.runIf(real)('the status page keeps its tables up to date', () => {
  it('an older list answer that arrives after a newer one is not shown', async () => {
    await expect.poll(recentKeys, { timeout: 10_000 }).toEqual(['upd-inlet', 'upd-drain']);
    // The answer for drain-valve is fetched from the daemon, then held back in the browser.
    let fetched!: () => void;
    const answered = new Promise<void>((resolve) => (fetched = resolve));
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    const hold = async (route: Route): Promise<void> => {
      const response = await route.fetch();
      fetched();
      await released;
      await route.fulfill({ response });
    };
    await page.route('**/ui/api/commands?device=drain-valve', hold);
    await page.selectOption('#filter-device', 'drain-valve');
    await answered;
    // The operator changes the filter again before that answer arrives; this one comes at once.
    await page.selectOption('#filter-device', 'inlet-valve');
    await pageRead('/ui/api/commands?device=inlet-valve');
    expect(await recentKeys()).toEqual(['upd-inlet']);
    // Now the older answer arrives.
    release();
    await pageRead('/ui/api/commands?device=drain-valve');
    expect(await page.inputValue('#filter-device')).toBe('inlet-valve');
    expect(await recentKeys()).toEqual(['upd-inlet']);
    await page.unroute('**/ui/api/commands?device=drain-valve', hold);
    await page.selectOption('#filter-device', '');
    await expect.poll(recentKeys, { timeout: 10_000 }).toEqual(['upd-inlet', 'upd-drain']);
    expect(problems).toEqual([]);
  }, 60_000);
});
