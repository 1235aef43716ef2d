import type { SluiceConfig } from '../config/config.js';
import { readMetaObject } from '../core/journal-meta.js';
import type { RenamedIdentity } from './renamed-identities.js';

/**
 * An identity renamed with its credential kept, for as long as it matters: while the journal
 * still holds keys of its former name (renamed-identities.ts finds the rename, at the start
 * that follows it, and warns in the log). A client's retry under the new name of a key it sent
 * under the former one is a new command, and may actuate again (I1), for as long as that key
 * would have been replayed: until the journal purges it, journal.retentionHours after it
 * settled. The log's warning was said once, at one start; /readyz, sluicectl health and the
 * STATUS= line now say it (as a note: the gateway is ready) until then, across restarts.
 *
 * The journal's meta table keeps the renames (the rename itself is found only once: the next
 * start records the new name's credentials). One is dropped once it no longer matters: its
 * former name configured again (retries under it replay again), its new name gone, or no key of
 * its former name left in the journal. A new name renamed in turn carries the rename on: with
 * "scada" renamed "scda" and then "scda" renamed "scada-2", "scada"'s keys are still kept and
 * its clients are "scada-2"'s now (withFound).
 */

export const IDENTITY_RENAMES_META = 'identity-renames';

/** The journal's part this reads and writes (SqliteJournal). */
export interface IdentityRenameJournal {
  readMeta(key: string): string | null;
  writeMeta(key: string, value: string): void;
  scopeKeys(scope: string): { count: number; open: number; lastSettledAt: number | null };
}

interface Recorded {
  readonly before: string;
  readonly now: string;
  readonly shared: readonly string[];
  /** When the start that found it ran (ISO 8601). */
  readonly since: string;
}

export interface IdentityRenameNotice extends Recorded {
  /** Keys of the former name the journal holds, and how many of them are open. */
  readonly keys: number;
  readonly open: number;
  /**
   * When the last of them is purged (ms since the epoch): retentionHours after the last settled
   * one; while some are open, not before retentionHours from now.
   */
  readonly until: number;
}

function recorded(journal: Pick<IdentityRenameJournal, 'readMeta'>): Recorded[] {
  const list = readMetaObject(journal, IDENTITY_RENAMES_META)?.renames;
  if (!Array.isArray(list)) return [];
  return list.filter(
    (r): r is Recorded =>
      typeof r === 'object' &&
      r !== null &&
      typeof (r as Recorded).before === 'string' &&
      typeof (r as Recorded).now === 'string' &&
      typeof (r as Recorded).since === 'string' &&
      Array.isArray((r as Recorded).shared),
  );
}

/**
 * The renames recorded, with those found at this start (`since`) put in, and each recorded one
 * whose new name was renamed again carried on to the newest name: "scada" → "scda" recorded and
 * "scda" → "scada-2" found make "scada" → "scada-2" as well. The one before is dropped by
 * standing() (its new name is gone); without the carried one nothing would be said of "scada"'s
 * keys, which are kept all the same.
 */
function withFound(
  before: readonly Recorded[],
  found: readonly RenamedIdentity[],
  since: string,
): Recorded[] {
  const all: Recorded[] = [...before];
  const put = (entry: Recorded): void => {
    const known = all.findIndex((r) => r.before === entry.before && r.now === entry.now);
    if (known === -1) all.push(entry);
    else all[known] = entry;
  };
  for (const f of found) {
    put({ before: f.before, now: f.now, shared: f.shared, since });
    for (const r of before) {
      if (r.now === f.before && r.before !== f.now) {
        put({ before: r.before, now: f.now, shared: f.shared, since });
      }
    }
  }
  return all;
}

/** The rename as it stands now: null when it no longer matters. */
function standing(
  journal: Pick<IdentityRenameJournal, 'scopeKeys'>,
  config: SluiceConfig,
  r: Recorded,
  nowMs: number,
): IdentityRenameNotice | null {
  if (Object.hasOwn(config.identities, r.before)) return null;
  if (!Object.hasOwn(config.identities, r.now)) return null;
  const { count, open, lastSettledAt } = journal.scopeKeys(r.before);
  if (count === 0) return null;
  const retentionMs = config.journal.retentionHours * 3_600_000;
  const until = Math.max(open > 0 ? nowMs : 0, lastSettledAt ?? nowMs) + retentionMs;
  return { ...r, keys: count, open, until };
}

/**
 * The renames recorded by earlier starts that still matter for `config`, carried on by those
 * `found` against it (withFound), reading only (`sluiced --check`).
 */
export function recordedIdentityRenames(
  journal: Pick<IdentityRenameJournal, 'readMeta' | 'scopeKeys'>,
  config: SluiceConfig,
  nowMs: number,
  found: readonly RenamedIdentity[] = [],
): IdentityRenameNotice[] {
  const since = new Date(nowMs).toISOString();
  return withFound(recorded(journal), found, since).flatMap((r) => {
    const n = standing(journal, config, r, nowMs);
    return n === null ? [] : [n];
  });
}

/**
 * The renames that still matter, those found at this start among them, and the record for the
 * next start (written when it changed; a record that cannot be written is said by
 * `recordFailed`, and the start goes on).
 */
export function identityRenamesInForce(
  journal: IdentityRenameJournal,
  config: SluiceConfig,
  found: readonly RenamedIdentity[],
  nowMs: number,
  recordFailed: (error: unknown) => void,
): IdentityRenameNotice[] {
  const before = recorded(journal);
  const all = withFound(before, found, new Date(nowMs).toISOString());
  const notices = all.flatMap((r) => {
    const n = standing(journal, config, r, nowMs);
    return n === null ? [] : [n];
  });
  const kept: Recorded[] = notices.map(({ before: b, now, shared, since: s }) => ({
    before: b,
    now,
    shared,
    since: s,
  }));
  const text = JSON.stringify({ renames: kept });
  if (text !== JSON.stringify({ renames: before })) {
    try {
      journal.writeMeta(IDENTITY_RENAMES_META, text);
    } catch (error) {
      recordFailed(error);
    }
  }
  return notices;
}

/**
 * The renames in force while the daemon runs: looked at again (a read of the whole table) only
 * once the time the last key of one was to be purged has passed.
 */
export class IdentityRenames {
  private notices: IdentityRenameNotice[];

  constructor(
    private readonly journal: IdentityRenameJournal,
    private readonly config: SluiceConfig,
    notices: readonly IdentityRenameNotice[],
    private readonly now: () => number = Date.now,
  ) {
    this.notices = [...notices];
  }

  current(): readonly IdentityRenameNotice[] {
    const nowMs = this.now();
    if (this.notices.some((n) => n.until <= nowMs)) {
      this.notices = this.notices.flatMap((n) => {
        if (n.until > nowMs) return [n];
        try {
          const again = standing(this.journal, this.config, n, nowMs);
          return again === null ? [] : [again];
        } catch {
          // The journal cannot be read now: kept, looked at again next time.
          return [n];
        }
      });
    }
    return this.notices;
  }
}

/** /readyz's and sluicectl health's words for one rename, and the STATUS= line's note. */
export function identityRenameCheck(n: IdentityRenameNotice): { detail: string; note: string } {
  const until = `${new Date(n.until).toISOString().slice(0, 16)}Z`;
  const open = n.open > 0 ? `, ${n.open} of them open` : '';
  return {
    detail: `renamed from "${n.before}" (the same ${n.shared.join(', ')}; found at the start of ${n.since}): keys are scoped by the identity's name, and the journal holds ${n.keys} key(s) of "${n.before}"${open}, kept until about ${until} (journal.retentionHours after the last settles). Until then a client's retry under "${n.now}" of a key it sent as "${n.before}" is a new command and may actuate again. Give the identity back its name "${n.before}", or make sure its clients retry none of the keys they sent before the rename`,
    note: `identity "${n.before}" renamed "${n.now}": its clients' retries of keys sent as "${n.before}" would run again, until about ${until}`,
  };
}
