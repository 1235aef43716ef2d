import { existsSync } from 'node:fs';
import { pino } from 'pino';
import type { Browser } from 'playwright-core';
import { describe, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { Daemon } from '../../src/daemon/daemon.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { until } from '../helpers/mosquitto.js';
import { realComponent } from '../helpers/real.js';
import { loggedInPage } from './ui-logged-in-page.js';
import { call, startUiSite, TOKENS } from './ui-site.js';

/**
 * What the status page's list of open commands (its `why` column, in a real headless Chromium)
 * says of a command whose write was withdrawn before it was sent, as the daemon stopped, once
 * the next start has taken it up and decides it again (a fresh read, then its write): that its
 * write was never sent, withdrawn, and that it is being decided again. It said the command
 * waited for "a readback that settles its write … the write's effect is unknown".
 *
 * The real daemon (built from its site file, stopped with no time for commands in flight and
 * started again on the same journal) and its page over TLS, sluice-sim over real sockets. The
 * open's write of drain-valve waits for the PLC's one connection behind the reads of a command
 * of inlet-valve, which the PLC answers late and whose write it holds (so that it keeps reading);
 * the daemon stops while it waits, and the driver withdraws it unsent. The PLC then drops off
 * the network (sluice-sim's refusal of connections) for longer than the test looks, so the next
 * start's fresh read of the valve does not come. Ground truth: the simulator's write log
 * (nothing of the command's sequence number reached the valve) and the journal file's lines.
 */

const CHROMIUM_PATHS = ['/usr/bin/chromium', '/usr/bin/chromium-browser'];
const chromiumPath =
  process.env.SLUICE_CHROMIUM ?? CHROMIUM_PATHS.find((path) => existsSync(path)) ?? null;
const real = realComponent(
  'Chromium',
  chromiumPath !== null && existsSync(chromiumPath),
  'apt-get install chromium, or SLUICE_CHROMIUM=/path/to/chromium',
);

/** Below the PLC's 300 ms request timeout: answered late, never timed out. */
const LATENCY_MS = 250;

function open(key: string, device: string): string {
  return JSON.stringify({ device, action: 'open', ttlMs: 60_000 });
}

describe.runIf(real)('an open command whose write was withdrawn as the daemon stopped', () => {
  it('is said on the status page, after the restart, never sent and being decided again', async ({
    expect,
    onTestFinished,
  }) => {
    const site = await startUiSite({
      mqtt: false,
      opcua: false,
      monitorIntervalMs: 10_000,
      shutdownBoundMs: 0,
    });
    let again: Daemon | null = null;
    let browser: Browser | null = null;
    onTestFinished(async () => {
      await browser?.close();
      await again?.stop();
      await site.stop();
    });
    const post = async (key: string, device: string): Promise<void> => {
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
        open(key, device),
      );
      expect(sent.status, sent.body).toBe(202);
    };
    const inlet = site.plant.device('inlet-valve');
    const drain = site.plant.device('drain-valve');
    const drainWrites = drain.writeLog.length;
    // inlet-valve's command is held by its controller and keeps reading, each read answered
    // late: the PLC's connection is busy with one at almost every moment.
    inlet.setFault({ kind: 'hold' });
    inlet.setFault({ kind: 'latency', ms: LATENCY_MS, on: 'read' });
    const inletWrites = inlet.writeLog.length;
    await post('busy-1', 'inlet-valve');
    await until(
      () => (inlet.writeLog.length > inletWrites ? true : undefined),
      15_000,
      "inlet-valve's write",
    );
    const key = 'withdrawn-1';
    await post(key, 'drain-valve');
    const pipeline = site.daemon.pipeline;
    // Polled at every turn of the event loop: the write waits at most one slow read.
    let dispatched = pipeline.get({ scope: 'scada', key });
    const by = Date.now() + 15_000;
    while (dispatched?.state !== 'dispatched' && Date.now() < by) {
      await new Promise((r) => setImmediate(r));
      dispatched = pipeline.get({ scope: 'scada', key });
    }
    expect(dispatched?.state).toBe('dispatched');
    // The daemon's stop begins with its intakes; its pipeline's part of it (no time for the
    // commands in flight: the queued write is withdrawn) is taken first here, within the slow
    // read the write waits behind.
    const stopped = pipeline.stop(0);
    const seq = dispatched!.seq!;
    // Still queued behind a slow read when the stop comes (the premise).
    expect(drain.writesWithSeq(seq)).toBe(0);
    await stopped;
    await site.daemon.stop();
    // The PLC off the network before the next start, for longer than the test looks.
    inlet.clearFaults();
    site.plant.plc('mb').refuseConnections({ ms: 60_000 });

    const journal = SqliteJournal.open({ path: site.journalPath, readonly: true });
    let line: { at: number; detail: string } | undefined;
    let details: string[];
    try {
      details = journal.history({ scope: 'scada', key }).map((e) => e.detail);
      expect(journal.findByKey(key)[0]).toMatchObject({ state: 'dispatched', seq });
      line = journal
        .history({ scope: 'scada', key })
        .find((e) =>
          e.detail.startsWith(
            `the write (sequence number ${seq}) was not sent: withdrawn as the daemon stopped`,
          ),
        );
    } finally {
      journal.close();
    }
    expect(line, details.join('\n')).toBeDefined();
    const since = new Date(line!.at).toISOString();

    again = await Daemon.start(loadConfig(site.configPath, { env: {} }), {
      logger: pino({ level: 'silent' }),
      monitorIntervalMs: 10_000,
    });
    const origin = `https://127.0.0.1:${again.https!.port}`;
    const shown = await loggedInPage({ origin }, chromiumPath!);
    browser = shown.browser;
    const why = (): Promise<string> =>
      shown.page
        .locator(`#open-commands tr[data-key="${key}"] td:last-child`)
        .innerText({ timeout: 1_000 });
    const words = `its write (seq ${seq}) was never sent (withdrawn before it was sent); being decided again since ${since}: a fresh read, then its write`;
    await expect.poll(why, { timeout: 20_000 }).toContain(words);
    const text = await why();
    expect(text.startsWith(words), text).toBe(true);
    expect(text).not.toContain('a readback that settles its write');

    // Taken up by the next start, still open, and nothing of it reached the valve.
    expect(again.pipeline.get({ scope: 'scada', key })?.state).toBe('dispatched');
    expect(drain.writesWithSeq(seq)).toBe(0);
    expect(drain.writeLog.length).toBe(drainWrites);
    expect(site.plant.plc('mb').refusingConnections).toBe(true);
  }, 120_000);
});
