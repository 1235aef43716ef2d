import { chromium, type Browser, type Page } from 'playwright-core';
import { isRoot } from '../helpers/real.js';
import { TOKENS, type UiSite } from './ui-site.js';

/**
 * Debian's Chromium (playwright-core, `executablePath`) on `site`'s status page, logged in with
 * the operator's token and showing the app: the page the browser tests read.
 */
export async function loggedInPage(
  site: UiSite,
  chromiumPath: string,
): Promise<{ browser: Browser; page: Page }> {
  const browser = await chromium.launch({
    executablePath: chromiumPath,
    // Chromium refuses to run as root inside its sandbox.
    args: isRoot ? ['--no-sandbox'] : [],
  });
  // The site's certificate is self-signed for 127.0.0.1.
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  await page.goto(`${site.origin}/ui/`, { timeout: 10_000 });
  await page.locator('#login').waitFor({ state: 'visible' });
  await page.fill('#token', TOKENS.ops);
  await page.click('#login-form button[type=submit]');
  await page.locator('#app').waitFor({ state: 'visible', timeout: 10_000 });
  return { browser, page };
}
