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
 * now, as a state without a state code is. And a state named like a member of every object
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
