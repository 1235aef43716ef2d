import { mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../src/config/config.js';
import { ROOT, tempDir } from '../helpers/fixtures.js';
import { runSluiced } from './sluiced.js';

/**
 * Two devices on one controller that the configuration check took for two: one OPC UA object
 * reached through two spellings of its server's endpoint URL, one Modbus controller through an
 * IPv4 address and the same address mapped into IPv6 (each device with its own queue and
 * sequence numbers would command the one controller device, and one's command could be
 * confirmed by the other's readback); and a status register at an absolute address shared by
 * two devices as anything but their common clock or image time: a fault register, where one
 * valve's latched refusal (0x88) ended the other's commands `rejected` though its controller
 * took them, or one device's image time on another's live clock, which always looks fresh.
 * Each is refused with its path and reason. The real configuration loader (loadConfig, what
 * `sluiced --check` and the start run) on site files and profiles written to disk, and the real
 * `sluiced --check` process for its exit code.
 */

const BUNDLED = join(ROOT, 'devices', 'profiles');

let dir: string;
let cleanup: () => void;
beforeEach(() => {
  ({ dir, cleanup } = tempDir('sluice-one-controller-'));
});
afterEach(() => {
  cleanup();
});

/** The bundled profiles copied to `profiles/`, and a variant of `valve` for each edit. */
function profilesWith(variants: Record<string, (valve: string) => string>): string {
  const out = join(dir, 'profiles');
  mkdirSync(out, { recursive: true });
  for (const name of readdirSync(BUNDLED)) {
    writeFileSync(join(out, name), readFileSync(join(BUNDLED, name), 'utf8'));
  }
  const valve = readFileSync(join(BUNDLED, 'valve.yaml'), 'utf8');
  for (const [name, edit] of Object.entries(variants)) {
    const text = edit(valve.replace('profile: valve', `profile: ${name}`));
    writeFileSync(join(out, `${name}.yaml`), text);
  }
  return out;
}

/** A site file with these PLCs and devices (and a profiles folder, when given). */
function site(plcs: string, devices: string, profilesDir?: string): string {
  const path = join(dir, 'sluice.yaml');
  writeFileSync(
    path,
    `${profilesDir === undefined ? '' : `profilesDir: ${profilesDir}\n`}gatewayId: g1
stateDir: state
mqtt: { url: mqtt://127.0.0.1:1883, identity: plant }
identities:
  plant: { devices: ['*'] }
plcs:
${plcs}
devices:
${devices}`,
  );
  return path;
}

/** The configuration errors of a site file ([] when it loads). */
function errorsOf(path: string): string[] {
  try {
    loadConfig(path, { env: {} });
    return [];
  } catch (error) {
    if (error instanceof ConfigError) return [...error.errors];
    throw error;
  }
}

describe('one controller through two spellings of its address', () => {
  const opcua = (one: string, other: string, namespace = 'urn:x'): string =>
    site(
      `  u1: { protocol: opcua, endpointUrl: '${one}', namespaceUri: urn:x }\n` +
        `  u2: { protocol: opcua, endpointUrl: '${other}', namespaceUri: ${namespace} }`,
      '  a: { plc: u1, profile: valve, object: X }\n  b: { plc: u2, profile: valve, object: X }\n',
    );

  it('refuses two devices on one OPC UA object through two spellings of its endpoint URL, not on two servers', () => {
    // node-opcua connects to the URL's host and port (4840 when none is written), whatever its
    // path: each pair is one server.
    for (const [one, other, server] of [
      ['opc.tcp://127.0.0.1:4840', 'opc.tcp://127.0.0.1:4840/', 'opc.tcp://127.0.0.1:4840'],
      ['opc.tcp://127.0.0.1:4840', 'opc.tcp://127.0.0.1', 'opc.tcp://127.0.0.1:4840'],
      ['opc.tcp://plc-7.plant:4840', 'opc.tcp://PLC-7.plant.:4840', 'opc.tcp://plc-7.plant:4840'],
      ['opc.tcp://[::1]:4840', 'opc.tcp://[0:0:0:0:0:0:0:1]:4840', 'opc.tcp://[::1]:4840'],
      ['opc.tcp://10.0.0.5:4840/plc', 'opc.tcp://10.0.0.5:4840/other', 'opc.tcp://10.0.0.5:4840'],
      ['opc.tcp://127.0.0.1:4840', 'opc.tcp://[::ffff:127.0.0.1]:4840', 'opc.tcp://127.0.0.1:4840'],
    ]) {
      expect(errorsOf(opcua(one!, other!)), `${one} and ${other}`).toEqual([
        `devices.b.object: object "X" on PLC u2 (the same controller as PLC u1: ${server} namespace urn:x) is also device a's: two devices would command one controller object, each with its own queue and sequence numbers`,
      ]);
    }
    // Another port, host or namespace is another object.
    expect(errorsOf(opcua('opc.tcp://127.0.0.1:4840', 'opc.tcp://127.0.0.1:4841'))).toEqual([]);
    expect(errorsOf(opcua('opc.tcp://127.0.0.1:4840', 'opc.tcp://127.0.0.2:4840'))).toEqual([]);
    expect(errorsOf(opcua('opc.tcp://127.0.0.1', 'opc.tcp://127.0.0.1/', 'urn:y'))).toEqual([]);
  });

  it('refuses overlapping command registers on a Modbus controller reached as 127.0.0.1 and ::ffff:127.0.0.1', () => {
    const path = site(
      "  p1: { protocol: modbus, host: 127.0.0.1, port: 502 }\n  p2: { protocol: modbus, host: '::ffff:127.0.0.1', port: 502 }",
      '  a: { plc: p1, profile: valve, base: 0 }\n  b: { plc: p2, profile: valve, base: 0 }\n',
    );
    expect(errorsOf(path)).toEqual([
      'devices.b.base: its command registers 10..12 overlap those of device a (10..12) on PLC p2 (the same controller as PLC p1: 127.0.0.1:502 unit 1)',
    ]);
  });
});

describe('a status register at an absolute address shared by two devices', () => {
  const MODBUS = '  p1: { protocol: modbus, host: 127.0.0.1, port: 502 }';

  it("refuses a fault register shared: one valve's latched refusal would reject the other's commands", () => {
    const profilesDir = profilesWith({
      'valve-abs-fault': (t) => t.replace('fault: { at: 2 }', 'fault: { address: 950 }'),
    });
    expect(readFileSync(join(profilesDir, 'valve-abs-fault.yaml'), 'utf8')).toContain(
      'fault: { address: 950 }',
    );
    const path = site(
      MODBUS,
      '  a: { plc: p1, profile: valve-abs-fault, base: 0 }\n  b: { plc: p1, profile: valve-abs-fault, base: 100 }\n',
      profilesDir,
    );
    const message = `devices.b: its modbus.status.fault (holding 950, an absolute address) lies on device a's modbus.status.fault (holding 950, an absolute address) on PLC p1: both devices would read those registers as their own fault, and a refusal the controller latches there for one (fault 0x88) would end a command to the other rejected though its controller took it; a fault code at an absolute address fits one device per controller: place it with "at" (from the device's base) in the profile`;
    expect(errorsOf(path)).toEqual([message]);
    const r = runSluiced(['--config', path, '--check']);
    expect(r.stderr).toContain(message);
    expect(r.stdout).toBe('');
    expect(r.status).toBe(2);
    // One such device per controller is its own.
    expect(
      errorsOf(site(MODBUS, '  a: { plc: p1, profile: valve-abs-fault, base: 0 }\n', profilesDir)),
    ).toEqual([]);
  }, 30_000);

  it("refuses one device's image time on another's live clock; a clock or image time shared as such is taken", () => {
    const profilesDir = profilesWith({
      // The image time at 900, where the bundled valve reads the PLC's live clock.
      'valve-abs-time': (t) =>
        t
          .replace('time: { at: 4, type: uint64 }', 'time: { address: 900 }')
          .replace('clock: { address: 900, type: uint64 }', 'clock: { address: 910 }'),
    });
    expect(readFileSync(join(profilesDir, 'valve-abs-time.yaml'), 'utf8')).toContain(
      'time: { address: 900 }',
    );
    expect(
      errorsOf(
        site(
          MODBUS,
          '  a: { plc: p1, profile: valve, base: 0 }\n  b: { plc: p1, profile: valve-abs-time, base: 100 }\n',
          profilesDir,
        ),
      ),
    ).toEqual([
      `devices.b: its modbus.status.time (holding 900..903, an absolute address) lies on device a's modbus.status.clock (holding 900..903, an absolute address) on PLC p1: both devices would read those registers as their own time and clock, though one register holds one value: an absolute register may be shared only as the PLC's clock, read whole by every device as its clock, or as an image time, read whole by every device as its time; place the field with "at" (from the device's base) in the profile, or give it the other's address and type`,
    ]);
    // Two devices reading one image time and one clock, each as such, and two valves reading
    // the PLC's clock.
    expect(
      errorsOf(
        site(
          MODBUS,
          '  c: { plc: p1, profile: valve-abs-time, base: 200 }\n  d: { plc: p1, profile: valve-abs-time, base: 300 }\n' +
            '  a: { plc: p1, profile: valve, base: 0 }\n  b: { plc: p1, profile: valve, base: 100 }\n',
          profilesDir,
        ),
      ),
    ).toEqual([
      expect.stringMatching(
        /^devices\.a: its modbus\.status\.clock \(holding 900\.\.903, an absolute address\) lies on device c's modbus\.status\.time/,
      ),
      expect.stringMatching(
        /^devices\.b: its modbus\.status\.clock \(holding 900\.\.903, an absolute address\) lies on device c's modbus\.status\.time/,
      ),
    ]);
    expect(
      errorsOf(
        site(
          MODBUS,
          '  c: { plc: p1, profile: valve-abs-time, base: 200 }\n  d: { plc: p1, profile: valve-abs-time, base: 300 }\n',
          profilesDir,
        ),
      ),
    ).toEqual([]);
    expect(
      errorsOf(
        site(
          MODBUS,
          '  a: { plc: p1, profile: valve, base: 0 }\n  b: { plc: p1, profile: valve, base: 100 }\n',
          profilesDir,
        ),
      ),
    ).toEqual([]);
  });
});
