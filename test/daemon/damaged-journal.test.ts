import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { parse, stringify } from 'yaml';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { Daemon } from '../../src/daemon/daemon.js';
import type { Plant } from '../../simulators/plant.js';
import { startSluiced } from '../config/sluiced.js';
import { startModbusPlant, writeDaemonSite } from '../helpers/daemon-site.js';
import { journalWithDamagedKeyIndex } from '../helpers/damaged-journal.js';
import {
  failingDisk,
  journalLeftByKilledDaemon,
  type FailingDisk,
} from '../helpers/failing-disk.js';
import { tempDir } from '../helpers/fixtures.js';
import { tmpfsAvailable } from '../reliability/support.js';

/**
 * A journal whose header is intact but one of whose pages is damaged (a torn write on a power
 * cut, a failing SD card) opened without an error: SQLite meets a damaged page only when a
 * statement reads it. sluiced started on it, and the keys and open commands on that page were
 * lost to it (I1, I5) while every other command went on. It must refuse to start, naming the
 * file, what is wrong and what to do, before it connects to anything, and leave the file as it
 * is. The journal is made by a real daemon and the journal's own code; the damage is garbage
 * written into one page of the file; ground truth: the file's bytes and the PLC's connections.
 * And a journal the disk cannot read all of (an I/O error: a failing sector): the check that read
 * error stops must not pass it, and the refusal names the I/O failure, exit 3 as for damage. The
 * disk is a real one that fails reads (test/helpers/failing-disk.ts: an ext4 image on a loop
 * device cut short inside the journal's log, whose reads past the cut the kernel fails, EIO).
 * The journal of a daemon killed before SQLite's first checkpoint, whose file holds no schema
 * version (its log holds it, and every command), too: taken for another program's file, it was
 * passed unchecked ("journal checked"), and the open that followed called it damaged.
 */

let plant: Plant;
let dir: string;
let cleanup: () => void;
let configPath: string;

beforeAll(async () => {
  ({ dir, cleanup } = tempDir('sluice-damaged-'));
  plant = await startModbusPlant({ 'inlet-valve': { profile: 'valve', base: 0, travelMs: 0 } });
  configPath = await writeDaemonSite(dir, plant, 'damaged');
}, 30_000);

afterAll(async () => {
  await plant.stop();
  cleanup();
});

describe('a journal with a damaged page', () => {
  it('sluiced refuses to start on it, says which file, what is wrong and what to do, and leaves it as it is', async () => {
    const path = join(dir, 'state', 'journal.db');
    const daemon = await Daemon.start(loadConfig(configPath, { env: {} }), {
      logger: pino({ level: 'silent' }),
    });
    try {
      const claim = daemon.pipeline.submit({
        key: 'before-damage',
        identity: { scope: 'ops', devices: 'all' },
        intake: 'test',
        request: {
          device: 'inlet-valve',
          action: 'open',
          position: null,
          issuedAt: null,
          ttlMs: 30_000,
        },
      });
      expect(await daemon.pipeline.waitForSettled(claim.record, 10_000)).toMatchObject({
        state: 'confirmed',
      });
    } finally {
      await daemon.stop();
    }
    journalWithDamagedKeyIndex(path);
    const damaged = readFileSync(path);
    const connections = plant.plc('mb').connectionsAccepted;

    const sluiced = startSluiced(['--config', configPath]);
    try {
      const outcome = await Promise.race([
        sluiced.exited.then((code) => `exited ${String(code)}`),
        sluiced
          .line((l) => l.includes('"msg":"sluiced started"'), 30_000)
          .then(
            () => 'started',
            () => 'neither',
          ),
      ]);
      // 3: the unit does not restart on it (RestartPreventExitStatus): no restart mends it.
      expect(outcome).toBe('exited 3');
    } finally {
      await sluiced.kill();
    }
    const refused = sluiced.lines.find((l) =>
      l.includes(
        '"msg":"sluiced could not start, and a restart cannot mend it: an operator must act"',
      ),
    );
    expect(refused).toContain(`${path} is damaged`);
    expect(refused).toMatch(/Restore the journal from a backup, or move it aside/);
    // Nothing of it reached the PLC, and the file is as it was.
    expect(plant.plc('mb').connectionsAccepted).toBe(connections);
    expect(readFileSync(path).equals(damaged)).toBe(true);
  }, 60_000);
});

describe.runIf(tmpfsAvailable())('a journal the disk cannot read', () => {
  let disk: FailingDisk | null = null;
  let site: { dir: string; cleanup: () => void } | null = null;
  afterEach(() => {
    disk?.remove();
    disk = null;
    site?.cleanup();
    site = null;
  });

  /**
   * sluiced started on what a killed daemon leaves on a disk that fails reads past the middle of
   * its log: its journal, and commits in its log (-wal) not yet copied into the file. The first
   * connection's open reads the whole log. `beforeFirstCheckpoint`: killed before SQLite's first
   * checkpoint, the file holds no schema version, the log everything.
   */
  async function startOnUnreadableLog(
    beforeFirstCheckpoint: boolean,
  ): Promise<{ outcome: string; lines: string[]; path: string; connections: number }> {
    site = tempDir('sluice-unreadable-');
    const configPath = await writeDaemonSite(site.dir, plant, 'unreadable');
    const files = await journalLeftByKilledDaemon(
      join(site.dir, 'source.db'),
      beforeFirstCheckpoint,
    );
    // Its schema version where the start's check looks for it first: the file's header.
    expect(files[0]!.data.readUInt32BE(60) === 0).toBe(beforeFirstCheckpoint);
    disk = failingDisk(site.dir, files);
    const config = parse(readFileSync(configPath, 'utf8')) as Record<string, unknown>;
    config.stateDir = disk.folder;
    writeFileSync(configPath, stringify(config));
    disk.failReadsFrom('journal.db-wal', files[1]!.data.length / 2);
    const connections = plant.plc('mb').connectionsAccepted;

    const sluiced = startSluiced(['--config', configPath]);
    let outcome: string;
    try {
      outcome = await Promise.race([
        sluiced.exited.then((code) => `exited ${String(code)}`),
        sluiced
          .line((l) => l.includes('"msg":"sluiced started"'), 30_000)
          .then(
            () => 'started',
            () => 'neither',
          ),
      ]);
    } finally {
      await sluiced.kill();
    }
    return { outcome, lines: sluiced.lines, path: join(disk.folder, 'journal.db'), connections };
  }

  for (const beforeFirstCheckpoint of [false, true]) {
    const whose = beforeFirstCheckpoint
      ? 'of a daemon killed before its first checkpoint (its schema version in its log alone)'
      : 'of a killed daemon';
    it(`sluiced refuses to start on it (exit 3), saying the disk failed a read of it, and never connects to the PLC: the journal ${whose}`, async () => {
      const { outcome, lines, path, connections } =
        await startOnUnreadableLog(beforeFirstCheckpoint);
      // 3: the unit does not restart on it: each start would read the failing disk again.
      expect(outcome).toBe('exited 3');
      const refused = lines.find((l) =>
        l.includes(
          '"msg":"sluiced could not start, and a restart cannot mend it: an operator must act"',
        ),
      );
      expect(refused).toContain(
        `${path} cannot be read: an I/O error, the disk failed to read part of it or of its -wal file (SQLite's check: SQLITE_IOERR_CORRUPTFS`,
      );
      expect(refused).not.toContain('is damaged');
      // The check did not pass it, and nothing of it reached the PLC.
      expect(lines.some((l) => l.includes('"msg":"journal checked'))).toBe(false);
      expect(plant.plc('mb').connectionsAccepted).toBe(connections);
    }, 60_000);
  }
});
