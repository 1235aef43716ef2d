import { existsSync } from 'node:fs';
import type { Browser, Page, Route } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { until } from '../helpers/mosquitto.js';
import { realComponent } from '../helpers/real.js';
import { loggedInPage } from './ui-logged-in-page.js';
import { call, login, startUiSite, TOKENS, type UiSite } from './ui-site.js';

/**
 * How the status page keeps its tables up to date, in Debian's Chromium against the daemon and
 * sluice-sim: an answer to an older list request that arrives after a newer one (a slow
 * network, a filter changed twice) does not put the older list back; text the operator selected
 * in a table (a key, to copy it) stays selected while the tables are drawn again every second
 * and while other rows and cells change, and those changes still show; the commands keyed `.`
and `..` (legal keys) open from the page, which a browser would otherwise resolve as path
segments.
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
let page: Page;
const problems: string[] = [];

beforeAll(async () => {
  if (!real || chromiumPath === null) return;
  // Nothing here looks at a valve in flight: each command is waited for until it settles.
  site = await startUiSite({ mqtt: false, opcua: false, drainTravelMs: 800 });
  // One settled command on each valve, before the page opens.
  await send('upd-drain', 'drain-valve', 'open');
  await send('upd-inlet', 'inlet-valve', 'open');
  ({ browser, page } = await loggedInPage(site, chromiumPath, {
    prepare: async (p) => {
      await p.addInitScript(RECORD_ANSWERS);
      p.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
    },
  }));
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

/** Selects the text of the element `selector` names, as an operator's drag would. */
async function select(selector: string): Promise<void> {
  await page.evaluate(`(() => {
    const range = document.createRange();
    range.selectNodeContents(document.querySelector(${JSON.stringify(selector)}));
    getSelection().removeAllRanges();
    getSelection().addRange(range);
  })()`);
}

function selected(): Promise<string> {
  return page.evaluate<string>('getSelection().toString()');
}

function cell(selector: string, index: number): Promise<string> {
  return page.locator(`${selector} td`).nth(index).innerText();
}

/** Waits until the text of a cell that changes with time alone has changed twice. */
async function drawnTwice(selector: string, index: number): Promise<void> {
  for (let i = 0; i < 2; i++) {
    const before = await cell(selector, index);
    await expect.poll(() => cell(selector, index), { timeout: 10_000 }).not.toBe(before);
  }
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

  it('a selection in a table survives its updates, and changes still show', async () => {
    await expect.poll(recentKeys, { timeout: 10_000 }).toEqual(['upd-inlet', 'upd-drain']);
    const row = '#recent-commands tr[data-key="upd-drain"]';
    await select(`${row} a`);
    expect(await selected()).toBe('upd-drain');
    // The list is drawn again every second (its Age column moves on; nothing else changed).
    await drawnTwice(row, 8);
    expect(await selected()).toBe('upd-drain');
    // A new command comes in above it.
    await send('upd-drain-close', 'drain-valve', 'close');
    await expect
      .poll(recentKeys, { timeout: 10_000 })
      .toEqual(['upd-drain-close', 'upd-inlet', 'upd-drain']);
    expect(
      await page.locator('#recent-commands tr[data-key="upd-drain-close"]').innerText(),
    ).toMatch(/drain-valve\s+close\s+confirmed\s+OK/);
    expect(await selected()).toBe('upd-drain');

    // A device's id, while its row changes: the valve travels open.
    const device = '#devices tr[data-device="drain-valve"]';
    await expect.poll(() => cell(device, 1), { timeout: 10_000 }).toBe('CLOSED');
    await select(`${device} strong`);
    expect(await selected()).toBe('drain-valve');
    await drawnTwice(device, 5);
    expect(await selected()).toBe('drain-valve');
    await send('upd-drain-open', 'drain-valve', 'open');
    await expect.poll(() => cell(device, 1), { timeout: 10_000 }).toBe('OPEN');
    expect((await cell(device, 2)).trim()).toBe('100 %');
    expect(await selected()).toBe('drain-valve');
    expect(problems).toEqual([]);
  }, 60_000);

  it('opens the commands keyed . and ..', async () => {
    await send('.', 'drain-valve', 'close');
    await send('..', 'drain-valve', 'open');
    await expect
      .poll(async () => (await recentKeys()).slice(0, 2), { timeout: 10_000 })
      .toEqual(['..', '.']);
    for (const [key, action] of [
      ['..', 'open'],
      ['.', 'close'],
    ] as const) {
      await page.click(`#recent-commands tr[data-key="${key}"] a`);
      await page.locator('#command').waitFor({ state: 'visible' });
      expect(await page.locator('#command-title').innerText()).toBe(`Command ${key} (scope ops)`);
      await expect
        .poll(() => page.locator('#command-fields').innerText(), { timeout: 5_000 })
        .toMatch(
          new RegExp(`device\\s+drain-valve\\s+action\\s+${action}\\s+state\\s+confirmed OK`),
        );
      expect(await page.locator('#command-result').innerText()).toContain(`"key": "${key}"`);
      await page.click('#command a[href="#"]');
      await page.locator('#overview').waitFor({ state: 'visible' });
    }

    // The actions name the command the same way; the path form stays for other clients.
    const session = await login(site, TOKENS.ops);
    const reverify = await call(
      site,
      'POST',
      '/ui/api/command/reverify?scope=ops&key=..',
      {
        cookie: session.cookie,
        origin: site.origin,
        'x-csrf-token': session.csrf,
        'content-type': 'application/json',
      },
      '{}',
    );
    expect(reverify.json()).toMatchObject({ code: 'ALREADY_SETTLED' });
    const byPath = await call(site, 'GET', '/ui/api/commands/ops/upd-drain', {
      cookie: session.cookie,
    });
    expect(byPath.json()).toMatchObject({ key: 'upd-drain', state: 'confirmed' });
    expect(problems).toEqual([]);
  }, 60_000);
});
