import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { MAX_TIMER_MS } from '../../src/core/clock.js';
import { ROOT, tempDir } from '../helpers/fixtures.js';
import { runSluiced } from './sluiced.js';

/**
 * Durations that reach a timer are refused past MAX_TIMER_MS (2^31 - 1 ms): Node's setTimeout
 * fires a longer delay after 1 ms, so a huge request timeout timed out every request at once,
 * and a huge poll interval read the controller in a busy loop. Checked as an operator meets
 * it: `sluiced --check` (and so the daemon's start) on a site file and a profile file.
 */

const BUNDLED = join(ROOT, 'devices', 'profiles');
const TOO_LONG = MAX_TIMER_MS + 1;

let dir: string;
let cleanup: () => void;
beforeEach(() => {
  ({ dir, cleanup } = tempDir('sluice-timers-'));
});
afterEach(() => {
  cleanup();
});

/** The bundled profiles copied to `profiles/`, the valve's timing lines replaced by `timing`. */
function profilesWithValveTiming(timing: Record<string, number>): string {
  const out = join(dir, 'profiles');
  mkdirSync(out);
  for (const name of readdirSync(BUNDLED)) {
    let text = readFileSync(join(BUNDLED, name), 'utf8');
    if (name === 'valve.yaml') {
      for (const [field, value] of Object.entries(timing)) {
        const line = new RegExp(`^(\\s*${field}:) \\d+`, 'm');
        expect(text, `valve.yaml has ${field}`).toMatch(line);
        text = text.replace(line, `$1 ${value}`);
      }
    }
    writeFileSync(join(out, name), text);
  }
  return out;
}

function site(profilesDir: string, plcs: string): string {
  const path = join(dir, 'sluice.yaml');
  writeFileSync(
    path,
    `
gatewayId: g1
stateDir: state
profilesDir: ${profilesDir}
mqtt: { url: mqtt://127.0.0.1:1883, identity: plant }
identities:
  plant: { devices: ['*'] }
plcs:
${plcs}
devices:
  inlet-valve: { plc: modbus-plc, profile: valve, base: 0 }
  outlet-valve: { plc: opcua-plc, profile: valve }
`,
  );
  return path;
}

describe('durations past a timer range', () => {
  it('refuses a PLC request timeout past 2^31 - 1 ms, naming the field and the limit; nothing is created', () => {
    const r = runSluiced([
      '--config',
      site(
        BUNDLED,
        `  modbus-plc: { protocol: modbus, host: 127.0.0.1, port: 502, requestTimeoutMs: ${TOO_LONG} }
  opcua-plc: { protocol: opcua, endpointUrl: opc.tcp://127.0.0.1:4840, namespaceUri: urn:x, requestTimeoutMs: 3000000000 }`,
      ),
      '--check',
    ]);
    expect(r.status, r.stderr).toBe(2);
    expect(r.stderr).toContain(
      `plcs.modbus-plc.requestTimeoutMs: at most ${MAX_TIMER_MS} ms (2^31 - 1, about 24.8 days)`,
    );
    expect(r.stderr).toContain(`plcs.opcua-plc.requestTimeoutMs: at most ${MAX_TIMER_MS} ms`);
    expect(existsSync(join(dir, 'state'))).toBe(false);
  });

  it('refuses profile timings past 2^31 - 1 ms, each with its file and field', () => {
    const profilesDir = profilesWithValveTiming({
      confirmTimeoutMs: TOO_LONG,
      pollIntervalMs: TOO_LONG,
      scanMs: TOO_LONG,
      mismatchGraceMs: TOO_LONG,
      redispatchGuardMs: TOO_LONG,
    });
    const r = runSluiced([
      '--config',
      site(
        profilesDir,
        `  modbus-plc: { protocol: modbus, host: 127.0.0.1, port: 502 }
  opcua-plc: { protocol: opcua, endpointUrl: opc.tcp://127.0.0.1:4840, namespaceUri: urn:x }`,
      ),
      '--check',
    ]);
    expect(r.status, r.stderr).toBe(2);
    const file = join(profilesDir, 'valve.yaml');
    for (const field of [
      'confirmTimeoutMs',
      'pollIntervalMs',
      'scanMs',
      'mismatchGraceMs',
      'redispatchGuardMs',
    ]) {
      expect(r.stderr).toContain(`${file}: timing.${field}: at most ${MAX_TIMER_MS} ms`);
    }
    expect(existsSync(join(dir, 'state'))).toBe(false);
  });

  it('takes the longest a timer can wait', () => {
    const profilesDir = profilesWithValveTiming({
      confirmTimeoutMs: MAX_TIMER_MS,
      redispatchGuardMs: MAX_TIMER_MS - 1,
    });
    const r = runSluiced([
      '--config',
      site(
        profilesDir,
        `  modbus-plc: { protocol: modbus, host: 127.0.0.1, port: 502, requestTimeoutMs: ${MAX_TIMER_MS - 2} }
  opcua-plc: { protocol: opcua, endpointUrl: opc.tcp://127.0.0.1:4840, namespaceUri: urn:x }`,
      ),
      '--check',
    ]);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
  });

  it('refuses --shutdown-bound past a timer range with its margin, and takes the largest it allows', () => {
    const config = site(
      BUNDLED,
      `  modbus-plc: { protocol: modbus, host: 127.0.0.1, port: 502 }
  opcua-plc: { protocol: opcua, endpointUrl: opc.tcp://127.0.0.1:4840, namespaceUri: urn:x }`,
    );
    // The force timer waits the bound plus a 10 s margin.
    const largest = MAX_TIMER_MS - 10_000;
    const refused = runSluiced([
      '--config',
      config,
      '--check',
      '--shutdown-bound',
      `${largest + 1}`,
    ]);
    expect(refused.status).toBe(2);
    expect(refused.stderr).toContain(`--shutdown-bound "${largest + 1}"`);
    expect(refused.stderr).toContain(`from 0 to ${largest}`);
    const taken = runSluiced(['--config', config, '--check', '--shutdown-bound', `${largest}`]);
    expect(taken.stderr).toBe('');
    expect(taken.status).toBe(0);
  });
});
