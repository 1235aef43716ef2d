import { mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../src/config/config.js';
import { loadProfiles } from '../../src/profiles/load.js';
import { ROOT, tempDir } from '../helpers/fixtures.js';
import { runSluiced } from './sluiced.js';

/**
 * A profile's states, each of which the controller must be able to report. A status word
 * decoded by `bits` with no rule for a state was taken: without its FAULT and LOCAL rules, the
 * limit-switch valve read CLOSED when faulted at its closed limit (a reset there a no-op,
 * "confirmed" without a write) and CLOSED when in LOCAL (an open was written to it). Refused
 * now, as a state without a state code is; so is a rule that earlier rules always match first
 * (its state never read: a valve faulted between its limits read STOPPED, one in LOCAL read as
 * its limit switches). And a state named like a member of every object
 * (`constructor`) crashed `sluiced --check` with a TypeError (exit 1) where its missing cells
 * are refused like any state's (exit 2). The real configuration loader (loadConfig) on profiles
 * written to disk, the real `sluiced --check` process, and the bundled profiles.
 */

const BUNDLED = join(ROOT, 'devices', 'profiles');

let dir: string;
let cleanup: () => void;
beforeEach(() => {
  ({ dir, cleanup } = tempDir('sluice-profile-states-'));
});
afterEach(() => {
  cleanup();
});

/** The bundled profiles copied to `profiles/`, the limit-switch valve's text changed by `edit`. */
function limitSwitchWith(edit: (text: string) => string): { profilesDir: string; file: string } {
  const profilesDir = join(dir, 'profiles');
  mkdirSync(profilesDir, { recursive: true });
  for (const name of readdirSync(BUNDLED)) {
    const text = readFileSync(join(BUNDLED, name), 'utf8');
    writeFileSync(join(profilesDir, name), name === 'limit-switch-valve.yaml' ? edit(text) : text);
  }
  return { profilesDir, file: join(profilesDir, 'limit-switch-valve.yaml') };
}

function site(profilesDir: string): string {
  const path = join(dir, 'sluice.yaml');
  writeFileSync(
    path,
    `profilesDir: ${profilesDir}
gatewayId: g1
stateDir: state
mqtt: { url: mqtt://127.0.0.1:1883, identity: plant }
identities:
  plant: { devices: ['*'] }
plcs:
  p1: { protocol: modbus, host: 127.0.0.1, port: 502 }
devices:
  drain-valve: { plc: p1, profile: limit-switch-valve, base: 0 }
`,
  );
  return path;
}

function errorsOf(path: string): string[] {
  try {
    loadConfig(path, { env: {} });
  } catch (error) {
    if (error instanceof ConfigError) return [...error.errors];
    throw error;
  }
  throw new Error('expected a ConfigError');
}

describe('a status word decoded by bits', () => {
  it('refuses a state without a bit rule, naming the file, the path and the state never read; the bundled profiles pass', () => {
    const { profilesDir, file } = limitSwitchWith((text) =>
      text
        .replace(/^ +FAULT: \{ set: \[2\] \}\n/m, '')
        .replace(/^ +LOCAL: \{ set: \[5\] \}\n/m, ''),
    );
    const text = readFileSync(file, 'utf8');
    expect(text).not.toContain('FAULT: { set: [2] }');
    expect(text).not.toContain('LOCAL: { set: [5] }');
    const messages = ['FAULT', 'LOCAL'].map(
      (state) =>
        `profilesDir: ${file}: modbus.status.state.bits.${state}: missing bit rule: the device would never be read as ${state} (give each state the bits the controller reports it by)`,
    );
    expect(errorsOf(site(profilesDir))).toEqual(messages);
    const r = runSluiced(['--config', site(profilesDir), '--check']);
    for (const message of messages) expect(r.stderr).toContain(message);
    expect(r.stdout).toBe('');
    expect(r.status).toBe(2);

    // The bundled profiles have a rule for every state, and load with the example site.
    const shipped = loadProfiles(BUNDLED);
    for (const [name, p] of shipped) {
      const bits = p.modbus?.status.state.bits;
      if (bits !== undefined) expect(Object.keys(bits).sort(), name).toEqual([...p.states].sort());
    }
    expect(shipped.get('limit-switch-valve')?.modbus?.status.state.bits).toBeDefined();
    expect(() => loadConfig(join(ROOT, 'devices', 'site.example.yaml'), { env: {} })).not.toThrow();
  }, 30_000);
});

describe('a bit rule that earlier rules always match first', () => {
  it('is refused, naming it and the rules that take its values; a rule matched only in part is not', () => {
    // STOPPED as "no travel", FAULT spelled out as "fault, neither limit, no travel" after it:
    // every value FAULT matches, STOPPED matches first, and a valve faulted between its limits
    // read STOPPED (a reset there a no-op, an open written to a faulted valve). LOCAL last:
    // OPENING, CLOSING, OPEN, CLOSED and STOPPED together match every value it matches, none
    // of them alone, and a valve in LOCAL read as its limits and travel say (written to). OPEN,
    // CLOSED and STOPPED, each matched first by an earlier rule only in part, are read.
    const { profilesDir, file } = limitSwitchWith((text) =>
      text
        .replace(/^ +FAULT: \{ set: \[2\] \}\n/m, '')
        .replace(/^ +LOCAL: \{ set: \[5\] \}\n/m, '')
        .replace(
          /^( +)STOPPED: \{ clear: \[0, 1, 3, 4\] \}\n/m,
          '$1STOPPED: { clear: [3, 4] }\n$1FAULT: { set: [2], clear: [0, 1, 3, 4] }\n$1LOCAL: { set: [5] }\n',
        ),
    );
    expect(readFileSync(file, 'utf8')).toContain(
      [
        '        OPENING: { set: [3] }',
        '        CLOSING: { set: [4] }',
        '        OPEN: { set: [0], clear: [1] }',
        '        CLOSED: { set: [1], clear: [0] }',
        '        STOPPED: { clear: [3, 4] }',
        '        FAULT: { set: [2], clear: [0, 1, 3, 4] }',
        '        LOCAL: { set: [5] }',
      ].join('\n'),
    );
    const messages = [
      `profilesDir: ${file}: modbus.status.state.bits.FAULT: never matched: every value it matches, STOPPED matches first (the first rule that matches, in file order, is the state), so the device would never be read as FAULT; put FAULT before STOPPED, or give it bits that tell it apart`,
      `profilesDir: ${file}: modbus.status.state.bits.LOCAL: never matched: every value it matches, OPENING, CLOSING, OPEN, CLOSED and STOPPED match first (the first rule that matches, in file order, is the state), so the device would never be read as LOCAL; put LOCAL before OPENING, CLOSING, OPEN, CLOSED and STOPPED, or give it bits that tell it apart`,
    ];
    expect(errorsOf(site(profilesDir))).toEqual(messages);
    const r = runSluiced(['--config', site(profilesDir), '--check']);
    for (const message of messages) expect(r.stderr).toContain(message);
    expect(r.stdout).toBe('');
    expect(r.status).toBe(2);
  }, 30_000);
});

describe('a state named like a member of every object', () => {
  it('is refused for its missing cells (exit 2), not crashed on', () => {
    const { profilesDir, file } = limitSwitchWith((text) =>
      text.replace(
        'states: [CLOSED, OPENING, OPEN, CLOSING, STOPPED, FAULT, LOCAL]',
        'states: [CLOSED, OPENING, OPEN, CLOSING, STOPPED, FAULT, LOCAL, constructor]',
      ),
    );
    expect(readFileSync(file, 'utf8')).toContain('LOCAL, constructor]');
    const messages = [
      ...['open', 'close', 'stop', 'reset'].map(
        (action) => `profilesDir: ${file}: table.${action}.constructor: missing cell`,
      ),
      `profilesDir: ${file}: modbus.status.state.bits.constructor: missing bit rule: the device would never be read as constructor (give each state the bits the controller reports it by)`,
    ];
    expect(errorsOf(site(profilesDir))).toEqual(messages);
    const r = runSluiced(['--config', site(profilesDir), '--check']);
    for (const message of messages) expect(r.stderr).toContain(message);
    expect(r.stderr).not.toContain('TypeError');
    expect(r.status).toBe(2);
  }, 30_000);
});
