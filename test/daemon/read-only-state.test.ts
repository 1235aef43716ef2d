import { spawnSync } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { loadConfig } from '../../src/config/config.js';
import { Daemon } from '../../src/daemon/daemon.js';
import type { Plant } from '../../simulators/plant.js';
import { cleanEnv, SLUICED } from '../config/sluiced.js';
import { startModbusPlant, writeDaemonSite } from '../helpers/daemon-site.js';
import { tempDir } from '../helpers/fixtures.js';
import { mountTmpfs, remount, tmpfsAvailable, unmount } from '../reliability/support.js';

/**
 * A first start with the state directory on a read-only filesystem (a gateway whose data
 * partition came up read-only after an fsck, an image mounted ro). sluiced exited 1 with
 * "cannot open the journal's lock file …: unable to open database file", or "ENOENT: no such
 * file or directory, mkdir" for a state directory still to be created: neither said the
 * filesystem was read-only. A real read-only tmpfs this test mounts; ground truth: the start's
 * error, the PLC's connections, and the filesystem left empty.
 */

const available = tmpfsAvailable();
let plant: Plant;
let dir: string;
let cleanup: () => void;
let configPath: string;
let mnt: string;
const quiet = pino({ level: 'silent' });

beforeAll(async () => {
  ({ dir, cleanup } = tempDir('sluice-rostate-'));
  plant = await startModbusPlant({ 'inlet-valve': { profile: 'valve', base: 0, travelMs: 0 } });
  configPath = await writeDaemonSite(dir, plant, 'rostate');
  mnt = join(dir, 'mnt');
  mkdirSync(mnt);
}, 30_000);

afterEach(() => {
  unmount(mnt);
});

afterAll(async () => {
  await plant.stop();
  cleanup();
});

/** The start's error with stateDir at `stateDir` (relative to the site's folder). */
async function startError(stateDir: string): Promise<string> {
  const site = parse(readFileSync(configPath, 'utf8')) as Record<string, unknown>;
  const path = join(dir, 'ro.yaml');
  writeFileSync(path, stringify({ ...site, stateDir }));
  const connections = plant.plc('mb').connectionsAccepted;
  let message = 'started';
  try {
    const daemon = await Daemon.start(loadConfig(path, { env: {} }), { logger: quiet });
    await daemon.stop();
  } catch (error) {
    message = (error as Error).message;
  }
  // It stopped before the drivers: nothing of it reached the PLC.
  expect(plant.plc('mb').connectionsAccepted).toBe(connections);
  return message;
}

describe.runIf(available)(
  'a first start with the state directory on a read-only filesystem',
  () => {
    it('says the filesystem is read-only, and where, when the state directory is there', async () => {
      mountTmpfs(mnt, '1m');
      remount(mnt, 'ro');
      expect(await startError('mnt')).toBe(
        `journal unavailable (open): the filesystem of ${mnt} is read-only, so ${join(mnt, 'journal.db.lock')} cannot be created to lock the journal (one daemon per journal); start sluiced again once it is writable`,
      );
      expect(readdirSync(mnt)).toEqual([]);
    });

    it('says so too when the state directory is still to be created', async () => {
      mountTmpfs(mnt, '1m');
      remount(mnt, 'ro');
      expect(await startError('mnt/state')).toBe(
        `stateDir ${join(mnt, 'state')} cannot be created: the filesystem of ${mnt} is read-only; start sluiced again once it is writable`,
      );
      expect(readdirSync(mnt)).toEqual([]);
    });

    // sluiced loaded node-opcua (seconds on a small gateway) for a site with an OPC UA PLC
    // before the journal refused the start: the refusal came seconds late, for nothing. The
    // process records at its exit whether node-opcua was ever loaded (require.cache), a preload
    // of the test's own; the refusal is the same, as is its exit code.
    it('sluiced refuses it before loading node-opcua, for a site with an OPC UA PLC', () => {
      mountTmpfs(mnt, '1m');
      remount(mnt, 'ro');
      const site = parse(readFileSync(configPath, 'utf8')) as {
        plcs: Record<string, unknown>;
        devices: Record<string, unknown>;
      };
      const path = join(dir, 'ro-opcua.yaml');
      writeFileSync(
        path,
        stringify({
          ...site,
          stateDir: 'mnt',
          plcs: {
            ...site.plcs,
            ua: {
              protocol: 'opcua',
              endpointUrl: 'opc.tcp://127.0.0.1:4840',
              namespaceUri: 'urn:sluice:sim:ua',
            },
          },
          devices: { ...site.devices, 'ua-valve': { plc: 'ua', profile: 'valve' } },
        }),
      );
      const probe = join(dir, 'loaded-node-opcua.cjs');
      const answer = join(dir, 'loaded-node-opcua');
      writeFileSync(
        probe,
        `process.on('exit', () => require('node:fs').writeFileSync(${JSON.stringify(answer)}, String(Object.keys(require.cache).some((m) => m.includes('/node_modules/node-opcua')))));\n`,
      );
      const run = spawnSync(process.execPath, ['--require', probe, ...SLUICED, '--config', path], {
        encoding: 'utf8',
        env: cleanEnv(),
        timeout: 60_000,
      });
      expect(run.status, run.stderr).toBe(1);
      const fatal = run.stdout
        .split('\n')
        .filter((line) => line.startsWith('{'))
        .map(
          (line) => JSON.parse(line) as { level: number; msg: string; err?: { message: string } },
        )
        .find((line) => line.level === 60);
      // As the daemon's own start says it (above), the lock file's error after it in the log.
      const refusal = `journal unavailable (open): the filesystem of ${mnt} is read-only, so ${join(mnt, 'journal.db.lock')} cannot be created to lock the journal (one daemon per journal); start sluiced again once it is writable`;
      expect(fatal?.msg).toBe('sluiced could not start');
      expect(fatal?.err?.message.slice(0, refusal.length)).toBe(refusal);
      expect(readFileSync(answer, 'utf8')).toBe('false');
      expect(readdirSync(mnt)).toEqual([]);
    }, 60_000);
  },
);
