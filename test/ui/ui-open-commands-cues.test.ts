import { existsSync } from 'node:fs';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { systemClock, type Clock } from '../../src/core/clock.js';
import { until } from '../helpers/mosquitto.js';
import { realComponent } from '../helpers/real.js';
import { loggedInPage } from './ui-logged-in-page.js';
import { call, login, startUiSite, TOKENS, type UiSite } from './ui-site.js';

/**
 * The status page's list of open commands is fetched again only on a `commands` cue of its
 * event stream. A command's dispatch changes no device's queue or command in flight (it was in
 * flight from its take), and a command crossing its stuck bound (SPEC §2) changes nothing but
 * the count of stuck ones: neither was cued, so a written command stayed `accepted` ("not
 * written") on the page until it settled, and a command /readyz named stuck stayed STUCK "no"
 * while the band counted it. Now the tick cues when the counts of accepted, dispatched and stuck
 * commands change.
 *
 * The real daemon and its status page over TLS in a real headless Chromium, sluice-sim over real
 * sockets; the journal seeded before the start with a command of a device no longer configured,
 * stuck from its deadline ten minutes after the start. No run reaches it however loaded the
 * machine: the test steps the daemon's wall clock past it (SPEC §6: wall time may step), the
 * clock the daemon is given being this process's plus an offset the test sets. The dispatched
 * command is kept from settling by holding the valve's reads until the page has shown it.
 * Ground truth: the simulator's write log, the journal's state as GET /v1/commands/{key} and
 * /readyz read it, and what the page shows.
 */

const CHROMIUM_PATHS = ['/usr/bin/chromium', '/usr/bin/chromium-browser'];
const chromiumPath =
  process.env.SLUICE_CHROMIUM ?? CHROMIUM_PATHS.find((path) => existsSync(path)) ?? null;
const real = realComponent(
  'Chromium',
  chromiumPath !== null && existsSync(chromiumPath),
  'apt-get install chromium, or SLUICE_CHROMIUM=/path/to/chromium',
);

const LATER = 'later-orphan';
/** LATER's deadline after the start, and the step that takes the daemon's wall clock past it. */
const LATER_MS = 600_000;

/** Added to the daemon's wall time (its monotonic clock is left alone). */
let stepMs = 0;
const clock: Clock = { ...systemClock, now: () => Date.now() + stepMs };

let site: UiSite;
let browser: Browser;
let page: Page;

beforeAll(async () => {
  if (!real || chromiumPath === null) return;
  site = await startUiSite({
    mqtt: false,
    opcua: false,
    laterOrphans: [{ key: LATER, inMs: LATER_MS }],
    clock,
  });
  ({ browser, page } = await loggedInPage(site, chromiumPath));
}, 90_000);

afterAll(async () => {
  if (!real) return;
  await browser.close();
  await site.stop();
});

const row = (key: string): Promise<string> =>
  page.locator(`#open-commands tr[data-key="${key}"]`).innerText({ timeout: 1_000 });

describe.runIf(real)("the status page's list of open commands", () => {
  it('shows a command dispatched once its write is taken, before it settles', async () => {
    const key = 'dispatch-cue';
    const drain = site.plant.device('drain-valve');
    // Its fresh read held: taken by the valve's worker, not written.
    drain.setFault({ kind: 'stall', on: 'read' });
    const sent = await call(
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
    expect(sent.status, sent.body).toBe(202);
    // Taken (the device's command in flight) at least two ticks ago: the page has the list its
    // cue asked for, which shows it accepted.
    const { cookie } = await login(site, TOKENS.ops);
    await until(
      async () => {
        const devices = (await call(site, 'GET', '/ui/api/devices', { cookie })).json<{
          devices: { id: string; command: { key: string; ageMs: number } | null }[];
        }>().devices;
        const command = devices.find((d) => d.id === 'drain-valve')?.command;
        return command?.key === key && command.ageMs >= 2_500 ? true : undefined;
      },
      10_000,
      'the command taken, its read held',
    );
    await expect.poll(() => row(key), { timeout: 10_000 }).toMatch(/accepted/);
    const writes = drain.writeLog.length;
    drain.clearFault('stall');
    await until(() => (drain.writeLog.length > writes ? true : undefined), 10_000, 'the write');
    // Its reads held again while the valve travels: no readback can settle it, however long the
    // page takes. Shown dispatched while it is, on file.
    drain.setFault({ kind: 'stall', on: 'read' });
    await expect.poll(() => row(key), { timeout: 10_000 }).toMatch(/dispatched/);
    const onFile = await call(site, 'GET', `/v1/commands/${key}`, {
      authorization: `Bearer ${TOKENS.scada}`,
    });
    expect(onFile.json<{ state: string }>().state).toBe('dispatched');
    // Settled before the next test steps the clock.
    drain.clearFault('stall');
    await until(
      async () => {
        const settled = await call(site, 'GET', `/v1/commands/${key}`, {
          authorization: `Bearer ${TOKENS.scada}`,
        });
        return settled.json<{ state: string }>().state === 'confirmed' ? true : undefined;
      },
      20_000,
      'the command confirmed',
    );
  }, 60_000);

  it('shows a command stuck once it crosses its bound', async () => {
    await expect.poll(() => row(LATER), { timeout: 10_000 }).toMatch(/due in/);
    expect(await row(LATER)).not.toMatch(/STUCK/);
    // The daemon's wall clock past its deadline (the page's own clock is not stepped: its
    // deadline column still says "due in").
    stepMs = LATER_MS;
    // /readyz names it stuck: past its deadline (a device no longer configured).
    await until(
      async () => {
        const ready = await call(site, 'GET', '/readyz');
        const commands = ready.json<{ checks: { commands: { detail: string } } }>().checks.commands;
        return commands.detail.includes(`${LATER} on removed-valve (accepted)`) ? true : undefined;
      },
      30_000,
      '/readyz naming it stuck',
    );
    await expect.poll(() => row(LATER), { timeout: 3_000 }).toMatch(/STUCK/);
  }, 60_000);
});
