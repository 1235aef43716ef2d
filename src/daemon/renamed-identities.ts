import { createHash } from 'node:crypto';
import type { SluiceConfig } from '../config/config.js';
import { readMetaObject } from '../core/journal-meta.js';

/**
 * An identity renamed across a restart (SPEC §2: keys are scoped to the client identity).
 *
 * An identity's keys are journaled under its name. Renamed in the configuration with its
 * credential kept (the same token, certificate CN or MQTT intake), its clients are let in as
 * before, but under the new name: a retry of a key they sent before the restart is a new
 * command there, and may actuate the plant a second time (I1). The daemon cannot merge the two
 * scopes safely (the new name may already hold the same keys), nor tell a rename from a
 * credential handed to another client, so it says so at start, loudly and with both names.
 *
 * The journal does not hold the configuration, so each start records there (meta table) each
 * identity's credentials, as signatures that give no token away: a digest of the configured
 * tokenSha256, the token file's path, the certificate CN, the MQTT intake.
 */

export const IDENTITY_CREDENTIALS_META = 'identity-credentials';

/** The journal's part this check reads and writes (SqliteJournal). */
export interface IdentityCredentialJournal {
  readMeta(key: string): string | null;
  writeMeta(key: string, value: string): void;
}

/** What lets a client in as identity `name`: signatures comparable across starts. */
export function credentialSignatures(config: SluiceConfig, name: string): string[] {
  const identity = config.identities[name];
  if (identity === undefined) return [];
  const signatures: string[] = [];
  if (identity.tokenSha256 !== undefined) {
    // A digest of the digest: the journal is readable by the operators' group.
    const digest = createHash('sha256')
      .update(`sluice identity token ${identity.tokenSha256.toLowerCase()}`)
      .digest('hex')
      .slice(0, 24);
    signatures.push(`token ${digest}`);
  }
  if (identity.tokenFile !== undefined) signatures.push(`token file ${identity.tokenFile}`);
  if (identity.certificateCn !== undefined) {
    signatures.push(`certificate CN ${identity.certificateCn}`);
  }
  if (config.mqtt?.identity === name) signatures.push('the MQTT intake');
  return signatures;
}

export interface RenamedIdentity {
  readonly before: string;
  readonly now: string;
  /** What the two share (signatures: never a token). */
  readonly shared: readonly string[];
}

function recorded(
  journal: Pick<IdentityCredentialJournal, 'readMeta'>,
): Record<string, readonly string[]> {
  const value = readMetaObject(journal, IDENTITY_CREDENTIALS_META) ?? {};
  return Object.fromEntries(
    Object.entries(value).filter(
      (e): e is [string, string[]] =>
        Array.isArray(e[1]) && e[1].every((s) => typeof s === 'string'),
    ),
  );
}

/**
 * The identities the previous start knew by another name (the same credential), and this
 * configuration's credentials recorded for the next start.
 */
export function findRenamedIdentities(
  journal: IdentityCredentialJournal,
  config: SluiceConfig,
  // A record that cannot be written (a full disk) does not stop the start: the daemon fails
  // closed on such a journal and says so; the next start that can write records them.
  recordFailed: (error: unknown) => void,
): RenamedIdentity[] {
  const { renamed, before, now } = renamedIdentities(journal, config);
  const text = JSON.stringify(now);
  if (text !== JSON.stringify(before)) {
    try {
      journal.writeMeta(IDENTITY_CREDENTIALS_META, text);
    } catch (error) {
      recordFailed(error);
    }
  }
  return renamed;
}

/**
 * The identities the previous start knew by another name, reading only (`sluiced --check` as
 * the start), with the record read and the one this configuration makes.
 */
export function renamedIdentities(
  journal: Pick<IdentityCredentialJournal, 'readMeta'>,
  config: SluiceConfig,
): {
  renamed: RenamedIdentity[];
  before: Record<string, readonly string[]>;
  now: Record<string, string[]>;
} {
  const before = recorded(journal);
  const now = Object.fromEntries(
    Object.keys(config.identities).map((name) => [name, credentialSignatures(config, name)]),
  );
  const renamed: RenamedIdentity[] = [];
  for (const [former, signatures] of Object.entries(before)) {
    if (Object.hasOwn(config.identities, former)) continue;
    for (const [name, current] of Object.entries(now)) {
      const shared = signatures.filter((s) => current.includes(s));
      if (shared.length > 0) renamed.push({ before: former, now: name, shared });
    }
  }
  return { renamed, before, now };
}

/** The start's warning for one renamed identity. */
export function renamedIdentityMessage(r: RenamedIdentity, retentionHours: number): string {
  return `identity "${r.before}" is now "${r.now}" (the same ${r.shared.join(', ')}): keys are scoped by the identity's name, so a client's retry under "${r.now}" of a key it sent as "${r.before}" is a new command and may actuate again; the journal keeps "${r.before}"'s keys for journal.retentionHours (${retentionHours} h). Give the identity back its name "${r.before}", or make sure its clients retry none of the keys they sent before this restart`;
}
