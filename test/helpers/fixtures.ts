import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { DeviceProfile } from '../../src/core/profile.js';
import { loadProfiles } from '../../src/profiles/load.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';

export const ROOT = resolve(fileURLToPath(new URL('../..', import.meta.url)));
export const PROFILES = loadProfiles(join(ROOT, 'devices', 'profiles'));

export function profile(name: 'valve' | 'actuator'): DeviceProfile {
  const p = PROFILES.get(name);
  if (p === undefined) throw new Error(`no profile ${name}`);
  return p;
}

/** A fresh directory per test; removed by the returned cleanup. */
export function tempDir(prefix = 'sluice-test-'): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return {
    dir,
    cleanup: () => {
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export function openJournal(path: string): SqliteJournal {
  return SqliteJournal.open({ path, busyTimeoutMs: 500 });
}
