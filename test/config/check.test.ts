import { createHash } from 'node:crypto';
import { copyFileSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { lookup } from 'node:dns/promises';
import { join } from 'node:path';
import { generate } from 'selfsigned';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { registerMapLines } from '../../src/drivers/modbus-map.js';
import { loadProfiles } from '../../src/profiles/load.js';
import { ROOT, tempDir } from '../helpers/fixtures.js';
import { loopbackCertificate } from '../helpers/loopback-https.js';
import { runSluiced, runSluicedInProcess, startSluiced, type Finished } from './sluiced.js';

/**
 * `sluiced --check` runs every check the start runs and creates nothing; a configuration the
 * start would refuse is refused by --check, and at start with exit 2 before anything is
 * created. On success it prints what the daemon would run. Most runs call the binary's
 * command line and checks in this process (runSluicedInProcess: src/daemon/prepare.ts, which
 * the binary runs before its start; never a start that gets past them); a few run the binary
 * as a process (runSluiced), and the daemons below are processes.
 */

const BUNDLED = join(ROOT, 'devices', 'profiles');
let dir: string;
let cleanup: () => void;

beforeEach(async () => {
  ({ dir, cleanup } = tempDir('sluice-check-'));
  mkdirSync(join(dir, 'profiles'));
  for (const name of ['valve.yaml', 'actuator.yaml']) {
    copyFileSync(join(BUNDLED, name), join(dir, 'profiles', name));
  }
  await loopbackCertificate(dir);
  writeFileSync(join(dir, 'token'), 'plant-token\n', { mode: 0o600 });
});
afterEach(() => {
  cleanup();
});

const SITE = `
gatewayId: g1
stateDir: state
profilesDir: profiles
https: { host: 127.0.0.1, port: 0, certFile: cert.pem, keyFile: key.pem }
mqtt: { url: mqtt://127.0.0.1:1, identity: plant }
identities:
  plant: { tokenFile: token, devices: ['*'] }
plcs:
  modbus-plc: { protocol: modbus, host: 127.0.0.1, port: 5020 }
  opcua-plc: { protocol: opcua, endpointUrl: opc.tcp://127.0.0.1:4840, namespaceUri: urn:x }
devices:
  inlet-valve: { plc: modbus-plc, profile: valve, base: 100 }
  outlet-valve: { plc: opcua-plc, profile: valve, object: OV1 }
`;

function site(text = SITE): string {
  const path = join(dir, 'sluice.yaml');
  writeFileSync(path, text);
  return path;
}

/** Every file and folder under the test folder: what --check must leave as it found it. */
function tree(): string[] {
  return readdirSync(dir, { recursive: true, encoding: 'utf8' }).sort();
}

/** The error lines of a refusal (after `sluiced: FILE: invalid configuration:`). */
function errorLines(stderr: string, path: string): string[] {
  const lines = stderr.trimEnd().split('\n');
  expect(lines[0]).toBe(`sluiced: ${path}: invalid configuration:`);
  return lines.slice(1).map((l) => l.replace(/^ {2}/, ''));
}

/**
 * --check and a real start both refuse with exactly `expected`, exit 2, and create nothing.
 * `run`: in this process (the checks the binary runs before its start), or runSluiced, the
 * binary as a process.
 */
function refusedEverywhere(
  path: string,
  expected: readonly string[],
  run: (args: readonly string[]) => Finished = runSluicedInProcess,
): void {
  const before = tree();
  for (const args of [['--check'], []]) {
    const r = run(['--config', path, ...args]);
    expect({ args, status: r.status }).toEqual({ args, status: 2 });
    expect(errorLines(r.stderr, path)).toEqual(expected);
    expect(r.stdout).toBe('');
    expect(tree()).toEqual(before);
  }
}

describe('sluiced --check', () => {
  it('shows a Modbus PLC given more than one connection', () => {
    const path = site(SITE.replace('port: 5020 }', 'port: 5020, connections: 2 }'));
    const r = runSluicedInProcess(['--config', path, '--check']);
    expect({ status: r.status, stderr: r.stderr }).toEqual({ status: 0, stderr: '' });
    expect(r.stdout).toContain(
      '  PLCs      modbus-plc  modbus  127.0.0.1:5020 unit 1, timeout 1000 ms, block reads (gap ≤ 16), 2 connections\n',
    );
  });

  it("takes a PLC's own unreachable grace, shows it, and refuses one that is not a whole number of ms, 0 or more", () => {
    const withGrace = (modbus: string, opcua: string): string =>
      SITE.replace('port: 5020 }', `port: 5020, unreachableGraceMs: ${modbus} }`).replace(
        'namespaceUri: urn:x }',
        `namespaceUri: urn:x, unreachableGraceMs: ${opcua} }`,
      );
    const r = runSluicedInProcess(['--config', site(withGrace('60000', '0')), '--check']);
    expect({ status: r.status, stderr: r.stderr }).toEqual({ status: 0, stderr: '' });
    expect(r.stdout).toContain(
      '  PLCs      modbus-plc  modbus  127.0.0.1:5020 unit 1, timeout 1000 ms, block reads (gap ≤ 16), unreachable grace 60000 ms\n',
    );
    expect(r.stdout).toMatch(
      /\n +opcua-plc +opcua +opc\.tcp:.*, timeout 2000 ms, unreachable grace 0 ms\n/,
    );
    const why =
      'a whole number of milliseconds, 0 or more: how long taking up an open command keeps trying to reach the PLC (default 15000)';
    refusedEverywhere(site(withGrace('-1', '1.5')), [
      `plcs.modbus-plc.unreachableGraceMs: ${why}`,
      `plcs.opcua-plc.unreachableGraceMs: ${why}`,
    ]);
    refusedEverywhere(site(withGrace('"40 s"', '3000000000')), [
      `plcs.modbus-plc.unreachableGraceMs: ${why}`,
      'plcs.opcua-plc.unreachableGraceMs: at most 2147483647 ms (2^31 - 1, about 24.8 days): a timer cannot wait longer, and Node fires a longer one at once',
    ]);
  });

  it("shows how a secured OPC UA PLC's server certificate is bound: pinned, or with its host-name check turned off", () => {
    const pin = Array.from({ length: 32 }, (_, i) => (i * 7).toString(16).padStart(2, '0'))
      .join(':')
      .toUpperCase();
    const secured = (settings: string): string =>
      SITE.replace(
        'namespaceUri: urn:x }',
        `namespaceUri: urn:x, securityMode: Sign, securityPolicy: Basic256Sha256${settings} }`,
      ).replace(
        '  opcua-plc:',
        `  line-b: { protocol: opcua, endpointUrl: opc.tcp://127.0.0.2:4840, namespaceUri: urn:y, securityMode: SignAndEncrypt, securityPolicy: Basic256Sha256, acceptHostNameMismatch: true }\n  opcua-plc:`,
      );
    const r = runSluiced([
      '--config',
      site(secured(`, serverCertificateSha256: "${pin}"`)),
      '--check',
    ]);
    expect({ status: r.status, stderr: r.stderr }).toEqual({ status: 0, stderr: '' });
    const plcLines = r.stdout.split('\n').filter((l) => /^ {2}(PLCs| {4}) {6}/.test(l));
    expect(plcLines.find((l) => l.includes(' opcua-plc '))).toBe(
      `            opcua-plc   opcua   opc.tcp://127.0.0.1:4840, security Sign/Basic256Sha256, namespace urn:x, server certificate pinned (SHA-256 ${pin}), timeout 2000 ms`,
    );
    expect(plcLines.find((l) => l.includes(' line-b '))).toBe(
      '            line-b      opcua   opc.tcp://127.0.0.2:4840, security SignAndEncrypt/Basic256Sha256, namespace urn:y, server certificate trusted, its host name NOT checked (acceptHostNameMismatch: any certificate the trust folders trust speaks for this address), timeout 2000 ms',
    );
    // Neither set: the default binding, said as such.
    const bound = runSluicedInProcess(['--config', site(secured('')), '--check']);
    expect({ status: bound.status, stderr: bound.stderr }).toEqual({ status: 0, stderr: '' });
    expect(bound.stdout).toContain(
      "  opcua-plc   opcua   opc.tcp://127.0.0.1:4840, security Sign/Basic256Sha256, namespace urn:x, server certificate trusted and naming the endpoint's host, timeout 2000 ms\n",
    );
  });

  it('prints the gateway, its intakes, PLCs and every device with its map, and creates nothing', () => {
    const path = site();
    const before = tree();
    const r = runSluiced(['--config', path, '--check']);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(tree()).toEqual(before);
    const lines = r.stdout.trimEnd().split('\n');
    expect(lines[0]).toBe(`sluiced: ${path}: configuration is valid (nothing was created)`);
    const valve = loadProfiles(join(dir, 'profiles')).get('valve')!;
    expect(lines.slice(2)).toEqual([
      '  gateway   g1',
      `  state     ${join(dir, 'state')} (journal ${join(dir, 'state', 'journal.db')})`,
      '            journal: none yet, created at start',
      `  profiles  ${join(dir, 'profiles')}: actuator, valve`,
      expect.stringMatching(
        /^ {2}HTTPS {5}127\.0\.0\.1:0, certificate CN=localhost, valid until \d{4}-\d\d-\d\d$/,
      ),
      '  MQTT      mqtt://127.0.0.1:1, topics sluice/g1/#, identity plant, protocol auto (5, else 3.1.1)',
      '  PLCs      modbus-plc  modbus  127.0.0.1:5020 unit 1, timeout 1000 ms, block reads (gap ≤ 16)',
      '            opcua-plc   opcua   opc.tcp://127.0.0.1:4840, security None/None, namespace urn:x, timeout 2000 ms',
      '  devices   inlet-valve   modbus-plc  valve  base 100',
      ...registerMapLines(valve, 100).map((l) => `              ${l}`),
      '            outlet-valve  opcua-plc   valve  object OV1',
      '              nodes   nsu=urn:x;s=OV1.<name>',
      '              status  state State, position Position, fault FaultCode, seqEcho SeqEcho, time ScanTime',
      '              command code CommandCode, setpoint Setpoint, seq CommandSeq',
    ]);
    // The register map is the driver's own (src/drivers/modbus-map.ts), at the device's base.
    expect(lines).toContain('              status  state    holding (FC3) 100, uint16');
  });

  it('refuses a token no header can carry, and one token for two identities, at --check and at start', () => {
    const token = join(dir, 'token');
    writeFileSync(token, 'plant token\n', { mode: 0o600 });
    // As processes: the binary's exit code 2, at --check and at start.
    refusedEverywhere(
      site(),
      [
        `identities.plant.tokenFile: ${token} holds a space, a control character or a non-ASCII character inside the token, which no Authorization header can carry`,
      ],
      runSluiced,
    );
    writeFileSync(token, 'plant-token\n', { mode: 0o600 });
    const twice = SITE.replace(
      "  plant: { tokenFile: token, devices: ['*'] }",
      "  plant: { tokenFile: token, devices: ['*'] }\n  viewer: { tokenFile: token, devices: [outlet-valve] }",
    );
    refusedEverywhere(site(twice), [
      "identities.viewer.tokenFile: the same token as identities.plant's; a token must name one identity",
    ]);
  });

  it('refuses a bad cell of a device profile, at --check and at start alike, creating nothing', () => {
    const valve = join(dir, 'profiles', 'valve.yaml');
    const text = readFileSync(valve, 'utf8');
    const cell = 'CLOSED: { effect: write, next: OPENING, confirm: [OPEN] }';
    expect(text).toContain(cell);
    writeFileSync(valve, text.replace(cell, cell.replace('OPENING', 'OPENNING')));
    refusedEverywhere(site(), [
      `profilesDir: ${valve}: table.open.CLOSED.next: unknown state "OPENNING"`,
    ]);
  });

  it('refuses two states or two actions on one controller code, at --check and at start', () => {
    // Accepted before: a state register value read as the first state with it (a closed valve
    // read OPEN confirms an open without a write), and a close written with the open's code
    // opens the valve.
    const valve = join(dir, 'profiles', 'valve.yaml');
    const text = readFileSync(valve, 'utf8');
    for (const code of ['OPEN: 2,', 'close: 2,']) expect(text).toContain(code);
    writeFileSync(valve, text.replace('OPEN: 2,', 'OPEN: 0,').replace('close: 2,', 'close: 1,'));
    refusedEverywhere(site(), [
      `profilesDir: ${valve}: controller.stateCodes.OPEN: code 0 is also CLOSED's; the controller reports each state with its own code, and 0 would always read as CLOSED: give each its own code, as the controller's manual lists them`,
      `profilesDir: ${valve}: controller.commandCodes.close: code 1 is also open's; the controller would take a close written as 1 for open: give each its own code, as the controller's manual lists them`,
    ]);
  });

  it('says so when profilesDir holds no profile at all', () => {
    mkdirSync(join(dir, 'empty'));
    refusedEverywhere(site(SITE.replace('profilesDir: profiles', 'profilesDir: empty')), [
      'devices.inlet-valve.profile: no profile named "valve" (the profiles folder holds none: set profilesDir to the folder of the device profiles (.yaml), or leave it out for the bundled ones)',
      'devices.outlet-valve.profile: no profile named "valve" (the profiles folder holds none: set profilesDir to the folder of the device profiles (.yaml), or leave it out for the bundled ones)',
    ]);
  });

  it('names a site file kept in profilesDir as what it is, and does not skip it', () => {
    const path = site();
    copyFileSync(path, join(dir, 'profiles', 'site.yaml'));
    refusedEverywhere(path, [
      `profilesDir: ${join(dir, 'profiles', 'site.yaml')}: not a device profile: no top-level "profile:" key (top-level keys: gatewayId, stateDir, profilesDir, https, mqtt, identities, …). Every .yaml and .yml file in profilesDir must be a device profile: move other files out`,
    ]);
  });

  it('does not let a misspelt profile: key make a profile vanish', () => {
    const typo = join(dir, 'profiles', 'valve-2.yaml');
    writeFileSync(typo, 'profle: valve-2\nstates: [CLOSED, OPEN]\n');
    refusedEverywhere(site(), [
      `profilesDir: ${typo}: not a device profile: no top-level "profile:" key (is "profle:" a misspelling? top-level keys: profle, states). Every .yaml and .yml file in profilesDir must be a device profile: move other files out`,
    ]);
  });

  it('names an empty YAML file in profilesDir', () => {
    const empty = join(dir, 'profiles', 'notes.yml');
    writeFileSync(empty, '# nothing yet\n');
    refusedEverywhere(site(), [
      `profilesDir: ${empty}: not a device profile: the file is empty. Every .yaml and .yml file in profilesDir must be a device profile: move other files out`,
    ]);
  });

  it('names two files with the same profile name', () => {
    copyFileSync(join(dir, 'profiles', 'valve.yaml'), join(dir, 'profiles', 'valve-copy.yaml'));
    refusedEverywhere(site(), [
      `profilesDir: ${join(dir, 'profiles', 'valve.yaml')}: duplicate profile name "valve" (also in ${join(dir, 'profiles', 'valve-copy.yaml')})`,
    ]);
  });

  it('refuses aliases that expand too far, in the site file or a profile, as a configuration error', () => {
    // Ten aliases of ten aliases, eight deep: the parser's bound (maxAliasCount) refuses to
    // expand it. It threw out of loadConfig: a stack trace and exit 1, which systemd restarts.
    const bomb = [
      'a0: &a0 [x, x, x, x, x, x, x, x, x, x]',
      ...Array.from(
        { length: 8 },
        (_, i) => `a${i + 1}: &a${i + 1} [${Array(10).fill(`*a${i}`).join(', ')}]`,
      ),
    ].join('\n');
    const refusal =
      '(yaml) Excessive alias count indicates a resource exhaustion attack: its aliases (*name) expand to too many values; write the repeated values out, or nest fewer aliases';
    refusedEverywhere(site(`${bomb}\n${SITE}`), [refusal]);
    const valve = join(dir, 'profiles', 'valve.yaml');
    writeFileSync(valve, `${readFileSync(valve, 'utf8')}\n${bomb}\n`);
    refusedEverywhere(site(), [`profilesDir: ${valve}: ${refusal}`]);
  });

  it('names a YAML error by line and column on one line, and lists only the first few', () => {
    const valve = join(dir, 'profiles', 'valve.yaml');
    const text = readFileSync(valve, 'utf8');
    // The parser's message carried its code frame over several lines into the error list.
    writeFileSync(valve, `${text}timing:\n  defaultTtlMs: 5\n`);
    const line = text.split('\n').length;
    refusedEverywhere(site(), [
      `profilesDir: ${valve}: (yaml) line ${line}, column 1: Map keys must be unique`,
    ]);
    writeFileSync(valve, text);
    // One stray brace: the parser reports each token after it, 60-odd lines.
    const brace = SITE.replace('keyFile: key.pem', 'keyFile: ${X}/key.pem');
    const r = runSluiced(['--config', site(brace), '--check']);
    expect(r.status).toBe(2);
    const lines = errorLines(r.stderr, join(dir, 'sluice.yaml'));
    expect(lines[0]).toMatch(/^\(yaml\) line 5, column \d+: Unexpected flow-map-start/);
    expect(lines).toHaveLength(6);
    expect(lines[5]).toMatch(
      /^\(yaml\) … and \d+ more YAML error\(s\) after these, which the first often causes: fix it, then check again$/,
    );
  });

  it('refuses a key given twice as a number and as a string, which the data reads as one', () => {
    // Taken before: YAML's own check tells 101 and '101' apart, the data does not, and the
    // second device replaced the first without a word (the valve at base 100 was not served).
    const twice = SITE.replace(
      '  inlet-valve: { plc: modbus-plc, profile: valve, base: 100 }',
      "  101: { plc: modbus-plc, profile: valve, base: 100 }\n  '101': { plc: modbus-plc, profile: valve, base: 200 }",
    );
    const line = twice.split('\n').findIndex((l) => l.startsWith("  '101':")) + 1;
    refusedEverywhere(site(twice), [
      `(yaml) line ${line}, column 3: the key "101" is given twice in this map (as 101 and "101", which YAML tells apart by their type but the configuration reads as one): only the last would count; give it once`,
    ]);
  });

  it('takes YAML merge keys for PLCs that share settings, still refusing unknown keys', () => {
    // `<<` was taken for a key of its own: the entry was refused for the protocol it merges in.
    const merged = SITE.replace(
      '  modbus-plc: { protocol: modbus, host: 127.0.0.1, port: 5020 }',
      '  modbus-plc: &modbus { protocol: modbus, host: 127.0.0.1, port: 5020 }\n' +
        '  modbus-plc-2: { <<: *modbus, unitId: 2 }',
    ).replace(
      '  inlet-valve: { plc: modbus-plc, profile: valve, base: 100 }',
      '  inlet-valve: { plc: modbus-plc, profile: valve, base: 100 }\n' +
        '  drain-valve: { plc: modbus-plc-2, profile: valve, base: 100 }',
    );
    const r = runSluicedInProcess(['--config', site(merged), '--check']);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(
      /\n +modbus-plc-2 +modbus +127\.0\.0\.1:5020 unit 2, timeout 1000 ms, /,
    );
    expect(r.stdout).toMatch(/\n +drain-valve +modbus-plc-2 +valve +base 100\n/);
    refusedEverywhere(site(merged.replace('unitId: 2 }', 'unitId: 2, speed: 9 }')), [
      'plcs.modbus-plc-2: Unrecognized key: "speed"',
    ]);
  });

  it('refuses a host written with its port, or a URL whose port or host is none, naming the field', () => {
    // Taken before by every check: a Modbus host with its port failed every read for as long as
    // the daemon ran (getaddrinfo ENOTFOUND), the HTTPS listener and a broker port past 65535
    // failed the start (exit 1, restarted every 2 s by systemd), a broker port that is not a
    // number was dropped by MQTT.js for 1883, an OPC UA port past 65535 was retried for ever.
    const bad = SITE.replace('host: 127.0.0.1, port: 0', 'host: 0.0.0.0:8443, port: 0')
      .replace('url: mqtt://127.0.0.1:1,', 'url: mqtt://127.0.0.1:18a3,')
      .replace('host: 127.0.0.1, port: 5020', "host: '10.0.0.20:502', port: 5020")
      .replace('opc.tcp://127.0.0.1:4840', 'opc.tcp://127.0.0.1:484000');
    refusedEverywhere(site(bad), [
      'https.host: "0.0.0.0:8443" is not a host (the port is a field of its own, port)',
      'mqtt.url: port "18a3" is not a number from 1 to 65535',
      'plcs.modbus-plc.host: "10.0.0.20:502" is not a host (the port is a field of its own, port)',
      'plcs.opcua-plc.endpointUrl: port "484000" is not a number from 1 to 65535',
    ]);
    refusedEverywhere(
      site(
        SITE.replace('host: 127.0.0.1, port: 5020', 'host: modbus://10.0.0.20, port: 5020')
          .replace('url: mqtt://127.0.0.1:1,', "url: 'mqtt://:1883',")
          .replace('opc.tcp://127.0.0.1:4840', "'opc.tcp://plc 1:4840'"),
      ),
      [
        'mqtt.url: names no host (":1883")',
        'plcs.modbus-plc.host: "modbus://10.0.0.20" is not a host (a URL: give the host alone)',
        'plcs.opcua-plc.endpointUrl: "plc 1" is not a host (not an IP address, nor a host name of letters, digits, "-" and "_" between dots)',
      ],
    );
  });

  it('refuses a URL with a link-local IPv6 address, or with a zone, naming the field', () => {
    // Taken before (the docs' own example was opc.tcp://[fe80::1]:4840): the system reaches a
    // link-local address only through the interface its zone names, so every connection failed
    // (connect EINVAL) for as long as the daemon ran; with a zone, the URL was "not a valid URL".
    const why =
      'a URL cannot carry the zone (the interface) a link-local address is reached through: give the server a global or unique local (fd00::/8) address, or a host name that resolves to such an address';
    refusedEverywhere(
      site(
        SITE.replace('url: mqtt://127.0.0.1:1,', "url: 'mqtt://[FE80::5]:1883',").replace(
          'opc.tcp://127.0.0.1:4840',
          "'opc.tcp://[fe80::1%eth0]:4840'",
        ),
      ),
      [
        `mqtt.url: host [FE80::5] is a link-local address (fe80::/10): ${why}`,
        `plcs.opcua-plc.endpointUrl: host [fe80::1%eth0] names a zone (%eth0): ${why}`,
      ],
    );
    refusedEverywhere(
      site(SITE.replace('opc.tcp://127.0.0.1:4840', "'opc.tcp://[febf:0::21]:4840/UA'")),
      [`plcs.opcua-plc.endpointUrl: host [febf:0::21] is a link-local address (fe80::/10): ${why}`],
    );
  });

  it('refuses a link-local IPv6 host without the name of its interface, naming the field; takes it with one', () => {
    // Taken before: the system reaches a link-local address only through the interface its
    // zone names, and takes a name there, not an index: every connection to the PLC failed
    // (connect EINVAL) for as long as the daemon ran, and the HTTPS listener's start failed
    // (listen EINVAL, exit 1, restarted by the unit every 2 s). The binary, as a process.
    const onEth0 = (address: string): string => `"${address}%eth0" for an address on eth0`;
    refusedEverywhere(
      site(
        SITE.replace('host: 127.0.0.1, port: 0', "host: 'FE80::fc:ff:fe00:1', port: 0").replace(
          'host: 127.0.0.1, port: 5020',
          "host: 'febf:0::21%2', port: 5020",
        ),
      ),
      [
        `https.host: "FE80::fc:ff:fe00:1" is a link-local address (fe80::/10) without a zone: the system reaches it only through the interface its zone names, and fails without one (EINVAL); write the interface's name after it, as ${onEth0('FE80::fc:ff:fe00:1')}`,
        `plcs.modbus-plc.host: "febf:0::21%2" gives its zone as a number: the system takes the interface's name there, and fails with an index (EINVAL); write the name, as ${onEth0('febf:0::21')}`,
      ],
      runSluiced,
    );
    refusedEverywhere(
      site(SITE.replace('host: 127.0.0.1, port: 5020', "host: 'fe80::21', port: 5020")),
      [
        `plcs.modbus-plc.host: "fe80::21" is a link-local address (fe80::/10) without a zone: the system reaches it only through the interface its zone names, and fails without one (EINVAL); write the interface's name after it, as ${onEth0('fe80::21')}`,
      ],
      runSluiced,
    );
    // With the interface's name, as the refusal says; other IPv6 addresses need none.
    const named = SITE.replace('host: 127.0.0.1, port: 0', "host: 'fd00::2', port: 0").replace(
      'host: 127.0.0.1, port: 5020',
      "host: 'fe80::21%eth0', port: 5020",
    );
    const r = runSluiced(['--config', site(named), '--check']);
    expect({ status: r.status, stderr: r.stderr }).toEqual({ status: 0, stderr: '' });
    expect(r.stdout).toMatch(/ modbus-plc +modbus +\[fe80::21%eth0\]:5020 unit 1, /);
  });

  it('refuses an IPv4 address the system would read as another one (zero-padded, short)', async () => {
    // Taken before: getaddrinfo reads a leading 0 as octal, so the 192.168.001.020 a PLC panel
    // shows was 192.168.1.16, another controller, which the daemon then read and wrote.
    expect((await lookup('127.0.0.010')).address).toBe('127.0.0.8');
    const octal = (host: string): string =>
      `"${host}" is not an IPv4 address as written (four numbers 0..255 without leading zeros): the system would read it as another address, or as none (a leading 0 makes a number octal: 192.168.001.020 is 192.168.1.16)`;
    refusedEverywhere(
      site(
        SITE.replace('host: 127.0.0.1, port: 0', "host: '127.1', port: 0")
          .replace('url: mqtt://127.0.0.1:1,', 'url: mqtt://127.000.000.001:1,')
          .replace('host: 127.0.0.1, port: 5020', 'host: 192.168.001.020, port: 5020')
          .replace('opc.tcp://127.0.0.1:4840', 'opc.tcp://010.0.0.21:4840'),
      ),
      [
        `https.host: ${octal('127.1')}`,
        `mqtt.url: ${octal('127.000.000.001')}`,
        `plcs.modbus-plc.host: ${octal('192.168.001.020')}`,
        `plcs.opcua-plc.endpointUrl: ${octal('010.0.0.21')}`,
      ],
    );
  });

  it('refuses unit id 0, the Modbus broadcast address, at --check and at start, the binary as a process', () => {
    // Taken before: through a Modbus TCP-to-serial gateway every device on the line took each
    // write to unit 0 and none answered, so a write was never acknowledged nor confirmed, and
    // it moved every device that maps the register.
    refusedEverywhere(
      site(SITE.replace('port: 5020 }', 'port: 5020, unitId: 0 }')),
      [
        'plcs.modbus-plc.unitId: 0 is the Modbus broadcast address: through a Modbus TCP-to-serial gateway every device on the line takes each write and none answers, so no write would be acknowledged or confirmed, and several devices could move. Set the unit id of the PLC itself: its address on the serial line (1..247), or 255 for a controller reached directly over TCP',
      ],
      runSluiced,
    );
    // The unit ids it points to pass: a serial address, and 255 for a controller on TCP.
    for (const unit of [247, 255]) {
      const path = site(SITE.replace('port: 5020 }', `port: 5020, unitId: ${unit} }`));
      const r = runSluicedInProcess(['--config', path, '--check']);
      expect({ status: r.status, stderr: r.stderr }).toEqual({ status: 0, stderr: '' });
      expect(r.stdout).toContain(`modbus-plc  modbus  127.0.0.1:5020 unit ${unit}, `);
    }
  });

  it('refuses a certificate CN for an identity where no client certificate is asked for', () => {
    // Taken before: without https.clientCaFile the intake asks for no client certificate, so
    // the maintenance laptop's certificate was never presented and every request it made was
    // 401, while --check called the file valid.
    const maint = "\n  maint: { certificateCn: maint-laptop-7, devices: ['*'] }";
    const withMaint = SITE.replace("devices: ['*'] }", `devices: ['*'] }${maint}`);
    refusedEverywhere(site(withMaint), [
      'identities.maint.certificateCn: "maint-laptop-7" can never be presented: https.clientCaFile is not set, so the HTTPS intake asks no client for a certificate; set https.clientCaFile to the CA that issues the client certificates, or remove certificateCn',
    ]);
    refusedEverywhere(site(withMaint.replace(/^https: .*\n/m, '').replace(/^ui: .*\n/m, '')), [
      'identities.maint.certificateCn: "maint-laptop-7" can never be presented: there is no https section, and only the HTTPS intake takes client certificates; set https.clientCaFile to the CA that issues the client certificates, or remove certificateCn',
    ]);
    // With the CA, the same identity passes.
    copyFileSync(join(dir, 'cert.pem'), join(dir, 'ca.pem'));
    const r = runSluicedInProcess([
      '--config',
      site(withMaint.replace('keyFile: key.pem }', 'keyFile: key.pem, clientCaFile: ca.pem }')),
      '--check',
    ]);
    expect({ stderr: r.stderr, status: r.status }).toEqual({ stderr: '', status: 0 });
  });

  it('refuses a broker port past 65535 at start before it creates anything, the binary as a process', () => {
    // The start created the state folder and journal, then node:net threw ERR_SOCKET_BAD_PORT at
    // the MQTT connect: exit 1, which the unit restarts every 2 s.
    refusedEverywhere(
      site(SITE.replace('url: mqtt://127.0.0.1:1,', 'url: mqtt://127.0.0.1:99999,')),
      ['mqtt.url: port "99999" is not a number from 1 to 65535'],
      runSluiced,
    );
  });

  it('refuses an admin socket path longer than a Unix socket can be bound to', () => {
    // Taken before: under a state folder about 96 bytes deep, the daemon bound the default
    // {stateDir}/admin.sock cut short at 107 bytes (a file in the state folder's parent), its
    // admin endpoint failed to start (chmod: ENOENT) and sluicectl could not reach it.
    const stateDir = `state-${'x'.repeat(100)}`;
    const socket = join(dir, stateDir, 'admin.sock');
    refusedEverywhere(site(SITE.replace('stateDir: state', `stateDir: ${stateDir}`)), [
      `admin.socket: ${socket} is ${socket.length} bytes long, past the 107 a Unix socket's path may have: the daemon would listen on it cut short, in another folder, and sluicectl could not reach it; set admin.socket to a shorter path (under systemd /run/sluice/admin.sock)`,
    ]);
    // A shorter socket for the same state folder passes; so does no admin endpoint.
    for (const admin of ['admin: { socket: admin.sock }', 'admin: { enabled: false }']) {
      const path = site(SITE.replace('stateDir: state', `stateDir: ${stateDir}\n${admin}`));
      const r = runSluicedInProcess(['--config', path, '--check']);
      expect({ admin, stderr: r.stderr, status: r.status }).toEqual({
        admin,
        stderr: '',
        status: 0,
      });
    }
  });

  it('takes host names, IPv6 addresses and URLs with paths', () => {
    const good = SITE.replace('host: 127.0.0.1, port: 0', "host: '::1', port: 0")
      .replace('url: mqtt://127.0.0.1:1,', "url: 'ws://edge_broker.plant.:8080/mqtt',")
      .replace('host: 127.0.0.1, port: 5020', 'host: PLC-7.line2.plant, port: 5020')
      .replace('opc.tcp://127.0.0.1:4840', "'opc.tcp://[fd00::21]:4840/UA/Server'");
    const r = runSluicedInProcess(['--config', site(good), '--check']);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/ modbus-plc +modbus +PLC-7\.line2\.plant:5020 unit 1, /);
    // An IPv6 address is shown in brackets: `::1:0` reads as an address of its own.
    expect(r.stdout).toMatch(/\n {2}HTTPS {5}\[::1\]:0, certificate /);
  });

  it('refuses an MQTT password without a user name, which the client never connects with', () => {
    // Accepted before: the daemon started, reported ready, and its MQTT client refused to send
    // the CONNECT ("Username is required to use password"): Mosquitto never saw a client, and
    // the log said nothing about MQTT.
    writeFileSync(join(dir, 'mqtt.pw'), 'secret\n');
    const path = site(
      SITE.replace(
        'mqtt: { url: mqtt://127.0.0.1:1, identity: plant }',
        'mqtt: { url: mqtt://127.0.0.1:1, identity: plant, passwordFile: mqtt.pw }',
      ),
    );
    refusedEverywhere(path, [
      `mqtt.username: required with mqtt.passwordFile ${join(dir, 'mqtt.pw')}: a password is sent only with a user name, and without one the MQTT client never connects; give the broker user as mqtt.username`,
    ]);
    const r = runSluicedInProcess([
      '--config',
      site(readFileSync(path, 'utf8').replace('passwordFile:', 'username: line2, passwordFile:')),
      '--check',
    ]);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
  });

  it('reads every file the daemon reads at start: missing, empty, not PEM, or not a pair', async () => {
    const other = await generate([{ name: 'commonName', value: 'other' }], {
      keyType: 'ec',
      curve: 'P-256',
    });
    writeFileSync(join(dir, 'other-key.pem'), other.private);
    writeFileSync(join(dir, 'ca.pem'), 'not a certificate\n');
    writeFileSync(join(dir, 'token'), '\n');
    const path = site(
      SITE.replace('keyFile: key.pem }', 'keyFile: other-key.pem, clientCaFile: ca.pem }')
        // TLS: a CA file is taken with TLS only (test/config/mqtt-tls.test.ts).
        .replace('url: mqtt://127.0.0.1:1,', 'url: mqtts://127.0.0.1:1,')
        .replace(
          'identity: plant }',
          'identity: plant, certFile: cert.pem, username: line2, passwordFile: profiles, caFile: nowhere.pem }',
        )
        .replace(
          "plant: { tokenFile: token, devices: ['*'] }",
          "plant: { tokenFile: token, devices: ['*'] }\n  other: { tokenFile: missing-token, devices: ['*'] }",
        ),
    );
    refusedEverywhere(
      path,
      [
        `https.keyFile: ${join(dir, 'other-key.pem')} is not the private key of https.certFile ${join(dir, 'cert.pem')}`,
        `https.clientCaFile: ${join(dir, 'ca.pem')} holds no PEM certificate (-----BEGIN CERTIFICATE-----)`,
        `mqtt.passwordFile: ${join(dir, 'profiles')}: a folder, not a file`,
        `mqtt.caFile: ${join(dir, 'nowhere.pem')}: no such file`,
        'mqtt.keyFile: required with mqtt.certFile (a client certificate needs its key)',
        `identities.plant.tokenFile: ${join(dir, 'token')} is empty`,
        `identities.other.tokenFile: ${join(dir, 'missing-token')}: no such file`,
      ],
      // As processes: every file read by the binary itself, creating nothing.
      runSluiced,
    );
  });

  it('refuses a missing HTTPS certificate and a key that is not PEM', () => {
    rmSync(join(dir, 'cert.pem'));
    writeFileSync(join(dir, 'key.pem'), 'secret\n');
    refusedEverywhere(site(), [
      `https.certFile: ${join(dir, 'cert.pem')}: no such file`,
      expect.stringMatching(
        new RegExp(
          `^https\\.keyFile: ${join(dir, 'key.pem').replace(/[.]/g, '\\.')} is not an unencrypted PEM private key \\(.+\\)$`,
        ),
      ),
    ]);
  });

  it('refuses a state folder that is a file', () => {
    writeFileSync(join(dir, 'state'), 'not a folder\n');
    refusedEverywhere(site(), [`stateDir: ${join(dir, 'state')} exists and is not a folder`]);
  });
});

describe("node-opcua's own messages", () => {
  const httpsOnly = (plcs: string, devices: string): string =>
    site(`
gatewayId: g1
stateDir: state
profilesDir: profiles
https: { host: 127.0.0.1, port: 0, certFile: cert.pem, keyFile: key.pem }
identities:
  plant: { tokenSha256: ${createHash('sha256').update('t').digest('hex')}, devices: ['*'] }
plcs:
${plcs}
devices:
${devices}
`);
  const started = (line: string): boolean => line.includes('"msg":"sluiced started"');
  const notJson = (lines: readonly string[]): string[] =>
    lines.filter((line) => {
      try {
        JSON.parse(line);
        return false;
      } catch {
        return true;
      }
    });

  it('are never printed where no OPC UA PLC is configured (node-opcua is not loaded)', async () => {
    // NODE_DEBUG=module: Node names on stderr every module it loads through require, which
    // node-opcua's packages use among themselves, so a load of node-opcua cannot go unseen.
    const daemon = startSluiced(
      [
        '--config',
        httpsOnly(
          '  modbus-plc: { protocol: modbus, host: 127.0.0.1, port: 1 }',
          // Ten valves on the PLC: the monitor reads them in turn over its second, and their
          // failed connects grow the driver's backoff (shared by the PLC's devices) within it,
          // so that a read of inlet-valve meets the backoff after a second or two. Alone, its
          // read once a second met it only once the backoff had doubled past a second (~5 s).
          [
            '  inlet-valve: { plc: modbus-plc, profile: valve, base: 0 }',
            ...Array.from(
              { length: 9 },
              (_, i) =>
                `  valve-${i + 1}: { plc: modbus-plc, profile: valve, base: ${(i + 1) * 20} }`,
            ),
          ].join('\n'),
        ),
      ],
      { NODE_DEBUG: 'module' },
    );
    let code: number | null;
    try {
      await daemon.line(started, 30_000);
      // At work: its Modbus driver has tried the PLC that is not there (the refused connect
      // fails the device's read), and polled again while it waits out its backoff (a read
      // failing with another error) — a failed connection and a retry cycle, without OPC UA.
      const failed = (msg: string) => (line: string) =>
        line.includes(`"msg":"${msg}"`) && line.includes('"device":"inlet-valve"');
      await daemon.line(failed('device reads fail'), 30_000);
      await daemon.line(failed('device reads fail with another error'), 30_000);
    } finally {
      code = await daemon.stop();
    }
    expect(code).toBe(0);
    // Exited: all it printed is in. node-opcua's W27 check could not run, nor anything of
    // node-opcua print, in a life it never loaded in.
    const stderr = daemon.stderr();
    expect(stderr).toMatch(/^MODULE \d+: /m);
    const opcuaModules = stderr.split('\n').filter((l) => /node-opcua/i.test(l));
    expect(opcuaModules.slice(0, 3)).toEqual([]);
    expect(notJson(daemon.lines)).toEqual([]);
    expect(daemon.lines.filter((l) => /node-opcua|NODE-OPCUA|certificate/i.test(l))).toEqual([]);
  }, 60_000);

  it('go to the JSON log with an OPC UA PLC; W27 with the reason it does not apply', async () => {
    const daemon = startSluiced([
      '--config',
      httpsOnly(
        '  opcua-plc: { protocol: opcua, endpointUrl: "opc.tcp://127.0.0.1:1", namespaceUri: urn:x }',
        '  outlet-valve: { plc: opcua-plc, profile: valve }',
      ),
    ]);
    try {
      await daemon.line(started, 30_000);
      // The client makes its certificate at its first connection attempt, and says so.
      const created = JSON.parse(
        await daemon.line((l) => l.includes('Creating default certificate'), 30_000),
      ) as Record<string, unknown>;
      expect(created).toMatchObject({ level: 40, component: 'node-opcua' });
      // node-opcua runs its RSA PKCS#1 v1.5 check on Node 20 and 21 only.
      if (Number(process.versions.node.split('.')[0]) < 22) {
        const w27 = JSON.parse(
          await daemon.line((l) => l.includes('NODE-OPCUA-W27'), 30_000),
        ) as Record<string, unknown>;
        expect(w27).toMatchObject({ level: 30, component: 'node-opcua' });
        expect(w27.note).toMatch(/^does not apply: only the Basic128Rsa15 security policy/);
      }
      expect(notJson(daemon.lines)).toEqual([]);
    } finally {
      expect(await daemon.stop()).toBe(0);
    }
  }, 90_000);
});
