import type { SluiceConfig } from '../config/config.js';
import { readJournalForCheck } from '../journal/check-reader.js';
import { identityRenameCheck, recordedIdentityRenames } from './identity-renames.js';
import { renamedDeviceErrors } from './renamed-devices.js';
import { renamedIdentities, renamedIdentityMessage } from './renamed-identities.js';

/**
 * The start's two checks of the configuration against the journal's records, as
 * `sluiced --check` runs them before a restart (the operator's last look): a device renamed
 * while the journal holds open commands of its former id, which the start refuses (exit 2,
 * renamed-devices.ts), and an identity renamed with its credential kept, which the start warns
 * of (renamed-identities.ts). The journal is read and never written (check-reader.ts); one that
 * is not there has nothing to compare, and one that cannot be read is said, the rest of the
 * configuration checked all the same.
 */
export interface RenameCheck {
  /** What the start would refuse the configuration for (ConfigError's lines). */
  readonly errors: readonly string[];
  /** What the check says besides: the warnings, or that nothing was found, or not read. */
  readonly lines: readonly string[];
}

export function checkRenames(config: SluiceConfig, journalPath: string): RenameCheck {
  const reading = readJournalForCheck(journalPath);
  switch (reading.kind) {
    case 'none':
      // The summary says so already ("journal: none yet, created at start").
      return { errors: [], lines: [] };
    case 'unreadable':
      return { errors: [], lines: [notRead(journalPath, reading.why)] };
    case 'read':
      break;
  }
  const { reader } = reading;
  try {
    const { errors } = renamedDeviceErrors(reader, config);
    const { renamed } = renamedIdentities(reader, config);
    const warnings = renamed.map(
      (r) => `warning: ${renamedIdentityMessage(r, config.journal.retentionHours)}`,
    );
    // Renames found by an earlier start, whose former name's keys the journal still keeps
    // (carried on to a name this configuration renames again).
    for (const n of recordedIdentityRenames(reader, config, Date.now(), renamed)) {
      if (renamed.some((r) => r.before === n.before && r.now === n.now)) continue;
      warnings.push(`warning: identity "${n.now}": ${identityRenameCheck(n).detail}`);
    }
    if (errors.length === 0 && warnings.length === 0) {
      return {
        errors,
        lines: [`no device or identity renamed against the journal ${journalPath}`],
      };
    }
    return { errors, lines: warnings };
  } catch (error) {
    return { errors: [], lines: [notRead(journalPath, messageOf(error))] };
  } finally {
    reader.close();
  }
}

function notRead(path: string, why: string): string {
  return `the journal ${path} could not be read (${why}): renamed devices and identities are not checked here; the start checks them`;
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
