import {
  chromium,
  type Browser,
  type BrowserContext,
  type BrowserContextOptions,
  type Page,
} from 'playwright-core';
import { isRoot } from '../helpers/real.js';
import { TOKENS, type UiSite } from './ui-site.js';

/**
 * Debian's Chromium (playwright-core, `executablePath`) with one browser context (`options`
 * added to it), which takes the site's certificate: it is self-signed for 127.0.0.1.
 */
export async function launchChromium(
  chromiumPath: string,
  options: BrowserContextOptions = {},
): Promise<{ browser: Browser; context: BrowserContext }> {
  const browser = await chromium.launch({
    executablePath: chromiumPath,
    // Chromium refuses to run as root inside its sandbox.
    args: isRoot ? ['--no-sandbox'] : [],
  });
  const context = await browser.newContext({ ignoreHTTPSErrors: true, ...options });
  return { browser, context };
}

/** Logs in a page that shows its login, as a person does (the operator's token unless given). */
export async function logIn(page: Page, token: string = TOKENS.ops): Promise<void> {
  await page.locator('#login').waitFor({ state: 'visible' });
  await page.fill('#token', token);
  await page.click('#login-form button[type=submit]');
  await page.locator('#app').waitFor({ state: 'visible', timeout: 10_000 });
}

export interface LoggedInPageOptions {
  /** The identity's token: the operator's unless given. */
  readonly token?: string;
  /** Done to the page before it loads: a listener, an init script. */
  readonly prepare?: (page: Page) => void | Promise<void>;
}

/**
 * Debian's Chromium on `site`'s status page (its origin), logged in and showing the app: the
 * page the browser tests read.
 */
export async function loggedInPage(
  site: Pick<UiSite, 'origin'>,
  chromiumPath: string,
  options: LoggedInPageOptions = {},
): Promise<{ browser: Browser; context: BrowserContext; page: Page }> {
  const { browser, context } = await launchChromium(chromiumPath);
  const page = await context.newPage();
  await options.prepare?.(page);
  await page.goto(`${site.origin}/ui/`, { timeout: 10_000 });
  await logIn(page, options.token);
  return { browser, context, page };
}
