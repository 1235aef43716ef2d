import { parseDocument } from 'yaml';

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
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true, merge: true });
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
