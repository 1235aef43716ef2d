import { existsSync } from 'node:fs';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { sluicectl } from '../cli/helpers.js';
import { until } from '../helpers/mosquitto.js';
import { realComponent } from '../helpers/real.js';
import { loggedInPage } from './ui-logged-in-page.js';
import { call, startUiSite, TOKENS, type UiSite } from './ui-site.js';

/**
 * What the status page's list of open commands (its `why` column, in a real headless Chromium)
 * and `sluicectl show` say of a dispatched command whose write was never sent because there was
 * no connection to its PLC: the command waits for one, then goes round again (a fresh read, then
 * its write). They said "no connection to the controller" and "waiting for a connection to its
 * controller": the operator, who goes to a PLC, was not told which. They now name the PLC as the
 * configuration does (`plcs.mb`).
 *
 * The real daemon (built from its site file) and its page over TLS, sluice-sim over real
 * sockets: the PLC's communication module drops off the network just after it has answered the
 * command's fresh read of drain-valve (sluice-sim's refusal of connections, armed for its next
 * read of that valve; idle valves are read every 10 s here, so that read is the command's), so
 * the write that follows finds no connection and the PLC stays off the network while the page
 * is read. Ground truth: the simulator's write log (nothing of the command's sequence number
 * reached the valve) and the journal file's line that says the write was not sent.
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
let page: Page;

beforeAll(async () => {
  if (!real || chromiumPath === null) return;
  site = await startUiSite({ mqtt: false, opcua: false, monitorIntervalMs: 10_000 });
  ({ browser, page } = await loggedInPage(site, chromiumPath));
}, 90_000);

afterAll(async () => {
  if (!real) return;
  await browser.close();
  await site.stop();
});

const why = (key: string): Promise<string> =>
  page.locator(`#open-commands tr[data-key="${key}"] td:last-child`).innerText({ timeout: 1_000 });

/** The command's history on the journal file, through a connection of the test's own. */
function historyOnFile(key: string): { at: number; detail: string }[] {
  const journal = SqliteJournal.open({ path: site.journalPath, readonly: true });
  try {
    return journal.history({ scope: 'scada', key });
  } finally {
    journal.close();
  }
}

const escaped = (text: string): string => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

describe.runIf(real)('an open command whose write found no connection to its PLC', () => {
  it('is said on the status page and by sluicectl show to wait for a connection to that PLC, named', async () => {
    const key = 'no-connection-1';
    const drain = site.plant.device('drain-valve');
    const writes = drain.writeLog.length;
    // Just after an idle read of the valve: its next one is 10 s away, and the command's fresh
    // read comes first.
    const reads = drain.readLog.length;
    await until(
      () => (drain.readLog.length > reads ? true : undefined),
      15_000,
      'an idle read of drain-valve',
    );
    site.plant.plc('mb').refuseConnections({ ms: 60_000, afterReadOf: 'drain-valve' });
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
      JSON.stringify({ device: 'drain-valve', action: 'open', ttlMs: 60_000 }),
    );
    expect(sent.status, sent.body).toBe(202);
    // The journal file says its write was not sent: no connection.
    const line = await until(
      () =>
        historyOnFile(key).find((e) =>
          /^the write \(sequence number \d+\) was not sent: no connection to the controller /.test(
            e.detail,
          ),
        ),
      20_000,
      'the line that says the write found no connection',
    );
    const seq = Number(/sequence number (\d+)/.exec(line.detail)?.[1]);
    const since = new Date(line.at).toISOString();

    const words = `its write (seq ${seq}) was never sent (no connection to its PLC mb); waiting for a connection to its PLC mb since ${since}, then a fresh read decides, then its write`;
    await expect.poll(() => why(key), { timeout: 15_000 }).toContain(words);
    const shown = await why(key);
    expect(shown.startsWith(words), shown).toBe(true);
    expect(shown).toContain('; the device cannot be read now: its PLC is not connected');

    // sluicectl show, on the same journal and configuration, in the same words.
    const cli = await sluicectl(
      ['--config', site.configPath, '--no-color', 'show', '--scope', 'scada', key],
      {
        timeoutMs: 40_000,
      },
    );
    expect(cli.stdout).toMatch(
      new RegExp(
        `^ {2}waiting for +${escaped(
          `its write (seq ${seq}) was never sent (no connection to its PLC mb); waiting for a connection to its PLC mb since ${since}`,
        )} \\(\\d+(?:ms|s) ago\\), then a fresh read decides, then its write$`,
        'm',
      ),
    );

    // Still open, and nothing of it reached the valve.
    const onFile = await call(site, 'GET', `/v1/commands/${key}`, {
      authorization: `Bearer ${TOKENS.scada}`,
    });
    expect(onFile.json<{ state: string }>().state).toBe('dispatched');
    expect(drain.writesOfSeq(seq)).toEqual([]);
    expect(drain.writeLog.length).toBe(writes);
    expect(site.plant.plc('mb').refusingConnections).toBe(true);
  }, 90_000);
});
