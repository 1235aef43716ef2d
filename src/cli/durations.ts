import { InvalidArgumentError } from 'commander';

/**
 * Durations as operators type them (`30s`, `5m`, `1h`, `2d`, `500ms`, also `1h30m`) and ages as
 * they read them (`3m12s ago`, `in 5s`): two units at most, like kubectl's AGE column.
 */

const UNIT_MS: Readonly<Record<string, number>> = {
  ms: 1,
  s: 1_000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
};

const PART = /(\d+(?:\.\d+)?)(ms|s|m|h|d)/gy;

/** Milliseconds from `30s`, `5m`, `1h`, `2d`, `500ms` or a sequence such as `1h30m`. */
export function parseDuration(text: string): number {
  const value = text.trim();
  if (value === '') throw new InvalidArgumentError('empty duration (e.g. 30s, 5m, 1h, 2d, 500ms)');
  PART.lastIndex = 0;
  let total = 0;
  let consumed = 0;
  for (let m = PART.exec(value); m !== null; m = PART.exec(value)) {
    total += Number(m[1]) * (UNIT_MS[m[2] ?? ''] ?? Number.NaN);
    consumed = PART.lastIndex;
  }
  if (consumed !== value.length || !Number.isFinite(total)) {
    throw new InvalidArgumentError(
      `"${text}" is not a duration: a number and a unit, e.g. 30s, 5m, 1h, 2d, 500ms (or 1h30m)`,
    );
  }
  return Math.round(total);
}

/** A duration in two units at most: `450ms`, `12s`, `3m12s`, `2h5m`, `3d4h`. */
export function formatDuration(ms: number): string {
  const abs = Math.abs(Math.round(ms));
  if (abs < 1_000) return `${abs}ms`;
  const s = Math.floor(abs / 1_000);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return two(m, 'm', s % 60, 's');
  const h = Math.floor(m / 60);
  if (h < 24) return two(h, 'h', m % 60, 'm');
  return two(Math.floor(h / 24), 'd', h % 24, 'h');
}

/**
 * A duration the operator gave, said back whole: `1s500ms`, `2h30m15s`. formatDuration's two
 * units would turn `--older-than 1500ms` into "older than 1s", a bound the listing did not use.
 */
export function exactDuration(ms: number): string {
  let rest = Math.abs(Math.round(ms));
  if (rest === 0) return '0ms';
  const parts: string[] = [];
  for (const unit of ['d', 'h', 'm', 's', 'ms']) {
    const size = UNIT_MS[unit] ?? 1;
    const n = Math.floor(rest / size);
    if (n > 0) parts.push(`${n}${unit}`);
    rest -= n * size;
  }
  return parts.join('');
}

function two(major: number, mu: string, minor: number, nu: string): string {
  return minor === 0 ? `${major}${mu}` : `${major}${mu}${minor}${nu}`;
}

/** `3m12s ago` for a past instant, `in 5s` for a future one (deadlines), relative to `now`. */
export function relative(at: number, now: number): string {
  const delta = now - at;
  return delta >= 0 ? `${formatDuration(delta)} ago` : `in ${formatDuration(-delta)}`;
}
