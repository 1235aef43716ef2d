/**
 * The words an operator's resolve journals as its outcome's detail, and how they are read back
 * (the same resolve asked again, `sluicectl show`, the status page).
 *
 * Written `resolved by "<who>": "<reason>"; <note>`: who and why are JSON strings, so that
 * neither can be read as the other nor as the note, whatever they hold. The operator's name
 * comes from the admin endpoint's `by` (any text) and the reason is the operator's own text:
 * journaled bare, as `resolved by <who>: <reason>; <note>` was until this form, `alice@gw-7`
 * with the reason `bob@gw-7: valve shut` read the same as `alice@gw-7: bob@gw-7` with
 * `valve shut`, and the second was answered as the first's retry; a line break in a reason
 * began a line of its own in `sluicectl show`. The note is the daemon's (writeNote,
 * operator-actions.ts) and ends the detail: what is known of the command's own write, read by
 * its ending (resolvedWriteWas).
 */

/**
 * How every note of writeNote begins: what follows an operator's reason in a resolve's detail,
 * so that the reason can be told from the note in the words of earlier versions.
 */
export const WRITE_NOTE_BEGINNINGS = [
  'nothing was written to the controller',
  "the operator's action wrote nothing to the controller",
] as const;

const RESOLVED_BY = 'resolved by ';

/** A resolve's detail: who, why, and the daemon's note of the command's write. */
export function resolveDetail(by: string, reason: string, note: string): string {
  return `${RESOLVED_BY}${JSON.stringify(by)}: ${JSON.stringify(reason)}; ${note}`;
}

export interface ResolveWords {
  readonly by: string;
  readonly reason: string;
  readonly note: string;
  /**
   * Journaled before who and why were quoted (`resolved by <who>: <reason>; <note>`): the
   * name is read up to its first ": " (no name sluicectl or the status page gave held one),
   * the reason up to the last note's beginning after a "; ".
   */
  readonly unquoted: boolean;
}

/** A JSON string at `at` in `text`: its value and where it ends, or null. */
function jsonStringAt(text: string, at: number): { value: string; end: number } | null {
  if (text[at] !== '"') return null;
  for (let i = at + 1; i < text.length; i += 1) {
    const c = text[i];
    if (c === '\\') i += 1;
    else if (c === '"') {
      try {
        const value: unknown = JSON.parse(text.slice(at, i + 1));
        return typeof value === 'string' ? { value, end: i + 1 } : null;
      } catch {
        return null;
      }
    }
  }
  return null;
}

/**
 * Who resolved, why, and the daemon's note, from a resolve's detail of this version or an
 * earlier one; null for any other detail.
 */
export function readResolveDetail(detail: string): ResolveWords | null {
  if (!detail.startsWith(RESOLVED_BY)) return null;
  const by = jsonStringAt(detail, RESOLVED_BY.length);
  if (by !== null && detail.startsWith(': ', by.end)) {
    const reason = jsonStringAt(detail, by.end + 2);
    if (reason !== null && detail.startsWith('; ', reason.end)) {
      const note = detail.slice(reason.end + 2);
      if (WRITE_NOTE_BEGINNINGS.some((b) => note.startsWith(b))) {
        return { by: by.value, reason: reason.value, note, unquoted: false };
      }
    }
  }
  return readUnquoted(detail.slice(RESOLVED_BY.length));
}

/** `<who>: <reason>; <note>`, as journaled before who and why were quoted. */
function readUnquoted(rest: string): ResolveWords | null {
  const colon = rest.indexOf(': ');
  if (colon <= 0) return null;
  // The note is the last "; " followed by a note's beginning: no note holds one of its own.
  let cut = -1;
  for (const beginning of WRITE_NOTE_BEGINNINGS) {
    cut = Math.max(cut, rest.lastIndexOf(`; ${beginning}`));
  }
  if (cut < colon + 2) return null;
  return {
    by: rest.slice(0, colon),
    reason: rest.slice(colon + 2, cut),
    note: rest.slice(cut + 2),
    unquoted: true,
  };
}

/**
 * Whether `detail` is the resolve of this operator with this reason, journaled by this version
 * (quoted: compared whole) or an earlier one. In the earlier words a detail that merely begins
 * with the reason and "; " (the reason "valve closed" against an earlier "valve closed; checked")
 * is another operator's request; so is one whose rest begins as a note but goes on, after a
 * "; ", with another note's beginning: that rest is the end of the earlier reason ("valve
 * closed; nothing was written to the controller by the fitter") and then the note.
 */
export function isResolveOf(detail: string, by: string, reason: string): boolean {
  const words = readResolveDetail(detail);
  if (words === null) return false;
  if (!words.unquoted) return words.by === by && words.reason === reason;
  if (words.by !== by) return false;
  const prefix = `${RESOLVED_BY}${by}: ${reason}; `;
  if (!detail.startsWith(prefix)) return false;
  const note = detail.slice(prefix.length);
  return (
    WRITE_NOTE_BEGINNINGS.some((beginning) => note.startsWith(beginning)) &&
    !WRITE_NOTE_BEGINNINGS.some((beginning) => note.includes(`; ${beginning}`))
  );
}
