import type { Io } from './context.js';

/**
 * Everything sluicectl writes goes through here: text an operator typed (a key, a device, a
 * scope, an unknown option) is echoed in its messages, and text from the journal or the daemon
 * in its tables and lines, and any of it can hold an escape sequence (an OSC that retitles the
 * terminal or writes its clipboard, CSI 2J that clears it, a carriage return that overwrites
 * the line saying what went wrong). Table cells already show control characters as `?`
 * (table.ts clean); whatever reaches a stream here with one left is shown as `\xHH`: C0 but the
 * line feed and the tab, DEL and C1 (0x9b is a CSI on terminals that take 8-bit controls).
 * The only escape sequences let through are sluicectl's own colours (table.ts Style), and only
 * when it paints.
 */

// eslint-disable-next-line no-control-regex -- matching them is the point
const CONTROL = /[\x00-\x08\x0b-\x1f\x7f-\x9f]/g;
/** Style's SGR sequences: the foreground colours, bold, dim and their resets. */
// eslint-disable-next-line no-control-regex -- as above
const OWN_COLOUR = /\x1b\[(?:31|32|33|39|1|2|22)m/g;

function hex(c: string): string {
  return `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`;
}

/** `text` with every control character but `\n` and `\t` shown as `\xHH`. */
export function escapeControls(text: string): string {
  return text.replace(CONTROL, hex);
}

/** Like escapeControls, but Style's own colour sequences pass. */
function escapeButColour(text: string): string {
  let out = '';
  let from = 0;
  for (const m of text.matchAll(OWN_COLOUR)) {
    out += escapeControls(text.slice(from, m.index)) + m[0];
    from = m.index + m[0].length;
  }
  return out + escapeControls(text.slice(from));
}

/**
 * `io` with its two streams escaped. stdout keeps sluicectl's colours when `colour` says they
 * may be painted (a TTY, no --no-color or NO_COLOR: Style.for); stderr is never painted.
 */
export function terminalSafe(io: Io, colour: boolean): Io {
  const stdout = io.stdout;
  const stderr = io.stderr;
  return {
    ...io,
    stdout: {
      write: (text: string) => stdout.write(colour ? escapeButColour(text) : escapeControls(text)),
      ...(stdout.isTTY === undefined ? {} : { isTTY: stdout.isTTY }),
    },
    stderr: { write: (text: string) => stderr.write(escapeControls(text)) },
  };
}
