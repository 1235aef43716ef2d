import type { ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sha256 } from '../../src/intake/identities.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { startPlant, type Plant } from '../../simulators/plant.js';
import { tempDir } from '../helpers/fixtures.js';
import { loopbackCertificate } from '../helpers/loopback-https.js';
import { until } from '../helpers/mosquitto.js';
import { issuerCommand } from '../helpers/new-command.js';
import {
  bindNotifySocket,
  spawnNotifiedSluiced,
  type Datagram,
  type NotifiedSluiced,
  type NotifySocket,
} from '../helpers/notify-socket.js';
import { inventoryFor } from '../helpers/plant-inventory.js';
import { hasCommand, realComponent } from '../helpers/real.js';

/**
 * Past TimeoutStartSec=, systemd ends a start as soon as its last EXTEND_TIMEOUT_USEC= runs out:
 * from the first extension to READY=1, each message must come before the one before it ends.
 * The check's end sent one extension (WatchdogSec=), and the next came from the settling READY
 * waits for, one look period after it began; the steps between (the journal opened, the drivers,
 * the first check of the gateway clock, recovery, the intakes) had one period in all, and a start
 * whose steps took longer was ended there and began again with the check.
 *
 * Here the real `sluiced`, the notification socket as systemd has it (python3,
 * test/helpers/notify-socket.ts), sluice-sim's Modbus valve, and a command an earlier life left
 * open in the real journal. The gateway clock's source is chrony, its `chronyc` a script that
 * says it was asked and takes 2 s to answer nothing (no chrony runs here): a first check of the
 * clock of some length, as on a gateway whose chronyd is slow. With WatchdogSec= of 4 s (looks
 * every 2 s, each extension 4 s), every gap of the chain, as the socket received it, is shorter
 * than an extension: systemd ends the start when one runs out. The chain's gaps are a look period
 * (2 s) at most, the other half a margin for delivery and late timers on a loaded machine; a start
 * that extended only at the check's end and at recovery's first look left a gap of the clock's
 * 2 s, the intakes' opening and a whole look period, past the extension. Ground truth besides: the
 * recovered command confirmed by one write to the simulator before READY.
 */

const python = realComponent('python3', hasCommand('python3'), 'apt-get install python3');

/** WatchdogSec= of 4 s: the start is looked at every 2 s, each extension 4 s. */
const WATCHDOG_USEC = 4_000_000;
const EXTENSION_MS = WATCHDOG_USEC / 1_000;
/** How long the first check of the gateway clock takes (chronyc answering nothing). */
const CLOCK_CHECK_MS = 2_000;

describe.runIf(python)('the extensions of a start, from the first to READY', () => {
  let plant: Plant;
  let dir: string;
  let cleanup: () => void;
  let socket: NotifySocket;
  let datagrams: Datagram[] = [];
  let sluiced: NotifiedSluiced;
  let daemon: ChildProcess;
  let journalPath: string;
  let asked: string;

  beforeAll(async () => {
    ({ dir, cleanup } = tempDir('sluice-notify-chain-'));
    plant = await startPlant(
      {
        control: { host: '127.0.0.1', port: 0 },
        plcs: {
          mb: {
            protocol: 'modbus',
            host: '127.0.0.1',
            port: 0,
            // Long enough for READY to wait through several looks at the settling.
            devices: { 'inlet-valve': { profile: 'valve', base: 0, travelMs: 6_000 } },
          },
        },
      },
      { ephemeralPorts: true, control: false },
    );
    await loopbackCertificate(dir);
    asked = join(dir, 'chronyc-asked');
    const chronyc = join(dir, 'chronyc');
    writeFileSync(
      chronyc,
      `#!/bin/sh\ntouch '${asked}'\nsleep ${CLOCK_CHECK_MS / 1_000}\nexit 1\n`,
    );
    chmodSync(chronyc, 0o755);
    const configPath = join(dir, 'sluice.yaml');
    writeFileSync(
      configPath,
      stringify({
        gatewayId: 'chain',
        stateDir: 'state',
        https: { host: '127.0.0.1', port: 0, certFile: 'cert.pem', keyFile: 'key.pem' },
        // Unsynced (chronyc answers nothing): the recovered command is written all the same.
        clock: { source: 'chrony', onUnsynced: 'warn', chrony: { chronyc, timeoutMs: 10_000 } },
        identities: { plant: { tokenSha256: sha256('t').toString('hex'), devices: ['*'] } },
        admin: { enabled: false },
        ...inventoryFor(plant),
      }),
    );
    journalPath = join(dir, 'state', 'journal.db');
    // An earlier life left a command accepted, never written: READY waits for it to settle.
    const seed = SqliteJournal.open({ path: journalPath });
    const now = Date.now();
    seed.claim({
      ...issuerCommand('recovered-1', 'inlet-valve', now),
      ttlMs: 120_000,
      deadline: now + 120_000,
    });
    seed.close();

    socket = await bindNotifySocket(join(dir, 'notify.sock'));
    datagrams = socket.datagrams;
    sluiced = spawnNotifiedSluiced(configPath, socket, { WATCHDOG_USEC: String(WATCHDOG_USEC) });
    daemon = sluiced.child;
  }, 60_000);

  afterAll(async () => {
    if (daemon.exitCode === null && daemon.signalCode === null) daemon.kill('SIGKILL');
    socket.close();
    await plant.stop();
    cleanup();
  });

  it('each EXTEND_TIMEOUT_USEC, and READY, comes well within the extension before it', async () => {
    const ready = await until(
      () => datagrams.find((d) => d.text.startsWith('READY=1')),
      60_000,
      `READY=1; datagrams: ${JSON.stringify(datagrams.map((d) => d.text))}; daemon output:\n${sluiced.output()}`,
    );
    const extensions = datagrams.filter(
      (d) => d.at <= ready.at && d.text.startsWith('EXTEND_TIMEOUT_USEC='),
    );
    const chain = [...extensions, ready].map((d) => ({
      at: d.at,
      text: d.text.split('\n').find((l) => l.startsWith('STATUS=') || l === 'READY=1') ?? d.text,
    }));
    const gaps = chain.slice(1).map((d, i) => ({
      gapMs: Math.round(d.at - chain[i]!.at),
      after: chain[i]!.text,
      before: d.text,
    }));
    const explain = `the chain's gaps: ${JSON.stringify(gaps, null, 1)}`;
    expect(existsSync(asked), 'chronyc was run').toBe(true);
    // The first is the check's end; the settling READY waits for is extended too.
    expect(chain[0]!.text, explain).toContain('journal checked');
    expect(
      chain.some((d) => d.text.includes('settling the commands')),
      explain,
    ).toBe(true);
    for (const e of extensions) {
      expect(e.pid, explain).toBe(daemon.pid);
      expect(e.text, explain).toMatch(new RegExp(`^EXTEND_TIMEOUT_USEC=${WATCHDOG_USEC}\\n`));
    }
    // The chain: each extension comes before the one before it runs out.
    for (const g of gaps) {
      expect(g.gapMs, explain).toBeLessThan(EXTENSION_MS);
    }
    // The long step is the clock's first check, between the extensions that frame it; any
    // between them are the check's own, sent every period while it runs.
    const clockBegan = chain.findIndex((d) => d.text.includes('checking the gateway clock'));
    const clockEnded = chain.findIndex((d) => d.text.includes('gateway clock checked'));
    expect(clockEnded, explain).toBeGreaterThan(clockBegan);
    for (const d of chain.slice(clockBegan + 1, clockEnded)) {
      expect(d.text, explain).toContain('starting: checking the gateway clock (chrony): ');
    }
    expect(chain[clockEnded]!.at - chain[clockBegan]!.at, explain).toBeGreaterThanOrEqual(
      CLOCK_CHECK_MS,
    );

    // Ground truth: the recovered command was settled, by one write, before READY.
    const journal = SqliteJournal.open({ path: journalPath, readonly: true });
    try {
      const record = journal.get({ scope: 'plant', key: 'recovered-1' });
      expect(record).toMatchObject({ state: 'confirmed', code: 'OK' });
      expect(record!.settledAt!).toBeLessThanOrEqual(ready.at);
      expect(plant.device('inlet-valve').writesWithSeq(record!.seq!)).toBe(1);
    } finally {
      journal.close();
    }
  }, 90_000);
});
