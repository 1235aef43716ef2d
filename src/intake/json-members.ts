/**
 * JSON objects with a member name given twice. RFC 8259 §4 leaves their meaning to the parser:
 * `JSON.parse` keeps the last value, other parsers keep the first or refuse. A command such as
 * `{"device":"v1","action":"open","action":"close"}` would then be an open to a proxy, a policy
 * check or a log reader in front of the gateway and a close to Sluice. I-JSON (RFC 7493 §2.3)
 * forbids duplicate names; a command intake refuses them rather than pick one.
 */

/**
 * The first member name that appears twice in one object of `text`, or undefined. `text` must
 * be valid JSON (parse it first): this only walks its tokens. Names are compared decoded, so
 * `"action"` and `"\u0061ction"` are the same name.
 */
export function duplicateMember(text: string): string | undefined {
  // One entry per open object (its names so far) or array (null).
  const open: (Set<string> | null)[] = [];
  let nameNext = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22 /* " */) {
      let end = i + 1;
      while (text.charCodeAt(end) !== 0x22) end += text.charCodeAt(end) === 0x5c /* \ */ ? 2 : 1;
      const names = open.at(-1);
      if (nameNext && names) {
        const name = JSON.parse(text.slice(i, end + 1)) as string;
        if (names.has(name)) return name;
        names.add(name);
        nameNext = false;
      }
      i = end;
    } else if (c === 0x7b /* { */) {
      open.push(new Set());
      nameNext = true;
    } else if (c === 0x5b /* [ */) {
      open.push(null);
      nameNext = false;
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      open.pop();
      nameNext = false;
    } else if (c === 0x2c /* , */) {
      nameNext = open.at(-1) instanceof Set;
    }
  }
  return undefined;
}
