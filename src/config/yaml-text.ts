import { LineCounter, isScalar, parseDocument, visit, type Document } from 'yaml';

/**
 * The YAML of a site file or a device profile, as data or as the problems an operator can act
 * on: one line each, `(yaml) line L, column C: what`, the way every other configuration error
 * is one line with its path.
 */

/**
 * Syntax errors listed at most. One mistake (a stray brace) makes the parser report every
 * token after it: sixty lines in which the one that matters is the first.
 */
const MAX_SYNTAX_ERRORS = 5;

export type YamlText = { ok: true; value: unknown } | { ok: false; errors: string[] };

export function parseYamlText(text: string): YamlText {
  // Duplicate keys are errors: the last of two `inlet-valve:` entries must not silently win.
  // Merge keys (`<<: *modbus`, YAML 1.1) are taken as operators write them for PLCs and devices
  // that share settings: off (YAML 1.2's default), `<<` was a key of its own, and the entry
  // was refused for a field it does set ("plcs.b.protocol: Invalid discriminator value").
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, {
    prettyErrors: true,
    uniqueKeys: true,
    merge: true,
    lineCounter,
  });
  if (doc.errors.length === 0) {
    const collisions = keyCollisions(doc, lineCounter);
    if (collisions.length > 0) return { ok: false, errors: collisions };
  }
  if (doc.errors.length > 0) {
    const errors = doc.errors.slice(0, MAX_SYNTAX_ERRORS).map((e) => {
      const at = e.linePos?.[0];
      // The message ends with its position and a code frame (prettyErrors): kept to one line.
      const what = (e.message.split('\n')[0] ?? '').replace(/ at line \d+, column \d+:?$/, '');
      return `(yaml) ${at === undefined ? '' : `line ${at.line}, column ${at.col}: `}${what}`;
    });
    const more = doc.errors.length - MAX_SYNTAX_ERRORS;
    if (more > 0) {
      errors.push(
        `(yaml) … and ${more} more YAML error(s) after these, which the first often causes: fix it, then check again`,
      );
    }
    return { ok: false, errors };
  }
  try {
    return { ok: true, value: doc.toJS() };
  } catch (error) {
    // toJS refuses aliases that expand past its bound (maxAliasCount, a "billion laughs"
    // file): thrown, it ended sluiced with a stack trace and exit 1, which systemd restarts.
    return {
      ok: false,
      errors: [
        `(yaml) ${error instanceof Error ? error.message : String(error)}: its aliases (*name) expand to too many values; write the repeated values out, or nest fewer aliases`,
      ],
    };
  }
}

/**
 * Keys YAML tells apart and the data does not: `101:` (a number) and `'101':` (a string) are two
 * keys to the parser's uniqueness check, but one property once the document is data, so the
 * second silently replaced the first (a device dropped, the other's settings kept). Each such
 * key after the first is named, with where it is. Merge keys (`<<`) are not keys of their own.
 */
function keyCollisions(doc: Document, lines: LineCounter): string[] {
  const errors: string[] = [];
  visit(doc, {
    Map(_, map) {
      const seen = new Map<string, string | number | boolean | bigint | null>();
      const shown = (v: string | number | boolean | bigint | null | undefined): string =>
        typeof v === 'string' ? JSON.stringify(v) : String(v);
      for (const pair of map.items) {
        const key = pair.key;
        if (!isScalar(key)) continue;
        // What the data makes of the key: its text; the merge key (a symbol) and other kinds
        // (a binary, a date) are left to the parser.
        const raw: unknown = key.value;
        const value =
          raw === null ||
          typeof raw === 'string' ||
          typeof raw === 'number' ||
          typeof raw === 'boolean' ||
          typeof raw === 'bigint'
            ? raw
            : undefined;
        if (value === undefined) continue;
        const name = value === null ? '' : String(value);
        if (!seen.has(name)) {
          seen.set(name, value);
          continue;
        }
        const at =
          key.range === undefined || key.range === null ? null : lines.linePos(key.range[0]);
        errors.push(
          `(yaml) ${at === null ? '' : `line ${at.line}, column ${at.col}: `}the key ${JSON.stringify(name)} is given twice in this map (as ${shown(seen.get(name))} and ${shown(value)}, which YAML tells apart by their type but the configuration reads as one): only the last would count; give it once`,
        );
      }
    },
  });
  return errors;
}
