import { existsSync } from 'node:fs';
import type { ClientRequest } from 'node:http';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  MAX_STREAMS,
  MAX_STREAMS_PER_IDENTITY,
  MAX_STREAMS_PER_SESSION,
} from '../../src/intake/ui-events.js';
import { realComponent } from '../helpers/real.js';
import { loggedInPage } from './ui-logged-in-page.js';
import { call, login, requestEvents, startUiSite, TOKENS, type UiSite } from './ui-site.js';

/**
 * Event streams are counted per identity too, against the daemon over TLS and sluice-sim: one
 * identity that logs in again and again (a leaked or misbehaving token, a browser without Web
 * Locks left with many pages open), each login a session of its own at its four streams, is
 * refused once it holds its share, and another identity's page still goes live. With a limit per
 * session and one for all, that identity took every stream of the daemon. The page of the
 * refused identity, in a real headless Chromium, says why it is not live (an EventSource sees
 * nothing of a refusal but an error) and goes live once one of the identity's streams closes.
 * Ground truth: what the streams' clients and the browser received.
 */

const CHROMIUM_PATHS = ['/usr/bin/chromium', '/usr/bin/chromium-browser'];
const chromiumPath =
  process.env.SLUICE_CHROMIUM ?? CHROMIUM_PATHS.find((path) => existsSync(path)) ?? null;
const browserReal = realComponent(
  'Chromium',
  chromiumPath !== null && existsSync(chromiumPath),
  'apt-get install chromium, or SLUICE_CHROMIUM=/path/to/chromium',
);

let site: UiSite;
let browser: Browser | undefined;
const open: ClientRequest[] = [];

beforeAll(async () => {
  site = await startUiSite({ mqtt: false, opcua: false });
}, 90_000);

afterAll(async () => {
  for (const req of open) req.destroy();
  await browser?.close();
  await site.stop();
});

interface Opened {
  readonly status: number;
  /** The problem document of a refusal; for a stream, its first events. */
  readonly body: string;
  readonly req: ClientRequest;
}

/** Asks for an event stream; a stream is kept open, its first devices event read. */
function openStream(cookie: string): Promise<Opened> {
  return new Promise((resolve, reject) => {
    const req = requestEvents(site, cookie, (res) => {
      const status = res.statusCode ?? 0;
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        text += chunk;
        if (status === 200 && text.includes('event: devices\n')) {
          resolve({ status, body: text, req });
        }
      });
      res.on('end', () => {
        resolve({ status, body: text, req });
      });
    });
    req.once('error', reject);
    open.push(req);
  });
}

/** The identity's streams the first test opened, held by the second. */
const held: Opened[] = [];
const IDENTITY_REFUSAL = `identity ops has ${MAX_STREAMS_PER_IDENTITY} event streams open`;

describe("one identity's event streams", () => {
  it('an identity at its limit is refused in a new session too, and another identity still goes live', async () => {
    expect(MAX_STREAMS_PER_IDENTITY).toBeLessThan(MAX_STREAMS);
    // Sessions enough to pass the identity's limit at their own four each.
    const sessions = Math.ceil(MAX_STREAMS_PER_IDENTITY / MAX_STREAMS_PER_SESSION) + 1;
    const refused: Opened[] = [];
    for (let s = 0; s < sessions; s++) {
      const { cookie, answer } = await login(site, TOKENS.ops);
      expect(answer.status).toBe(200);
      for (let i = 0; i < MAX_STREAMS_PER_SESSION; i++) {
        const opened = await openStream(cookie);
        if (opened.status === 200) held.push(opened);
        else refused.push(opened);
      }
    }
    expect(held).toHaveLength(MAX_STREAMS_PER_IDENTITY);
    expect(refused).toHaveLength(sessions * MAX_STREAMS_PER_SESSION - MAX_STREAMS_PER_IDENTITY);
    for (const r of refused) {
      expect(r.status).toBe(503);
      expect(JSON.parse(r.body)).toMatchObject({
        code: 'TOO_MANY_STREAMS',
        detail: expect.stringContaining(IDENTITY_REFUSAL) as unknown,
      });
    }

    // What the page asks when its stream failed: the same refusal, and room for another identity.
    const again = await login(site, TOKENS.ops);
    const admission = await call(site, 'GET', '/ui/api/events/admission', { cookie: again.cookie });
    expect(admission.status).toBe(503);
    expect(admission.headers['retry-after']).toBe('10');
    expect(admission.json()).toMatchObject({
      code: 'TOO_MANY_STREAMS',
      detail: expect.stringContaining(IDENTITY_REFUSAL) as unknown,
    });
    const desk = await login(site, TOKENS.desk);
    expect(
      (await call(site, 'GET', '/ui/api/events/admission', { cookie: desk.cookie })).status,
    ).toBe(204);

    // Another identity's page still goes live, with the plant in its first events.
    const other = await openStream(desk.cookie);
    expect(other.status).toBe(200);
    expect(other.body).toContain('"id":"drain-valve"');
    other.req.destroy();
  }, 60_000);

  it.runIf(browserReal)(
    "the identity's page says why it is not live, and goes live once one of its streams closes",
    async () => {
      // The identity still holds its limit (the test above).
      expect(held).toHaveLength(MAX_STREAMS_PER_IDENTITY);
      let page: Page;
      ({ browser, page } = await loggedInPage(site, chromiumPath!));
      const stream = page.locator('#stream');
      await stream
        .filter({ hasText: `Not live: ${IDENTITY_REFUSAL}` })
        .waitFor({ state: 'visible', timeout: 15_000 });

      // One of the identity's streams closes: the page, asking again, goes live with the plant.
      held.shift()?.req.destroy();
      await stream.filter({ hasText: /^Live$/ }).waitFor({ state: 'visible', timeout: 20_000 });
      await page
        .locator('#devices')
        .filter({ hasText: 'drain-valve' })
        .waitFor({ state: 'visible', timeout: 5_000 });
    },
    60_000,
  );
});
