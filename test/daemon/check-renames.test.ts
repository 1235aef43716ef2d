import { createHash } from 'node:crypto';
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { Daemon } from '../../src/daemon/daemon.js';
import { DEVICE_ADDRESSES_META } from '../../src/daemon/renamed-devices.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import {
  editSite,
  renameSiteEntry,
  seedOrphan,
  startTokenSite,
  stopSite,
  type TokenSite,
} from '../helpers/daemon-site.js';
import { until } from '../helpers/mosquitto.js';
import { runSluiced } from '../config/sluiced.js';

/**
 * `sluiced --check`, the operator's look before a restart, runs the start's two checks of the
 * configuration against the journal's records: a device renamed while the journal holds an open
 * command of its former id (the start refuses it, exit 2: renamed-device.test.ts) and an
 * identity renamed with its token kept (the start warns of it: renamed-identity.test.ts). It ran
 * neither: it said "configuration is valid" and exited 0 on a configuration the start then
 * refused. A device renamed while its PLC's host was written another way (`::ffff:127.0.0.1`
 * for `127.0.0.1`, one controller) is at its former address too: it was taken for a new device.
 * The real `sluiced` process for the check and for the start it foretells, a journal
 * written by a real daemon's life (sluice-sim); ground truth: the journal file and its folder,
 * the same bytes and files after the check (it writes nothing), and the start's own answer.
 */

const TOKEN = 'check-renames-token';

let site: TokenSite;
let journalPath: string;

/** The state folder's files, and the journal's bytes: what a check must leave as they are. */
function stateOnDisk(): { files: string[]; journal: string } {
  return {
    files: readdirSync(join(site.dir, 'state')).sort(),
    journal: createHash('sha256').update(readFileSync(journalPath)).digest('hex'),
  };
}

function check(): { status: number | null; stdout: string; stderr: string } {
  const before = stateOnDisk();
  const run = runSluiced(['--config', site.configPath, '--check']);
  expect(stateOnDisk()).toEqual(before);
  return run;
}

beforeAll(async () => {
  site = await startTokenSite(
    'sluice-check-renames-',
    { v1: { profile: 'valve', base: 0, travelMs: 50 } },
    { gatewayId: 'check-renames', token: TOKEN, scope: 'scada' },
  );
  journalPath = join(site.dir, 'state', 'journal.db');
  // A life of the daemon: it records where v1 writes and what lets scada in.
  const daemon = await Daemon.start(loadConfig(site.configPath, { env: {} }), {
    logger: pino({ level: 'silent' }),
    monitorIntervalMs: 200,
  });
  try {
    await until(() => (daemon.readiness().ready ? true : undefined), 20_000, 'ready');
  } finally {
    await daemon.stop();
  }
  // An open command of v1 left in the journal, as a crash leaves one.
  seedOrphan(journalPath, Date.now(), {
    scope: 'scada',
    key: 'open-7',
    device: 'v1',
    intake: 'https',
  });
}, 60_000);

afterAll(() => stopSite(null, site), 30_000);

describe('sluiced --check against the journal', () => {
  it('refuses a device renamed with an open command of its former id (exit 2) as the start does, and warns of a renamed identity', () => {
    renameSiteEntry(site.configPath, 'devices', 'v1', 'v1-new');
    renameSiteEntry(site.configPath, 'identities', 'scada', 'scada-line2');
    const refused = check();
    expect(refused.stdout).toBe('');
    expect(refused.stderr).toContain(
      'sluiced: configuration against the journal: invalid configuration:\n  devices.v1-new: has the address of device "v1" (modbus 127.0.0.1:',
    );
    expect(refused.stderr).toContain('open-7 (identity scada, accepted)');
    expect(refused.stderr).toContain(
      'warning: identity "scada" is now "scada-line2" (the same token ',
    );
    expect(refused.status).toBe(2);
    // What the check foretold: the start refuses the same configuration, in the same words.
    const start = runSluiced(['--config', site.configPath]);
    expect(start.status).toBe(2);
    const refusal = refused.stderr.split('\n').slice(0, 2).join('\n');
    expect(start.stderr).toContain(refusal);

    // The device given back its id: valid (exit 0), the identity's rename said in the summary.
    renameSiteEntry(site.configPath, 'devices', 'v1-new', 'v1');
    const warned = check();
    expect(warned.stderr).toBe('');
    expect(warned.stdout).toMatch(
      /\n {2}renames {3}warning: identity "scada" is now "scada-line2" \(the same token [0-9a-f]+\): keys are scoped by the identity's name/,
    );
    expect(warned.stdout).not.toContain(TOKEN);
    expect(warned.status).toBe(0);

    renameSiteEntry(site.configPath, 'identities', 'scada-line2', 'scada');
    const clean = check();
    expect(clean.stdout).toContain(
      `  renames   no device or identity renamed against the journal ${journalPath}`,
    );
    expect(clean.status).toBe(0);
  }, 90_000);

  it("refuses a device renamed while its PLC's host is written another way, also against an earlier Sluice's record", () => {
    /** The site's one PLC entry's host set to `host`. */
    const plcHost = (host: string): void => {
      editSite(site.configPath, (s) => {
        for (const plc of Object.values(s.plcs as Record<string, { host: string }>)) {
          plc.host = host;
        }
      });
    };
    const refusal =
      'sluiced: configuration against the journal: invalid configuration:\n  devices.v1-new: has the address of device "v1" (modbus 127.0.0.1:';
    renameSiteEntry(site.configPath, 'devices', 'v1', 'v1-new');
    plcHost('::ffff:127.0.0.1');
    try {
      const refused = check();
      expect(refused.stderr).toContain(refusal);
      expect(refused.stderr).toContain('open-7 (identity scada, accepted)');
      expect(refused.status).toBe(2);

      // A record an earlier Sluice wrote gave the host as the configuration wrote it.
      const journal = SqliteJournal.open({ path: journalPath });
      let record: Record<string, string>;
      try {
        record = JSON.parse(journal.readMeta(DEVICE_ADDRESSES_META) ?? '{}') as Record<
          string,
          string
        >;
        expect(record.v1).toMatch(/^modbus 127\.0\.0\.1:\d+ unit 1, registers from 0$/);
        journal.writeMeta(
          DEVICE_ADDRESSES_META,
          JSON.stringify({
            v1: record.v1!.replace('modbus 127.0.0.1:', 'modbus ::ffff:127.0.0.1:'),
          }),
        );
      } finally {
        journal.close();
      }
      plcHost('127.0.0.1');
      const earlier = check();
      expect(earlier.stderr).toContain(refusal);
      expect(earlier.status).toBe(2);
    } finally {
      plcHost('127.0.0.1');
      renameSiteEntry(site.configPath, 'devices', 'v1-new', 'v1');
    }
  }, 60_000);

  it('says so of a journal it cannot read, and checks the configuration all the same', () => {
    const other = join(site.dir, 'not-a-journal.db');
    writeFileSync(
      other,
      'not an SQLite file, long enough to have a header of a hundred bytes '.repeat(3),
    );
    editSite(site.configPath, (s) => {
      s.journal = { path: other };
    });
    try {
      const run = runSluiced(['--config', site.configPath, '--check']);
      expect(run.stderr).toBe('');
      expect(run.stdout).toContain('configuration is valid (nothing was created)');
      expect(run.stdout).toContain(
        `  renames   the journal ${other} could not be read (SQLITE_NOTADB: file is not a database): renamed devices and identities are not checked here; the start checks them`,
      );
      expect(run.status).toBe(0);
    } finally {
      editSite(site.configPath, (s) => {
        delete s.journal;
      });
    }
  }, 30_000);
});
