import { chmodSync, existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { afterAll, expect, it } from 'vitest';
import { startPlant } from '../../simulators/plant.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { startSluiced } from '../config/sluiced.js';
import { tempDir } from '../helpers/fixtures.js';
import { issuerCommand } from '../helpers/new-command.js';
import { loopbackCertificate } from '../helpers/loopback-https.js';
import { until } from '../helpers/mosquitto.js';
import { inventoryFor } from '../helpers/plant-inventory.js';

/**
 * A SIGTERM while sluiced waits in its start past the journal's check (here: the first check of
 * the gateway clock, which the start waits for before recovery and the intakes) ends the start
 * there, once that wait is over: no command of the journal taken up, no intake opened, exit 0.
 * The start used to run on to its end — recovery writing the commands the journal held open,
 * the intakes acknowledging what a broker kept for the gateway — and only then stop.
 *
 * The real sluiced process and sluice-sim's Modbus PLC; the clock source is chrony, its
 * `chronyc` a script that says it was asked and takes 3 s to answer nothing (no chrony runs
 * here, and the wait must be long enough to be sure the signal came during it). Ground truth:
 * the simulator's write counter, the journal.
 */

const { dir, cleanup } = tempDir('sluice-stop-start-');
afterAll(() => {
  cleanup();
});

it('a SIGTERM during the first check of the gateway clock: the start ends there, nothing taken up, no intake opened', async () => {
  const plant = await startPlant(
    {
      control: { host: '127.0.0.1', port: 0 },
      plcs: {
        mb: {
          protocol: 'modbus',
          host: '127.0.0.1',
          port: 0,
          devices: { 'inlet-valve': { profile: 'valve', base: 0, travelMs: 200 } },
        },
      },
    },
    { ephemeralPorts: true, control: false },
  );
  try {
    await loopbackCertificate(dir);
    const asked = join(dir, 'chronyc-asked');
    const chronyc = join(dir, 'chronyc');
    writeFileSync(chronyc, `#!/bin/sh\ntouch '${asked}'\nsleep 3\nexit 1\n`);
    chmodSync(chronyc, 0o755);
    const configPath = join(dir, 'sluice.yaml');
    writeFileSync(
      configPath,
      stringify({
        gatewayId: 'stopstart',
        stateDir: 'state',
        https: { host: '127.0.0.1', port: 0, certFile: 'cert.pem', keyFile: 'key.pem' },
        clock: { source: 'chrony', chrony: { chronyc, timeoutMs: 10_000 } },
        identities: {},
        ...inventoryFor(plant),
      }),
    );
    // An open command from an earlier life: recovery would take it up and write it.
    const journalPath = join(dir, 'state', 'journal.db');
    const seed = SqliteJournal.open({ path: journalPath });
    const now = Date.now();
    // Two minutes to live: it stays open, taken up or not, for the whole test.
    seed.claim({
      ...issuerCommand('left-open', 'inlet-valve', now),
      scope: 'scada',
      fingerprint: 'left-open',
      ttlMs: 120_000,
      deadline: now + 120_000,
    });
    seed.close();

    const sluiced = startSluiced(['--config', configPath]);
    await until(() => (existsSync(asked) ? true : undefined), 30_000, 'the first clock check');
    expect(await sluiced.stop()).toBe(0);
    const said = (msg: string): boolean => sluiced.lines.some((l) => l.includes(`"msg":"${msg}`));
    expect(said('sluiced stopped during its start')).toBe(true);
    expect(said('sluiced started')).toBe(false);
    expect(said('HTTPS intake listening')).toBe(false);
    // Not taken up: still accepted, never written.
    const journal = SqliteJournal.open({ path: journalPath });
    try {
      expect(journal.get({ scope: 'scada', key: 'left-open' })?.state).toBe('accepted');
    } finally {
      journal.close();
    }
    expect(plant.device('inlet-valve').counters.writesReceived).toBe(0);
  } finally {
    await plant.stop();
  }
}, 60_000);
