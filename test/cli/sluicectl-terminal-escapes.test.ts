import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { main } from '../../src/cli/main.js';
import { tempDir } from '../helpers/fixtures.js';
import { seedJournal, sluicectl, sluicectlInProcess } from './helpers.js';

/**
 * What an operator types is printed back without its control characters reaching the terminal.
 * A key (or a device, a scope, an option) pasted from a log or a message can hold an escape
 * sequence: echoed raw in "no command with key …", an OSC sequence retitled the terminal or
 * wrote into its clipboard, CSI 2J cleared the screen, a carriage return overwrote the line that
 * said what went wrong. sluicectl prints every control character (C0 but the line feed and tab,
 * DEL, C1) as \xHH, on stdout and stderr alike. A real journal (SQLite).
 */

const HOSTILE = 'k\x1b]0;owned\x07\x1b[2J\r\x9b31m';
const SHOWN = 'k\\x1b]0;owned\\x07\\x1b[2J\\x0d\\x9b31m';
let dir: string;
let cleanup: () => void;
let journal: string;

beforeAll(() => {
  ({ dir, cleanup } = tempDir('sluice-ctl-esc-'));
  journal = join(dir, 'journal.db');
  seedJournal(journal, Date.now());
});

afterAll(() => {
  cleanup();
});

/** A control character other than the line feed and tab: what must not reach a terminal. */
// eslint-disable-next-line no-control-regex -- finding them is the point
const CONTROL = /[\x00-\x08\x0b-\x1f\x7f-\x9f]/;

describe('sluicectl prints typed text escaped', () => {
  it.each([
    ['show', ['show', HOSTILE]],
    ['show --scope', ['show', '--scope', HOSTILE, 'any-key']],
    ['list --state', ['list', '--state', HOSTILE]],
    ['an unknown option', ['list', `--x${HOSTILE}`]],
    ['an unknown command', [HOSTILE]],
  ] as const)('%s', async (_name, words) => {
    const run = await sluicectlInProcess(['--journal', journal, ...words]);
    expect(run.code).not.toBe(0);
    expect(run.stdout + run.stderr).not.toMatch(CONTROL);
    expect(run.stdout + run.stderr).toContain(SHOWN);
  });

  it("on a terminal, sluicectl's own colours pass and nothing else does", async () => {
    let stdout = '';
    let stderr = '';
    const code = await main(['--journal', journal, 'list'], {
      stdout: { write: (t: string) => (stdout += t), isTTY: true },
      stderr: { write: (t: string) => (stderr += t) },
      env: {},
      now: () => Date.now(),
    });
    expect({ code, stderr }).toEqual({ code: 0, stderr: '' });
    // The seeded journal has confirmed and failed commands: painted green and red.
    expect(stdout).toContain('\x1b[32mconfirmed\x1b[39m');
    expect(stdout).toContain('\x1b[31mfailed\x1b[39m');
    // eslint-disable-next-line no-control-regex -- finding them is the point
    expect(stdout.replace(/\x1b\[(?:31|32|33|39|1|2|22)m/g, '')).not.toMatch(CONTROL);
  });

  it('the binary, as a process: what the terminal receives', async () => {
    const run = await sluicectl(['--journal', journal, 'show', HOSTILE]);
    expect(run.code).toBe(1);
    expect(run.stdout + run.stderr).not.toMatch(CONTROL);
    expect(run.stderr).toContain(`key "${SHOWN}"`);
  });
});
