import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { ROOT } from '../helpers/fixtures.js';

/**
 * `npm run bench -- --help` (docs/PERFORMANCE.md, "Running it"), run as the page prints it: every
 * option on a line of its own, its description in one column after it, never run into it (the
 * longest, `--recovery-shipped / --no-recovery-shipped`, ran into its default until 2026-12-07).
 */
describe('npm run bench -- --help', () => {
  it('lists every option with its description in one column', () => {
    const out = execFileSync('npm', ['run', '--silent', 'bench', '--', '--help'], {
      cwd: ROOT,
      encoding: 'utf8',
      env: { ...process.env, NO_COLOR: '1' },
    });
    const lines = out.split('\n').filter((line) => line.startsWith('  --'));
    expect(lines.length).toBeGreaterThan(20);
    const columns = lines.map((line) => /^( {2}--\S.*?\S) {2,}(\S.*)$/.exec(line));
    for (const [i, match] of columns.entries()) {
      expect(match, `a line without its own column: ${lines[i] ?? ''}`).not.toBeNull();
    }
    const starts = new Set(lines.map((line, i) => line.length - (columns[i]?.[2]?.length ?? 0)));
    expect(starts.size).toBe(1);
    for (const flag of ['--valves N', '--recovery-shipped / --no-recovery-shipped', '--out DIR']) {
      expect(lines.some((line) => line.startsWith(`  ${flag} `))).toBe(true);
    }
    expect(out).toContain('default true (SLUICE_BENCH_RECOVERY_SHIPPED)');
  }, 30_000);
});
