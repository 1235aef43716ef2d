/**
 * Human output: aligned columns (kubectl's habit: upper-case headers, two spaces between
 * columns, `-` for nothing) and colour only when it can be seen — stdout is a TTY, `--no-color`
 * was not given and NO_COLOR is not set (https://no-color.org).
 */

export type Tone = 'good' | 'warn' | 'bad' | 'dim' | 'bold';

const ANSI: Readonly<Record<Tone, [string, string]>> = {
  good: ['\x1b[32m', '\x1b[39m'],
  warn: ['\x1b[33m', '\x1b[39m'],
  bad: ['\x1b[31m', '\x1b[39m'],
  dim: ['\x1b[2m', '\x1b[22m'],
  bold: ['\x1b[1m', '\x1b[22m'],
};

export class Style {
  constructor(readonly colour: boolean) {}

  static for(stream: { isTTY?: boolean }, noColorFlag: boolean, env: NodeJS.ProcessEnv): Style {
    const noColorEnv = env.NO_COLOR !== undefined && env.NO_COLOR !== '';
    return new Style(stream.isTTY === true && !noColorFlag && !noColorEnv);
  }

  paint(text: string, tone: Tone | null): string {
    if (!this.colour || tone === null) return text;
    const [on, off] = ANSI[tone];
    return `${on}${text}${off}`;
  }

  /** The tone of a command state: confirmed green, rejected yellow, failed red, open plain. */
  state(state: string): string {
    return this.paint(state, stateTone(state));
  }
}

export function stateTone(state: string): Tone | null {
  switch (state) {
    case 'confirmed':
      return 'good';
    case 'rejected':
      return 'warn';
    case 'failed':
      return 'bad';
    default:
      return null;
  }
}

export interface Column<T> {
  readonly header: string;
  /** The cell's text, raw: control characters are neutralised here, never obeyed. */
  readonly value: (row: T) => string;
  readonly tone?: (row: T) => Tone | null;
  /** Numbers read better right-aligned. */
  readonly align?: 'left' | 'right';
}

/** Rows under upper-case headers, every column as wide as its widest cell. */
export function renderTable<T>(
  columns: readonly Column<T>[],
  rows: readonly T[],
  style: Style,
  indent = '',
): string {
  const cells = rows.map((row) => columns.map((c) => clean(c.value(row))));
  const widths = columns.map((c, i) =>
    Math.max(c.header.length, ...cells.map((r) => (r[i] ?? '').length)),
  );
  const line = (values: readonly string[], tones: readonly (Tone | null)[]): string =>
    values
      .map((v, i) => {
        const pad = ' '.repeat(Math.max(0, (widths[i] ?? 0) - v.length));
        const painted = style.paint(v, tones[i] ?? null);
        if (columns[i]?.align === 'right') return pad + painted;
        return i === values.length - 1 ? painted : painted + pad;
      })
      .join('  ')
      .replace(/^/, indent)
      .trimEnd();
  return [
    line(
      columns.map((c) => c.header.toUpperCase()),
      columns.map(() => null),
    ),
    ...cells.map((r, n) =>
      line(
        r,
        columns.map((c) => {
          const row = rows[n];
          return row === undefined || c.tone === undefined ? null : c.tone(row);
        }),
      ),
    ),
    '',
  ].join('\n');
}

export type Field = readonly [label: string, value: string, tone?: Tone | null];

/** `label  value` lines with the labels aligned (one object: a command, the gateway clock). */
export function renderFields(fields: readonly Field[], style: Style, indent = '  '): string {
  const width = Math.max(0, ...fields.map(([k]) => k.length));
  return fields
    .map(([k, v, tone]) => `${indent}${k.padEnd(width)}  ${style.paint(clean(v), tone ?? null)}`)
    .map((l) => l.trimEnd())
    .join('\n')
    .concat('\n');
}

/**
 * One line of plain text: line breaks and tabs become spaces, other control characters
 * (an escape sequence in a key or a detail) are shown as `?`, never sent to the terminal.
 */
export function clean(text: string): string {
  // eslint-disable-next-line no-control-regex -- replacing them is the point
  return text.replace(/[\r\n\t]/g, ' ').replace(/[\x00-\x08\x0b-\x1f\x7f-\x9f]/g, '?');
}

export const dash = (value: string | number | null | undefined): string =>
  value === null || value === undefined || value === '' ? '-' : String(value);
