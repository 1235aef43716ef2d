import { readFileSync, readdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseYamlText } from '../config/yaml-text.js';
import { ProfileError } from '../core/errors.js';
import { parseProfile, type DeviceProfile } from '../core/profile.js';

/** Reads and validates one YAML device profile. */
export function loadProfileFile(path: string): DeviceProfile {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    throw new ProfileError(path, [error instanceof Error ? error.message : String(error)]);
  }
  // As the site file's: one line per problem (the parser's own messages carry a code frame
  // over several lines), and an alias bomb refused rather than thrown.
  const yaml = parseYamlText(text);
  if (!yaml.ok) throw new ProfileError(path, yaml.errors);
  const data = yaml.value;
  const problem = notAProfile(data);
  if (problem !== null) throw new ProfileError(path, [problem]);
  return parseProfile(data, path);
}

/**
 * Why parsed YAML is not a device profile at all (null: it claims to be one). A profiles
 * folder is easily shared with other YAML files (the site file next to its profiles): such a
 * file is named as what it is, not taken apart field by field, and never skipped, since a
 * misspelt `profile:` key must not make a profile vanish.
 */
function notAProfile(data: unknown): string | null {
  const what =
    data === null || data === undefined
      ? 'the file is empty'
      : Array.isArray(data)
        ? 'the file is a YAML list'
        : typeof data !== 'object'
          ? 'the file is a single YAML value'
          : null;
  const keys = what === null ? Object.keys(data as object) : [];
  if (what === null && keys.includes('profile')) return null;
  const near = keys.find((k) => k !== 'profile' && editDistance(k.toLowerCase(), 'profile') <= 2);
  const found =
    what ??
    `no top-level "profile:" key (${near === undefined ? '' : `is "${near}:" a misspelling? `}top-level keys: ${keys.slice(0, 6).join(', ')}${keys.length > 6 ? ', …' : ''})`;
  return `not a device profile: ${found}. Every .yaml and .yml file in profilesDir must be a device profile: move other files out`;
}

/** Levenshtein distance, for naming a misspelt key. */
function editDistance(a: string, b: string): number {
  let row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i += 1) {
    const next = [i];
    for (let j = 1; j <= b.length; j += 1) {
      const substitution = (row[j - 1] ?? 0) + (a[i - 1] === b[j - 1] ? 0 : 1);
      next.push(Math.min((row[j] ?? 0) + 1, (next[j - 1] ?? 0) + 1, substitution));
    }
    row = next;
  }
  return row[b.length] ?? 0;
}

/**
 * Every `*.yaml` and `*.yml` file in a folder, by profile name, with every problem found: one
 * line per problem, each starting with its file. Every such file must be a device profile.
 */
export function readProfiles(dir: string): {
  profiles: Map<string, DeviceProfile>;
  errors: string[];
} {
  const profiles = new Map<string, DeviceProfile>();
  const files = new Map<string, string>();
  const errors: string[] = [];
  let names: string[];
  try {
    names = readdirSync(dir).sort();
  } catch (error) {
    return { profiles, errors: [error instanceof Error ? error.message : String(error)] };
  }
  for (const name of names) {
    if (!name.endsWith('.yaml') && !name.endsWith('.yml')) continue;
    const path = join(dir, name);
    let profile: DeviceProfile;
    try {
      profile = loadProfileFile(path);
    } catch (error) {
      if (!(error instanceof ProfileError)) throw error;
      errors.push(...error.errors.map((e) => `${path}: ${e}`));
      continue;
    }
    const other = files.get(profile.profile);
    if (other !== undefined) {
      errors.push(`${path}: duplicate profile name "${profile.profile}" (also in ${other})`);
      continue;
    }
    files.set(profile.profile, path);
    profiles.set(profile.profile, profile);
  }
  return { profiles, errors };
}

/** Every profile in a folder, by profile name; throws a ProfileError listing every problem. */
export function loadProfiles(dir: string): Map<string, DeviceProfile> {
  const { profiles, errors } = readProfiles(dir);
  if (errors.length > 0) throw new ProfileError(dir, errors);
  return profiles;
}

/** The profiles shipped with Sluice, in devices/profiles/ of the package. */
export function bundledProfilesDir(packageRoot: string): string {
  return resolve(packageRoot, 'devices', 'profiles');
}
