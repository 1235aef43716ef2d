import { readFileSync, readdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parse } from 'yaml';
import { ProfileError } from '../core/errors.js';
import { parseProfile, type DeviceProfile } from '../core/profile.js';

/** Reads and validates one YAML device profile. */
export function loadProfileFile(path: string): DeviceProfile {
  let data: unknown;
  try {
    data = parse(readFileSync(path, 'utf8'));
  } catch (error) {
    throw new ProfileError(path, [error instanceof Error ? error.message : String(error)]);
  }
  return parseProfile(data, path);
}

/** Every `*.yaml` profile in a folder, by profile name. */
export function loadProfiles(dir: string): Map<string, DeviceProfile> {
  const profiles = new Map<string, DeviceProfile>();
  for (const name of readdirSync(dir).sort()) {
    if (!name.endsWith('.yaml') && !name.endsWith('.yml')) continue;
    const profile = loadProfileFile(join(dir, name));
    if (profiles.has(profile.profile)) {
      throw new ProfileError(join(dir, name), [`duplicate profile name "${profile.profile}"`]);
    }
    profiles.set(profile.profile, profile);
  }
  return profiles;
}

/** The profiles shipped with Sluice, in devices/profiles/ of the package. */
export function bundledProfilesDir(packageRoot: string): string {
  return resolve(packageRoot, 'devices', 'profiles');
}
