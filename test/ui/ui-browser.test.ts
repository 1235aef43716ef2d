import { existsSync, mkdirSync } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ROOT } from '../helpers/fixtures.js';
import { mosquittoAvailable, TestClient, timed, until } from '../helpers/mosquitto.js';
import { realComponent } from '../helpers/real.js';
import { launchChromium, logIn } from './ui-logged-in-page.js';
import { call, ORPHAN, startUiSite, TOKENS, type UiSite } from './ui-site.js';

/**
 * The status page in a real headless Chromium (Debian's `chromium`, driven by playwright-core
 * through its executable path; no browser is downloaded) against the daemon, sluice-sim (a
 * Modbus and an OPC UA PLC) and a real Mosquitto: log in; the devices table shows the plant; a
 * command sent over MQTT appears without a reload and settles; a valve with the simulator's
 * `stuck-travel` fault shows as stuck, and so does the command it holds; resolving that command
 * from the page is audited in GET /v1/commands/{key} and writes nothing; a network drop shows
 * as "Disconnected, retrying" until the stream is back. The page runs under its CSP without a
 * single violation or script error. Screenshots go to test-artifacts/ (git-ignored).
 *
 * The browser reaches the daemon through a TCP relay (TLS passes through it untouched), so that
 * the test can cut the network under a live page as a Wi-Fi drop would.
 */

const CHROMIUM_PATHS = ['/usr/bin/chromium', '/usr/bin/chromium-browser'];
const chromiumPath =
  process.env.SLUICE_CHROMIUM ?? CHROMIUM_PATHS.find((path) => existsSync(path)) ?? null;
const real =
  realComponent(
    'Chromium',
    chromiumPath !== null && existsSync(chromiumPath),
    'apt-get install chromium, or SLUICE_CHROMIUM=/path/to/chromium',
  ) && mosquittoAvailable();
const ARTIFACTS = join(ROOT, 'test-artifacts');

let site: UiSite;
let relay: Relay;
/** The page's origin: the relay's port on loopback. */
let origin: string;
let browser: Browser;
let context: BrowserContext;
let page: Page;
let mqtt: TestClient;
/** What the browser reported that the page must never cause. */
const problems: string[] = [];

beforeAll(async () => {
  if (!real || chromiumPath === null) return;
  site = await startUiSite({ mqtt: true, opcua: true });
  relay = await startRelay(site.port);
  origin = `https://127.0.0.1:${relay.port}`;
  mqtt = await TestClient.connect(site.broker!.url);
  await mqtt.subscribe('sluice/uisite/result/#');
  ({ browser, context } = await launchChromium(chromiumPath, {
    viewport: { width: 1400, height: 1000 },
  }));
  page = await context.newPage();
  page.on('console', (message) => {
    if (message.type() === 'error') problems.push(`console: ${message.text()}`);
  });
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  mkdirSync(ARTIFACTS, { recursive: true });
}, 90_000);

afterAll(async () => {
  if (!real) return;
  await browser.close();
  await relay.close();
  await mqtt.end();
  await site.stop();
});

interface Relay {
  readonly port: number;
  /** Resets every connection, and every new one until restore(). */
  cut(): void;
  /** The connections reset at their opening since the last cut(): the page's retries. */
  readonly refused: number;
  restore(): void;
  close(): Promise<void>;
}

/** A TCP relay on loopback to `target`: what lies between a tablet and the gateway. */
async function startRelay(target: number): Promise<Relay> {
  const sockets = new Set<Socket>();
  let down = false;
  let refused = 0;
  const server: Server = createServer((client) => {
    if (down) {
      refused += 1;
      client.resetAndDestroy();
      return;
    }
    const upstream = connect(target, '127.0.0.1');
    for (const [a, b] of [
      [client, upstream],
      [upstream, client],
    ] as const) {
      sockets.add(a);
      a.pipe(b);
      a.on('error', () => b.destroy());
      a.on('close', () => {
        sockets.delete(a);
        b.destroy();
      });
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  const port = typeof address === 'object' && address !== null ? address.port : 0;
  return {
    port,
    get refused() {
      return refused;
    },
    cut: () => {
      down = true;
      refused = 0;
      for (const socket of sockets) socket.resetAndDestroy();
    },
    restore: () => {
      down = false;
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => {
          resolve();
        });
      }),
  };
}

/** The scan dosing-actuator's image showed when it stopped publishing; undefined: not yet. */
let frozenScan: number | undefined;

/** The OPC UA actuator's controller stops publishing its image; returns the scan it keeps. */
function freezeDosingActuator(): number {
  const valve = site.plant.device('dosing-actuator');
  valve.setFault({ kind: 'frozen' });
  frozenScan = valve.published.scanTime;
  return frozenScan;
}

/** The devices table's row for a device, as text. */
async function deviceRow(id: string): Promise<string> {
  return page.locator(`#devices tr[data-device="${id}"]`).innerText();
}

describe.runIf(real)('the status page in Chromium', () => {
  it('logs in with the token; the devices table shows the plant, live', async () => {
    await page.goto(`${origin}/ui/`);
    await page.locator('#login').waitFor({ state: 'visible' });
    // The page asked whether it has a session and was told 401: the one error the browser
    // reports before the login. Nothing may be reported from here on.
    expect(problems).toEqual([
      'console: Failed to load resource: the server responded with a status of 401 (Unauthorized)',
    ]);
    problems.length = 0;
    await logIn(page);
    await expect.poll(() => page.locator('#stream').innerText(), { timeout: 10_000 }).toBe('Live');
    expect(await page.locator('#who-name').innerText()).toBe('ops (operator)');
    expect(await page.locator('#gateway-id').innerText()).toBe('uisite');
    // The token is gone from the page once used, and no URL ever carried it.
    expect(await page.inputValue('#token')).toBe('');
    expect(page.url()).toBe(`${origin}/ui/`);
    const cookies = await context.cookies();
    expect(cookies).toEqual([
      expect.objectContaining({
        name: '__Host-sluice-session',
        httpOnly: true,
        secure: true,
        sameSite: 'Strict',
        path: '/',
      }),
    ]);
    expect(await page.evaluate<string>('document.cookie')).toBe('');

    await expect.poll(() => page.locator('#devices tbody tr').count(), { timeout: 15_000 }).toBe(3);
    expect(await deviceRow('inlet-valve')).toMatch(/inlet-valve\s+valve\s+CLOSED\s+0 %/);
    expect(await deviceRow('drain-valve')).toMatch(/drain-valve\s+valve\s+CLOSED\s+0 %/);
    expect(await deviceRow('dosing-actuator')).toMatch(/dosing-actuator\s+actuator\s+IDLE/);
    for (const id of ['inlet-valve', 'drain-valve', 'dosing-actuator']) {
      // A read that times out on a loaded machine shows as READS FAIL until the next one.
      await expect.poll(() => deviceRow(id), { timeout: 10_000 }).toMatch(/\bOK\b/);
      const row = await deviceRow(id);
      expect(row, id).toContain('REMOTE');
      expect(row, id).toMatch(/ms ago|\ds ago/);
    }
    const gateway = await page.locator('#gateway').innerText();
    expect(gateway).toMatch(/Clock\s+UNKNOWN none/);
    expect(gateway).toMatch(/MQTT\s+CONNECTED MQTT 5/);
    expect(gateway).toMatch(/Journal\s+\d+(\.\d)? (B|KiB|MiB)/);
    expect(gateway).toMatch(/Version\s+sluice \d+\.\d+\.\d+/);
    // The orphan is stuck (SPEC §2) and comes first, highlighted, with how long and why.
    const orphan = page.locator(`#open-commands tr[data-key="${ORPHAN.key}"]`);
    await orphan.waitFor();
    expect(await orphan.getAttribute('class')).toBe('stuck');
    const before = Date.now();
    const text = await orphan.innerText();
    const after = Date.now();
    const shown =
      /STUCK (\d+)m(\d+)s overdue\s+open (\d+) min (\d+) s past its deadline \(its device is not in the configuration/.exec(
        text,
      );
    expect(shown, text).not.toBeNull();
    // As long overdue as the seeded deadline says, however long the test took to get here (the
    // view is as of its last refresh: a few seconds older at most).
    const overdue = Number(shown?.[1]) * 60 + Number(shown?.[2]);
    const past = Number(shown?.[3]) * 60 + Number(shown?.[4]);
    expect(overdue).toBeGreaterThanOrEqual(Math.floor((before - site.orphanDeadline) / 1000) - 10);
    expect(overdue).toBeLessThanOrEqual(Math.ceil((after - site.orphanDeadline) / 1000) + 1);
    expect(Math.abs(past - overdue), text).toBeLessThanOrEqual(1);

    // Why, in the words /readyz and sluicectl use (one rule: core/open-commands.ts), on its row
    // and on its page.
    const why = 'its deadline (its device is not in the configuration: no worker can settle it)';
    expect(text).toContain(`past ${why}`);
    const ready = await call(site, 'GET', '/readyz');
    expect(ready.body).toContain(`s past ${why}`);
    await page.click(`#open-commands tr[data-key="${ORPHAN.key}"] a`);
    await page.locator('#command').waitFor({ state: 'visible' });
    await expect
      .poll(() => page.locator('#command-fields').innerText(), { timeout: 5_000 })
      .toMatch(/outcome\s+STUCK: still accepted, \S+ past its deadline \(its device is not in/);
    expect(await page.locator('#command-fields').innerText()).toContain(`past ${why}`);
    await page.click('#command a[href="#"]');
    await page.locator('#overview').waitFor({ state: 'visible' });
  }, 60_000);

  it('a command sent over MQTT appears without a reload and settles', async () => {
    // The frozen image of the last test shows only after 15 s of reads with the same scan: it
    // starts here, on a device no test before the last one looks at, and ages while the next
    // tests run.
    freezeDosingActuator();
    await page.evaluate('window.notReloaded = true');
    const key = 'ui-mqtt-1';
    await mqtt.publish('sluice/uisite/cmd/drain-valve', timed({ key, action: 'open' }));
    // In flight: on the device's row and first in the open commands.
    await expect
      .poll(() => deviceRow('drain-valve'), { timeout: 5_000 })
      .toMatch(new RegExp(`OPENING[\\s\\S]*${key} open\\s+dispatched`));
    await expect
      .poll(() => page.locator(`#open-commands tr[data-key="${key}"]`).count(), {
        timeout: 5_000,
      })
      .toBe(1);
    // Settled: the valve is open, the command is in the recent list, confirmed.
    await mqtt.waitFor((m) => m.json().key === key, 15_000, 'the result');
    await expect.poll(() => deviceRow('drain-valve'), { timeout: 5_000 }).toMatch(/OPEN\s+100 %/);
    await expect
      .poll(() => page.locator(`#recent-commands tr[data-key="${key}"]`).innerText(), {
        timeout: 5_000,
      })
      .toMatch(/drain-valve\s+open\s+confirmed\s+OK\s+1\s+mqtt/);
    expect(await page.locator(`#open-commands tr[data-key="${key}"]`).count()).toBe(0);
    expect(await deviceRow('drain-valve')).not.toContain(key);
    expect(await page.evaluate<boolean>('window.notReloaded === true')).toBe(true);

    // The filter keeps one device's commands.
    await page.selectOption('#filter-device', 'inlet-valve');
    await expect.poll(() => page.locator(`#recent-commands tr[data-key="${key}"]`).count()).toBe(0);
    await page.selectOption('#filter-device', '');
    await expect.poll(() => page.locator(`#recent-commands tr[data-key="${key}"]`).count()).toBe(1);
  }, 40_000);

  it('a stuck valve shows as stuck; resolving its command from the page is audited', async () => {
    const valve = site.plant.device('inlet-valve');
    valve.setFault({ kind: 'stuck-travel' });
    const key = 'ui-stuck-1';
    const command = timed({ key, action: 'open' });
    await mqtt.publish('sluice/uisite/cmd/inlet-valve', command);
    await until(() => (valve.counters.writesReceived === 1 ? true : undefined), 5_000, 'the write');
    // A client retrying it (the same message, three times): one history event counting three.
    for (let i = 0; i < 3; i++) await mqtt.publish('sluice/uisite/cmd/inlet-valve', command);
    await until(
      async () => {
        const answer = await call(site, 'GET', `/v1/commands/${key}`, {
          authorization: `Bearer ${TOKENS.scada}`,
        });
        const history = answer.json<{ history: { detail: string }[] }>().history;
        return history.some((e) => e.detail.startsWith('duplicate ×3 (first ')) ? true : undefined;
      },
      10_000,
      'the three duplicates journaled as one event',
    );
    // No movement for 5 s while OPENING: the valve is STUCK, and so is the row of its command.
    await expect
      .poll(() => deviceRow('inlet-valve'), { timeout: 15_000 })
      .toMatch(/OPENING\s*STUCK: no movement for \d+s/);
    expect(await page.locator('#devices tr[data-device="inlet-valve"]').getAttribute('class')).toBe(
      'stuck',
    );
    expect(await deviceRow('inlet-valve')).toMatch(new RegExp(`${key} open\\s+dispatched`));
    await expect
      .poll(() => page.locator(`#open-commands tr[data-key="${key}"]`).innerText(), {
        timeout: 5_000,
      })
      .toMatch(/the device is not moving: OPENING at 0 % for \d+ s/);
    await page.screenshot({ path: join(ARTIFACTS, 'ui.png'), fullPage: true });

    // The command's page: the same story as `sluicectl show`, and the operator's actions.
    await page.click(`#open-commands tr[data-key="${key}"] a`);
    await page.locator('#command').waitFor({ state: 'visible' });
    expect(await page.locator('#command-title').innerText()).toBe(`Command ${key} (scope scada)`);
    // The fields are filled once the command's record has arrived, which can follow the title.
    await expect
      .poll(() => page.locator('#command-fields').innerText(), { timeout: 5_000 })
      .toMatch(/received\s+\S+ \(\d+s ago\) over mqtt, identity scada/);
    const fields = await page.locator('#command-fields').innerText();
    expect(fields).toMatch(/dispatch\s+\S+ \(\d+s ago\), seq \d+, 1 write/);
    expect(fields).toMatch(/outcome\s+still dispatched: not settled yet/);
    // Counted by hits, as `sluicectl show` counts them, not by history events.
    expect(fields).toMatch(/duplicates\s+3: mqtt ×3 \(first \S+ ago, last \S+ ago\)/);
    expect(await page.locator('#command-history').innerText()).toMatch(
      /mqtt\s+received\s+→ accepted/,
    );
    expect(await page.locator('#command-actions').isVisible()).toBe(true);

    const reason = 'valve stuck at 0 %; travel blocked, checked on site (WO 4711)';
    await page.fill('#reason', reason);
    await page.click('#resolve-form button[type=submit]');
    await expect
      .poll(() => page.locator('#action-result').innerText(), { timeout: 5_000 })
      .toMatch(
        /^RESOLVED by ops \(status page, 127\.0\.0\.1\): failed RESOLVED_BY_OPERATOR; the resolve wrote nothing to the controller; the command had been dispatched \(seq \d+\): its detail says what is known of its write$/,
      );
    await expect
      .poll(() => page.locator('#command-fields').innerText(), { timeout: 5_000 })
      .toMatch(/outcome\s+failed RESOLVED_BY_OPERATOR/);
    expect(await page.locator('#command-history').innerText()).toContain(
      `resolved by "ops (status page, 127.0.0.1)": ${JSON.stringify(reason)}`,
    );
    await page.screenshot({ path: join(ARTIFACTS, 'ui-command.png'), fullPage: true });

    // Audited where every client sees it; nothing more was written to the valve.
    const audited = await call(site, 'GET', `/v1/commands/${key}`, {
      authorization: `Bearer ${TOKENS.scada}`,
    });
    const body = audited.json<{
      state: string;
      code: string;
      history: { to: string; intake: string; detail: string }[];
    }>();
    expect(body).toMatchObject({ state: 'failed', code: 'RESOLVED_BY_OPERATOR' });
    expect(body.history.at(-1)).toMatchObject({
      to: 'failed',
      intake: 'admin',
      detail: expect.stringContaining(
        `resolved by "ops (status page, 127.0.0.1)": ${JSON.stringify(reason)}`,
      ) as unknown,
    });
    expect(valve.counters.writesReceived).toBe(1);
    valve.clearFault('stuck-travel');

    await page.click('#command a[href="#"]');
    await page.locator('#overview').waitFor({ state: 'visible' });
    await expect
      .poll(() => page.locator(`#recent-commands tr[data-key="${key}"]`).innerText(), {
        timeout: 5_000,
      })
      .toMatch(/failed\s+RESOLVED_BY_OPERATOR/);
  }, 60_000);

  it('shows "Disconnected, retrying" while the network is down, and goes live again', async () => {
    relay.cut();
    await expect
      .poll(() => page.locator('#stream').innerText(), { timeout: 15_000 })
      .toBe('Disconnected, retrying…');
    expect(await page.locator('#stream').getAttribute('class')).toBe('stream stream-down');
    await page.screenshot({ path: join(ARTIFACTS, 'ui-disconnected.png') });
    // Still down a few retries later (each one refused at the relay): the page keeps saying so.
    await expect.poll(() => relay.refused, { timeout: 15_000 }).toBeGreaterThanOrEqual(3);
    expect(await page.locator('#stream').innerText()).toBe('Disconnected, retrying…');
    relay.restore();
    await expect.poll(() => page.locator('#stream').innerText(), { timeout: 20_000 }).toBe('Live');
    // What changed meanwhile arrives with the new stream: the valve, freed, travelled open.
    await expect
      .poll(() => deviceRow('inlet-valve'), { timeout: 10_000 })
      .toMatch(/inlet-valve\s+valve\s+OPEN\s+100 %/);
    expect(await deviceRow('inlet-valve')).not.toContain('STUCK');
    // To inlet-valve, which travels in 0.8 s (drain-valve takes 3 s).
    await mqtt.publish(
      'sluice/uisite/cmd/inlet-valve',
      timed({ key: 'ui-after', action: 'close' }),
    );
    await expect
      .poll(() => page.locator('#recent-commands tr[data-key="ui-after"]').count(), {
        timeout: 15_000,
      })
      .toBe(1);
    // Connection resets while the network was down are the browser's; nothing else went wrong.
    expect(problems.filter((p) => !p.includes('net::ERR_'))).toEqual([]);
  }, 60_000);

  it('a controller that stops publishing its image shows as frozen, and no longer once it publishes', async () => {
    const valve = site.plant.device('dosing-actuator');
    // Frozen since the MQTT command's test (or from now, when run alone).
    const scan = frozenScan ?? freezeDosingActuator();
    // Reads go on answering (the monitor's, every 200 ms) with the same scan: after 15 s the
    // row says the image is frozen, and is marked like a stuck one.
    await expect
      .poll(() => deviceRow('dosing-actuator'), { timeout: 30_000 })
      .toMatch(/IMAGE FROZEN: the same scan for \d+s/);
    expect(
      await page.locator('#devices tr[data-device="dosing-actuator"]').getAttribute('class'),
    ).toBe('stuck');
    // Ground truth: the simulator has not published since.
    expect(valve.published.scanTime).toBe(scan);
    valve.clearFault('frozen');
    await expect
      .poll(() => deviceRow('dosing-actuator'), { timeout: 10_000 })
      .not.toContain('IMAGE FROZEN');
    expect(
      await page.locator('#devices tr[data-device="dosing-actuator"]').getAttribute('class'),
    ).toBeNull();
    expect(problems.filter((p) => !p.includes('net::ERR_'))).toEqual([]);
  }, 60_000);
});
