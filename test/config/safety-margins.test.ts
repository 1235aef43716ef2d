import { mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../src/config/config.js';
import { MAX_TTL_MS } from '../../src/core/command.js';
import { ackedWriteBoundMs, type DeviceProfile } from '../../src/core/profile.js';
import { checkInventory, inventorySchema } from '../../src/drivers/inventory-schema.js';
import { loadProfiles } from '../../src/profiles/load.js';
import { ROOT, tempDir } from '../helpers/fixtures.js';
import { runSluiced } from './sluiced.js';

/**
 * Safety margins the configuration enforces: a redispatch guard longer than the PLC's request
 * timeout (a timed-out write may still land until then), and a journal retention longer than
 * any retry of a settled key can stay fresh (a retry after the purge would be a new command).
 */

const BUNDLED = join(ROOT, 'devices', 'profiles');
const SHIPPED = loadProfiles(BUNDLED);
const MODBUS_DEFAULT_TIMEOUT = 1000;
const OPCUA_DEFAULT_TIMEOUT = 2000;

let dir: string;
let cleanup: () => void;
beforeEach(() => {
  ({ dir, cleanup } = tempDir('sluice-margins-'));
});
afterEach(() => {
  cleanup();
});

function write(text: string, name = 'sluice.yaml'): string {
  const path = join(dir, name);
  writeFileSync(path, text);
  return path;
}

function errorsOf(fn: () => unknown): string[] {
  try {
    fn();
  } catch (error) {
    if (error instanceof ConfigError) return [...error.errors];
    throw error;
  }
  throw new Error('expected a ConfigError');
}

/** The bundled profiles copied to `profiles/`, the text of `file` changed by `edit`. */
function bundledWith(file: string, edit: (text: string) => string): string {
  const out = join(dir, 'profiles');
  mkdirSync(out, { recursive: true });
  for (const name of readdirSync(BUNDLED)) {
    const text = readFileSync(join(BUNDLED, name), 'utf8');
    writeFileSync(join(out, name), name === file ? edit(text) : text);
  }
  return out;
}

/** The bundled profiles copied to `profiles/`, with the valve's guard set to `guardMs`. */
function profilesWithValveGuard(guardMs: number): string {
  return bundledWith('valve.yaml', (text) =>
    text.replace(/redispatchGuardMs: \d+/, `redispatchGuardMs: ${guardMs}`),
  );
}

const SITE = `
gatewayId: g1
stateDir: state
mqtt: { url: mqtt://127.0.0.1:1883, identity: plant }
identities:
  plant: { devices: ['*'] }
plcs:
  modbus-plc: { protocol: modbus, host: 127.0.0.1, port: 502 }
  opcua-plc: { protocol: opcua, endpointUrl: opc.tcp://127.0.0.1:4840, namespaceUri: urn:x }
devices:
  inlet-valve: { plc: modbus-plc, profile: valve, base: 0 }
  outlet-valve: { plc: opcua-plc, profile: valve }
  dosing-actuator: { plc: opcua-plc, profile: actuator }
`;

describe('redispatch guard against the request timeout', () => {
  const withGuard = (name: string, guardMs: number): Map<string, DeviceProfile> => {
    const profiles = new Map(SHIPPED);
    const p = SHIPPED.get(name)!;
    profiles.set(name, { ...p, timing: { ...p.timing, redispatchGuardMs: guardMs } });
    return profiles;
  };
  const inventory = inventorySchema.parse({
    plcs: {
      'modbus-plc': { protocol: 'modbus', host: '127.0.0.1', port: 502 },
      'opcua-plc': {
        protocol: 'opcua',
        endpointUrl: 'opc.tcp://127.0.0.1:4840',
        namespaceUri: 'urn:x',
      },
    },
    devices: {
      'inlet-valve': { plc: 'modbus-plc', profile: 'valve', base: 0 },
      'outlet-valve': { plc: 'opcua-plc', profile: 'valve' },
    },
  });

  it('refuses a guard not longer than the timeout, naming device, profile, both numbers and the fix', () => {
    expect(checkInventory(inventory, withGuard('valve', 1000))).toEqual([
      'devices.inlet-valve: profile "valve" redispatchGuardMs 1000 must be longer than plcs.modbus-plc.requestTimeoutMs 1000 (raise the guard or lower the timeout)',
      'devices.outlet-valve: profile "valve" redispatchGuardMs 1000 must be longer than plcs.opcua-plc.requestTimeoutMs 2000 (raise the guard or lower the timeout)',
    ]);
    expect(checkInventory(inventory, withGuard('valve', 2000))).toEqual([
      'devices.outlet-valve: profile "valve" redispatchGuardMs 2000 must be longer than plcs.opcua-plc.requestTimeoutMs 2000 (raise the guard or lower the timeout)',
    ]);
    expect(checkInventory(inventory, withGuard('valve', 2001))).toEqual([]);
  });

  it('checks against the PLC timeout the site configures', () => {
    const slow = inventorySchema.parse({
      ...inventory,
      plcs: {
        ...inventory.plcs,
        'modbus-plc': { ...inventory.plcs['modbus-plc'], requestTimeoutMs: 5000 },
      },
    });
    expect(checkInventory(slow, SHIPPED)).toEqual([
      `devices.inlet-valve: profile "valve" redispatchGuardMs ${SHIPPED.get('valve')!.timing.redispatchGuardMs} must be longer than plcs.modbus-plc.requestTimeoutMs 5000 (raise the guard or lower the timeout)`,
    ]);
  });

  it('every shipped profile passes with both drivers default timeouts, with a margin', () => {
    expect(SHIPPED.size).toBeGreaterThanOrEqual(2);
    for (const [name, p] of SHIPPED) {
      const { redispatchGuardMs: guard, confirmTimeoutMs: confirm, pollIntervalMs } = p.timing;
      for (const timeout of [MODBUS_DEFAULT_TIMEOUT, OPCUA_DEFAULT_TIMEOUT]) {
        // A scan, network latency and a slow PLC beyond the timeout: at least 500 ms.
        expect(guard - timeout, `${name} guard vs ${timeout}`).toBeGreaterThanOrEqual(500);
        // The confirm window runs from the write: it must hold the write's own timeout (then
        // its outcome is unknown), the guard, the readback that proves "not applied" (one more
        // request timeout) and a poll, with a second to spare, or a lost write is never sent
        // again.
        expect(
          confirm - (timeout + guard + timeout + pollIntervalMs),
          `${name} confirm`,
        ).toBeGreaterThan(1000);
      }
    }
  });

  it('loadConfig (sluiced --check) reports it with the configuration errors', () => {
    const profilesDir = profilesWithValveGuard(1000);
    const errors = errorsOf(() =>
      loadConfig(write(`profilesDir: ${profilesDir}\n${SITE}`), { env: {} }),
    );
    expect(errors).toEqual([
      'devices.inlet-valve: profile "valve" redispatchGuardMs 1000 must be longer than plcs.modbus-plc.requestTimeoutMs 1000 (raise the guard or lower the timeout)',
      'devices.outlet-valve: profile "valve" redispatchGuardMs 1000 must be longer than plcs.opcua-plc.requestTimeoutMs 2000 (raise the guard or lower the timeout)',
    ]);
  });

  it('the shipped defaults and the demo site pass', () => {
    expect(() => loadConfig(write(SITE), { env: {} })).not.toThrow();
    expect(() => loadConfig(join(ROOT, 'devices', 'site.example.yaml'), { env: {} })).not.toThrow();
  });

  it('reports a device naming an unknown profile, and an unreadable profiles folder', () => {
    const unknown = SITE.replace('profile: actuator', 'profile: damper');
    expect(errorsOf(() => loadConfig(write(unknown), { env: {} }))).toEqual([
      `devices.dosing-actuator.profile: no profile named "damper" (have ${[...SHIPPED.keys()].join(', ')})`,
    ]);
    const missing = errorsOf(() => loadConfig(write(`profilesDir: nowhere\n${SITE}`), { env: {} }));
    expect(missing).toHaveLength(1);
    expect(missing[0]).toMatch(/^profilesDir: .*ENOENT/);
  });

  it('sluiced --check exits 2 with the message', () => {
    const profilesDir = profilesWithValveGuard(900);
    const r = runSluiced(['--config', write(`profilesDir: ${profilesDir}\n${SITE}`), '--check']);
    expect(r.stderr).toContain(
      'devices.inlet-valve: profile "valve" redispatchGuardMs 900 must be longer than plcs.modbus-plc.requestTimeoutMs 1000 (raise the guard or lower the timeout)',
    );
    expect(r.status).toBe(2);
  }, 30_000);
});

describe('journal retention against the freshness of a retry', () => {
  const site = (journal: string, clock = ''): string =>
    `${SITE}journal: ${journal}\n${clock === '' ? '' : `clock: ${clock}\n`}`;

  it('refuses a retention shorter than MAX_TTL_MS + clock.maxIssuerSkewMs, with the path and both values', () => {
    expect(MAX_TTL_MS).toBe(86_400_000);
    const errors = errorsOf(() => loadConfig(write(site('{ retentionHours: 24 }')), { env: {} }));
    expect(errors).toEqual([
      'journal.retentionHours: 24 h is shorter than a retry can stay fresh: the longest ttlMs (MAX_TTL_MS 86400000 ms) + clock.maxIssuerSkewMs 5000 ms = 86405000 ms = 24.0014 h; a retry of a purged key would run as a new command (set at least 24.0014)',
    ]);
  });

  it('accepts the value the message asks for, and the boundary itself', () => {
    expect(
      loadConfig(write(site('{ retentionHours: 24.0014 }')), { env: {} }).journal.retentionHours,
    ).toBe(24.0014);
    // 25 h = 24 h + 3 600 000 ms exactly: a purge (settled_at < now - retention) comes only
    // after the deadline of any retry, which is then stale.
    expect(() =>
      loadConfig(write(site('{ retentionHours: 25 }', '{ maxIssuerSkewMs: 3600000 }')), {
        env: {},
      }),
    ).not.toThrow();
    const errors = errorsOf(() =>
      loadConfig(write(site('{ retentionHours: 24.9 }', '{ maxIssuerSkewMs: 3600000 }')), {
        env: {},
      }),
    );
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatch(
      /^journal\.retentionHours: 24\.9 h is shorter .* clock\.maxIssuerSkewMs 3600000 ms = 90000000 ms = 25 h; .*\(set at least 25\)$/,
    );
  });

  it('the default retention passes with the largest issuer skew allowed', () => {
    const c = loadConfig(write(site('{}', '{ maxIssuerSkewMs: 3600000 }')), { env: {} });
    expect(c.journal.retentionHours * 3_600_000).toBeGreaterThanOrEqual(MAX_TTL_MS + 3_600_000);
  });

  it('is reported at once with the other schema errors', () => {
    const errors = errorsOf(() =>
      loadConfig(
        write(site('{ retentionHours: 1 }').replace('gatewayId: g1', 'gatewayId: "bad id"')),
        { env: {} },
      ),
    );
    expect(errors.some((e) => e.startsWith('gatewayId:'))).toBe(true);
    expect(errors.some((e) => e.startsWith('journal.retentionHours: 1 h is shorter'))).toBe(true);
  });

  it('leaves a retention that is itself invalid to its own error', () => {
    const errors = errorsOf(() => loadConfig(write(site('{ retentionHours: -1 }')), { env: {} }));
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatch(/^journal\.retentionHours: /);
    expect(errors[0]).not.toContain('shorter than a retry');
  });
});

describe('untimed MQTT commands against the retention', () => {
  // An untimed command (mqtt.acceptUntimedCommands) is timed from its receipt: fresh at every
  // delivery. The broker delivers it again while the session lives, so the session must end
  // before the journal purges its key.
  const site = (mqtt: string, journal = '{}'): string =>
    `${SITE.replace(
      'mqtt: { url: mqtt://127.0.0.1:1883, identity: plant }',
      `mqtt: { url: mqtt://127.0.0.1:1883, identity: plant, ${mqtt} }`,
    )}journal: ${journal}\n`;

  it('refuses a session that outlives the retention, with the values and what to set', () => {
    const errors = errorsOf(() =>
      loadConfig(write(site('acceptUntimedCommands: true, sessionExpiryS: 172800')), { env: {} }),
    );
    expect(errors).toEqual([
      "mqtt.sessionExpiryS: 172800 s with mqtt.acceptUntimedCommands: an untimed command is fresh at every delivery, and the broker may deliver it again for the session's life (sessionExpiryS + 1.5 × keepaliveS 30 s = 172845 s), longer than the journal keeps its key (journal.retentionHours 48 h = 172800 s): a redelivery after the purge would run as a new command (set at most 172755, or raise journal.retentionHours)",
    ]);
    expect(() =>
      loadConfig(write(site('acceptUntimedCommands: true, sessionExpiryS: 172755')), { env: {} }),
    ).not.toThrow();
  });

  it('applies only to untimed commands over MQTT 5', () => {
    // Timed commands are bounded by their deadline (the retention rule above).
    expect(() => loadConfig(write(site('sessionExpiryS: 4000000000')), { env: {} })).not.toThrow();
    // Over 3.1.1 the broker alone sets the session's life (docs/configuration.md).
    expect(() =>
      loadConfig(
        write(site('acceptUntimedCommands: true, protocolVersion: 4, sessionExpiryS: 4000000000')),
        { env: {} },
      ),
    ).not.toThrow();
    // The shortest retention allowed with the default session and untimed commands.
    const errors = errorsOf(() =>
      loadConfig(write(site('acceptUntimedCommands: true', '{ retentionHours: 24.0014 }')), {
        env: {},
      }),
    );
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatch(/^mqtt\.sessionExpiryS: 86400 s with .* \(set at most 86360, /);
  });
});

describe("a profile's default ttl against the retention", () => {
  // The retention rule above holds for deadlines at most MAX_TTL_MS after issuedAt. A command
  // without ttlMs takes its profile's defaultTtlMs: a longer one left a retry of a purged key
  // fresh, and it ran as a new command (I1), while --check accepted the profile.
  const profilesWithValveTtl = (ttl: number): string =>
    bundledWith('valve.yaml', (text) => text.replace(/defaultTtlMs: \d+/, `defaultTtlMs: ${ttl}`));
  const message = (file: string): string =>
    `profilesDir: ${file}: timing.defaultTtlMs: at most 86400000 ms (MAX_TTL_MS, a day), as a command's own ttlMs: the journal keeps a settled key for journal.retentionHours, which covers deadlines up to a day; a longer default would let a retry of a purged key run as a new command (set at most 86400000)`;

  it('refuses a defaultTtlMs longer than MAX_TTL_MS, naming the file, the field and the bound', () => {
    const profilesDir = profilesWithValveTtl(7 * 24 * 3_600_000);
    expect(
      errorsOf(() => loadConfig(write(`profilesDir: ${profilesDir}\n${SITE}`), { env: {} })),
    ).toEqual([message(join(profilesDir, 'valve.yaml'))]);
  });

  it('accepts MAX_TTL_MS itself, and every shipped profile is within it', () => {
    const profilesDir = profilesWithValveTtl(MAX_TTL_MS);
    const config = loadConfig(write(`profilesDir: ${profilesDir}\n${SITE}`), { env: {} });
    expect(loadProfiles(config.profilesDir!).get('valve')!.timing.defaultTtlMs).toBe(MAX_TTL_MS);
    for (const [name, p] of SHIPPED) {
      expect(p.timing.defaultTtlMs, name).toBeLessThanOrEqual(MAX_TTL_MS);
    }
  });

  it('sluiced --check exits 2 with the message and creates nothing', () => {
    const profilesDir = profilesWithValveTtl(MAX_TTL_MS + 1);
    const r = runSluiced(['--config', write(`profilesDir: ${profilesDir}\n${SITE}`), '--check']);
    expect(r.stderr).toContain(message(join(profilesDir, 'valve.yaml')));
    expect(r.stdout).toBe('');
    expect(r.status).toBe(2);
    expect(readdirSync(dir).sort()).toEqual(['profiles', 'sluice.yaml']);
  }, 30_000);
});

describe('a controller without an echo: the mismatch grace against its scan', () => {
  // Without an echo, the state from before the write is told from the controller's answer only
  // by outlasting the scan that takes the write (test/core/field-profiles.test.ts shows an open
  // failed READBACK_MISMATCH, then carried out, with a grace of 80 ms on a 200 ms scan).
  const limitSwitchWith = (scanMs: number, graceMs: number): string => {
    return bundledWith('limit-switch-valve.yaml', (text) =>
      text
        .replace(/scanMs: \d+/, `scanMs: ${scanMs}`)
        .replace(/mismatchGraceMs: \d+/, `mismatchGraceMs: ${graceMs}`),
    );
  };
  const message = (file: string, graceMs: number, scanMs: number): string =>
    `profilesDir: ${file}: timing.mismatchGraceMs: ${graceMs} ms is not longer than timing.scanMs ${scanMs} ms; this controller echoes no sequence numbers (controller.echoesSeq: false), so a readback still showing the state from before the write is its answer only once it has outlasted the scan that takes the write: a shorter grace fails commands the controller is about to carry out. Set mismatchGraceMs well above scanMs (with a margin for the network: the shipped limit-switch-valve has 400 ms on a 10 ms scan)`;

  it('refuses a grace not longer than the scan, naming the file, both values and the fix', () => {
    const profilesDir = limitSwitchWith(500, 400);
    const file = join(profilesDir, 'limit-switch-valve.yaml');
    expect(
      errorsOf(() => loadConfig(write(`profilesDir: ${profilesDir}\n${SITE}`), { env: {} })),
    ).toEqual([message(file, 400, 500)]);
    const r = runSluiced(['--config', write(`profilesDir: ${profilesDir}\n${SITE}`), '--check']);
    expect(r.stderr).toContain(message(file, 400, 500));
    expect(r.status).toBe(2);
  }, 30_000);

  it('takes a grace longer than the scan; a controller with an echo is not bound by it', () => {
    const profilesDir = limitSwitchWith(500, 501);
    expect(() =>
      loadConfig(write(`profilesDir: ${profilesDir}\n${SITE}`), { env: {} }),
    ).not.toThrow();
    const valve = SHIPPED.get('valve')!;
    expect(valve.controller.echoesSeq).toBe(true);
    for (const [name, p] of SHIPPED) {
      if (!p.controller.echoesSeq) {
        expect(p.timing.mismatchGraceMs, name).toBeGreaterThan(p.timing.scanMs);
      }
    }
  });
});

describe('a controller without an echo: a write confirmed by the state it is written from', () => {
  // Nothing but the state tells its first readback after a write from the controller's answer:
  // a close written at STOPPED that lists STOPPED among its confirm states is confirmed before
  // the controller's scan has taken it (I2), whatever the controller then does with it.
  const limitSwitchWith = (edit: (text: string) => string): string =>
    bundledWith('limit-switch-valve.yaml', edit);
  const closeFromStopped = (text: string): string =>
    text.replace(
      'STOPPED: { effect: write, next: CLOSING, confirm: [CLOSED] }',
      'STOPPED: { effect: write, next: CLOSING, confirm: [STOPPED, CLOSED] }',
    );

  it('refuses it, naming the cell, the state and the fix; sluiced --check exits 2', () => {
    const profilesDir = limitSwitchWith(closeFromStopped);
    const file = join(profilesDir, 'limit-switch-valve.yaml');
    expect(readFileSync(file, 'utf8')).toContain('confirm: [STOPPED, CLOSED]');
    const message = `profilesDir: ${file}: table.close.STOPPED.confirm: lists STOPPED, the state the close is written from; this controller echoes no sequence numbers (controller.echoesSeq: false), so the first readback after the write, made before the controller's scan has taken it, would show STOPPED and confirm a close that never took effect. List only the states the close leads to (or make the cell a noop, if STOPPED is already its end)`;
    expect(
      errorsOf(() => loadConfig(write(`profilesDir: ${profilesDir}\n${SITE}`), { env: {} })),
    ).toEqual([message]);
    const r = runSluiced(['--config', write(`profilesDir: ${profilesDir}\n${SITE}`), '--check']);
    expect(r.stderr).toContain(message);
    expect(r.status).toBe(2);
  }, 30_000);

  it('takes it from a controller with an echo, and a move of any controller lists its own state', () => {
    // The echo says the write was taken; a move is confirmed by its position as well.
    const valve = SHIPPED.get('valve')!;
    expect(valve.controller.echoesSeq).toBe(true);
    expect(SHIPPED.get('actuator')!.table.move!.IDLE).toMatchObject({
      effect: 'write',
      confirm: ['IDLE'],
    });
    for (const [name, p] of SHIPPED) {
      if (p.controller.echoesSeq) continue;
      for (const action of p.actions.filter((a) => a !== 'move')) {
        for (const [state, cell] of Object.entries(p.table[action] ?? {})) {
          if (cell.effect === 'write')
            expect(cell.confirm, `${name} ${action} ${state}`).not.toContain(state);
        }
      }
    }
  });
});

describe("a move's resolution against the profile's positionTolerance", () => {
  /** The bundled profiles copied to `profiles/`, the actuator's text changed by `edit`. */
  const actuatorAs = (edit: (text: string) => string): string => bundledWith('actuator.yaml', edit);
  const tolerance = (t: string) => (text: string) =>
    text.replace(/^positionTolerance: .*$/m, `positionTolerance: ${t}`);
  const setpoint = (field: string) => (text: string) =>
    text.replace('setpoint: { at: 11, scale: 0.1 }', `setpoint: ${field}`);
  const position = (field: string) => (text: string) =>
    text.replace('position: { at: 1, scale: 0.1 }', `position: ${field}`);
  const errorsFor = (...edits: ((text: string) => string)[]): string[] => {
    const profilesDir = actuatorAs((text) => edits.reduce((t, edit) => edit(t), text));
    return errorsOf(() => loadConfig(write(`profilesDir: ${profilesDir}\n${SITE}`), { env: {} }));
  };
  const loads = (...edits: ((text: string) => string)[]): unknown => {
    const profilesDir = actuatorAs((text) => edits.reduce((t, edit) => edit(t), text));
    return loadConfig(write(`profilesDir: ${profilesDir}\n${SITE}`), { env: {} });
  };
  const file = (): string => join(dir, 'profiles', 'actuator.yaml');

  it('refuses whole-percent setpoints with a tolerance of 0.2, naming the profile, both values and the fix', () => {
    expect(errorsFor(setpoint('{ at: 11 }'), position('{ at: 1 }'), tolerance('0.2'))).toEqual([
      `profilesDir: ${file()}: positionTolerance: 0.2 % is finer than profile "actuator" can confirm: modbus.command.setpoint is written in steps of 1 % (a position between two steps lands up to 0.5 % off); a move to some positions (e.g. 37.5) would be written, move the device and never be confirmed. Set positionTolerance above 0.5, or map finer registers`,
    ]);
  });

  it('counts the readback step too: a setpoint in 0.1 % read back in whole percents', () => {
    expect(errorsFor(position('{ at: 1 }'), tolerance('0.5'))).toEqual([
      `profilesDir: ${file()}: positionTolerance: 0.5 % is finer than profile "actuator" can confirm: modbus.command.setpoint is written in steps of 0.1 % (a position between two steps lands up to 0.05 % off), and modbus.status.position reads in steps of 1 % (up to 0.5 % further off); a move to some positions (e.g. 37.5) would be written, move the device and never be confirmed. Set positionTolerance above 0.55, or map finer registers`,
    ]);
    // A float32 setpoint read back in whole percents: the read step is the one that counts.
    const float = (text: string): string =>
      setpoint('{ at: 11, type: float32 }')(text).replace('seq: { at: 12 }', 'seq: { at: 13 }');
    const errors = errorsFor(float, position('{ at: 1 }'), tolerance('0.4'));
    expect(errors).toHaveLength(1);
    expect(errors[0]).toContain(
      'and modbus.status.position reads in steps of 1 % (up to 0.5 % further off); a move to some positions (e.g. 37.5) would be written',
    );
    expect(() => loads(float, position('{ at: 1 }'), tolerance('0.6'))).not.toThrow();
  });

  it('takes a tolerance above the worst offset, and a read grid that holds every setpoint', () => {
    // Whole percents written and read: the device reads what was written, half a step off.
    expect(() =>
      loads(setpoint('{ at: 11 }'), position('{ at: 1 }'), tolerance('0.51')),
    ).not.toThrow();
    expect(errorsFor(setpoint('{ at: 11 }'), position('{ at: 1 }'), tolerance('0.5'))).toEqual([
      expect.stringContaining('positionTolerance: 0.5 % is finer than profile "actuator"'),
    ]);
  });

  it('refuses a setpoint register that cannot hold 0..100 %', () => {
    expect(errorsFor(setpoint('{ at: 11, scale: 0.001 }'), tolerance('1'))).toEqual([
      `profilesDir: ${file()}: modbus.command.setpoint: a move to 0..100 % is written as 0..100000 (scale 0.001, offset 0), which its uint16 register cannot hold (0..65535)`,
    ]);
    expect(errorsFor(setpoint('{ at: 11, scale: 0.1, offset: 10 }'))).toEqual([
      `profilesDir: ${file()}: modbus.command.setpoint: a move to 0..100 % is written as -100..900 (scale 0.1, offset 10), which its uint16 register cannot hold (0..65535)`,
    ]);
  });

  it('refuses a tolerance of half the range or more: a readback at 50 % would confirm any move', () => {
    expect(errorsFor(tolerance('50'))).toEqual([
      `profilesDir: ${file()}: positionTolerance: 50 % is half the range or more: a readback at 50 % would confirm a move to 0 % and to 100 % alike; set it below 50 (a few percent at most for a positioner)`,
    ]);
    expect(errorsFor(tolerance('120'))).toEqual([
      expect.stringContaining('positionTolerance: 120 % is half the range or more'),
    ]);
    expect(() => loads(tolerance('49.9'))).not.toThrow();
  });

  it('the shipped profiles pass', () => {
    for (const name of ['actuator', 'float-positioner']) {
      expect(SHIPPED.get(name)?.positionTolerance, name).toBeGreaterThan(0);
    }
    expect(() => loadConfig(join(ROOT, 'devices', 'site.field.yaml'), { env: {} })).not.toThrow();
  });
});

describe('devices that would share a controller device', () => {
  const site = (plcs: string, devices: string): string =>
    write(`
gatewayId: g1
stateDir: state
mqtt: { url: mqtt://127.0.0.1:1883, identity: plant }
identities:
  plant: { devices: ['*'] }
plcs:
${plcs}
devices:
${devices}`);
  const MODBUS = '  p1: { protocol: modbus, host: 127.0.0.1, port: 502 }';
  const OPCUA =
    '  u1: { protocol: opcua, endpointUrl: opc.tcp://127.0.0.1:4840, namespaceUri: urn:x }';

  it("refuses a setting of the other protocol's addressing: object on Modbus, base on OPC UA", () => {
    expect(
      errorsOf(() =>
        loadConfig(
          site(
            `${MODBUS}\n${OPCUA}`,
            '  a: { plc: p1, profile: valve, base: 0, object: A }\n  b: { plc: u1, profile: valve, base: 10 }\n',
          ),
          { env: {} },
        ),
      ),
    ).toEqual([
      'devices.a.object: an OPC UA setting, but PLC "p1" is Modbus (a Modbus device is addressed by base)',
      'devices.b.base: a Modbus setting, but PLC "u1" is OPC UA (an OPC UA device is addressed by object)',
    ]);
  });

  it('refuses two OPC UA devices on one object, named or defaulted to the id', () => {
    expect(
      errorsOf(() =>
        loadConfig(
          site(
            OPCUA,
            '  a: { plc: u1, profile: valve, object: X }\n  b: { plc: u1, profile: valve, object: X }\n',
          ),
          { env: {} },
        ),
      ),
    ).toEqual([
      `devices.b.object: object "X" on PLC u1 is also device a's: two devices would command one controller object, each with its own queue and sequence numbers`,
    ]);
    expect(
      errorsOf(() =>
        loadConfig(
          site(
            OPCUA,
            '  a: { plc: u1, profile: valve }\n  b: { plc: u1, profile: valve, object: a }\n',
          ),
          { env: {} },
        ),
      ),
    ).toEqual([
      expect.stringMatching(/^devices\.b\.object: object "a" on PLC u1 is also device a's/),
    ]);
    // Another server, or another namespace, is another object.
    expect(() =>
      loadConfig(
        site(
          `${OPCUA}\n  u2: { protocol: opcua, endpointUrl: opc.tcp://127.0.0.1:4841, namespaceUri: urn:x }`,
          '  a: { plc: u1, profile: valve, object: X }\n  b: { plc: u2, profile: valve, object: X }\n',
        ),
        { env: {} },
      ),
    ).not.toThrow();
  });

  it('compares command registers per controller, also across two PLC entries for it', () => {
    expect(
      errorsOf(() =>
        loadConfig(
          site(
            `${MODBUS}\n  p2: { protocol: modbus, host: 127.0.0.1, port: 502, unitId: 1 }`,
            '  a: { plc: p1, profile: valve, base: 0 }\n  b: { plc: p2, profile: valve, base: 0 }\n',
          ),
          { env: {} },
        ),
      ),
    ).toEqual([
      'devices.b.base: its command registers 10..12 overlap those of device a (10..12) on PLC p2 (the same controller as PLC p1: 127.0.0.1:502 unit 1)',
    ]);
    // Another spelling of the same host is the same controller (the name's case and root dot,
    // an IPv6 address written out): compared as two before, their registers never met.
    for (const [one, other] of [
      ['PLC-7.plant.', 'plc-7.plant'],
      ["'0:0:0:0:0:0:0:1'", "'::1'"],
      ["'FE80::1%eth0'", "'fe80::1%eth0'"],
      ["'fe80:0:0:0::21%eth0'", "'fe80::21%eth0'"],
    ]) {
      expect(
        errorsOf(() =>
          loadConfig(
            site(
              `  p1: { protocol: modbus, host: ${one}, port: 502 }\n  p2: { protocol: modbus, host: ${other}, port: 502 }`,
              '  a: { plc: p1, profile: valve, base: 0 }\n  b: { plc: p2, profile: valve, base: 0 }\n',
            ),
            { env: {} },
          ),
        ),
      ).toEqual([
        expect.stringMatching(
          /^devices\.b\.base: its command registers 10\.\.12 overlap those of device a \(10\.\.12\) on PLC p2 \(the same controller as PLC p1: /,
        ),
      ]);
    }
    // Another unit id behind the same address is another controller.
    expect(() =>
      loadConfig(
        site(
          `${MODBUS}\n  p2: { protocol: modbus, host: 127.0.0.1, port: 502, unitId: 2 }`,
          '  a: { plc: p1, profile: valve, base: 0 }\n  b: { plc: p2, profile: valve, base: 0 }\n',
        ),
        { env: {} },
      ),
    ).not.toThrow();
  });

  it("refuses a status field on another device's status registers: a base a few registers off", () => {
    // Accepted before: drain-valve read inlet-valve's sequence echo as its limit-switch word,
    // so that an echo with bit 0 set and bit 1 clear showed it OPEN, confirming an open that
    // it may never have made (I2).
    /** The errors of a site with these devices ([] when it loads). */
    const errorsFor = (plcs: string, devices: string): string[] => {
      try {
        loadConfig(site(plcs, devices), { env: {} });
        return [];
      } catch {
        return errorsOf(() => loadConfig(site(plcs, devices), { env: {} }));
      }
    };
    const overlap = (devices: string): string[] => errorsFor(MODBUS, devices);
    expect(
      overlap(
        '  inlet-valve: { plc: p1, profile: valve, base: 100 }\n' +
          '  drain-valve: { plc: p1, profile: limit-switch-valve, base: 103 }\n' +
          '  dosing: { plc: p1, profile: float-positioner, base: 85 }\n',
      ),
    ).toEqual([
      "devices.drain-valve.base: 103 puts its status field modbus.status.state (holding 103) on device inlet-valve's modbus.status.seqEcho (holding 103) on PLC p1: it would read those registers as its own state; give it a base where its registers are its own",
      "devices.dosing.base: 85 puts its status field modbus.status.time (holding 101..104) on device inlet-valve's modbus.status.position (holding 101) on PLC p1: it would read those registers as its own time; give it a base where its registers are its own (and 1 more of its status fields)",
    ]);
    // A block slid onto its own absolute clock: the image time read from the live clock makes
    // every readback look taken after the write.
    expect(overlap('  a: { plc: p1, profile: valve, base: 896 }\n')).toEqual([
      'devices.a.base: 896 puts its status field modbus.status.time (holding 900..903) on its own modbus.status.clock (holding 900..903, an absolute address) on PLC p1: it would read those registers as its own time; give it a base where its registers are its own',
    ]);
    // Said of the device placed from its base, whichever comes first in the file.
    expect(
      overlap(
        '  fcv: { plc: p1, profile: float-positioner, base: 880 }\n  a: { plc: p1, profile: valve, base: 0 }\n',
      ),
    ).toEqual([
      "devices.fcv.base: 880 puts its status field modbus.status.clock (holding 900..903) on device a's modbus.status.clock (holding 900..903, an absolute address) on PLC p1: it would read those registers as its own clock; give it a base where its registers are its own",
    ]);
    // The PLC's clock at an absolute address is shared on purpose, and another controller's
    // registers are its own.
    expect(
      overlap(
        '  a: { plc: p1, profile: valve, base: 0 }\n  b: { plc: p1, profile: valve, base: 100 }\n' +
          '  c: { plc: p1, profile: limit-switch-valve, base: 200 }\n',
      ),
    ).toEqual([]);
    expect(
      errorsFor(
        `${MODBUS}\n  p2: { protocol: modbus, host: 127.0.0.1, port: 502, unitId: 2 }`,
        '  a: { plc: p1, profile: valve, base: 100 }\n  b: { plc: p2, profile: limit-switch-valve, base: 103 }\n',
      ),
    ).toEqual([]);
  });

  it("refuses a state, position or echo at an absolute address shared with another device's", () => {
    // Accepted before (two absolute fields were taken as shared on purpose, as the PLC's clock
    // is): two valves of a profile with its state at an absolute register read one state, so
    // that a close to one was confirmed a no-op at CLOSED because the other was closed (I2).
    const profilesDir = bundledWith('', (text) => text);
    const valve = readFileSync(join(BUNDLED, 'valve.yaml'), 'utf8');
    const variant = (name: string, field: RegExp, absolute: string): void => {
      const text = valve.replace('profile: valve', `profile: ${name}`).replace(field, absolute);
      expect(text).toContain(absolute);
      writeFileSync(join(profilesDir, `${name}.yaml`), text);
    };
    variant('valve-abs-state', /state: \{ at: 0 \}/, 'state: { address: 50 }');
    variant('valve-abs-echo', /seqEcho: \{ at: 3 \}/, 'seqEcho: { address: 51 }');
    // The PLC's scan time at an absolute address, published once for every device.
    variant('valve-abs-time', /time: \{ at: 4, type: uint64 \}/, 'time: { address: 60 }');
    const errorsFor = (devices: string): string[] => {
      const path = write(
        `profilesDir: ${profilesDir}\ngatewayId: g1\nstateDir: state\n` +
          'mqtt: { url: mqtt://127.0.0.1:1883, identity: plant }\n' +
          "identities:\n  plant: { devices: ['*'] }\n" +
          `plcs:\n${MODBUS}\n  p1b: { protocol: modbus, host: 127.0.0.1, port: 502, unitId: 1 }\n` +
          `devices:\n${devices}`,
      );
      try {
        loadConfig(path, { env: {} });
        return [];
      } catch {
        return errorsOf(() => loadConfig(path, { env: {} }));
      }
    };
    expect(
      errorsFor(
        '  a: { plc: p1, profile: valve-abs-state, base: 100 }\n' +
          '  b: { plc: p1, profile: valve-abs-state, base: 200 }\n' +
          '  c: { plc: p1, profile: valve-abs-echo, base: 300 }\n' +
          '  d: { plc: p1b, profile: valve-abs-echo, base: 400 }\n',
      ),
    ).toEqual([
      `devices.b: its modbus.status.state (holding 50, an absolute address) lies on device a's modbus.status.state (holding 50, an absolute address) on PLC p1: both devices would read those registers as their own state, and a command to one could be confirmed by the other's readback; a state, position or echo at an absolute address fits one device per controller: place it with "at" (from the device's base) in the profile`,
      `devices.d: its modbus.status.seqEcho (holding 51, an absolute address) lies on device c's modbus.status.seqEcho (holding 51, an absolute address) on PLC p1b (the same controller as PLC p1: 127.0.0.1:502 unit 1): both devices would read those registers as their own seqEcho, and a command to one could be confirmed by the other's readback; a state, position or echo at an absolute address fits one device per controller: place it with "at" (from the device's base) in the profile`,
    ]);
    // One such device per controller, and a shared scan time or clock, are as before.
    expect(
      errorsFor(
        '  a: { plc: p1, profile: valve-abs-state, base: 100 }\n' +
          '  e: { plc: p1, profile: valve-abs-time, base: 200 }\n' +
          '  f: { plc: p1, profile: valve-abs-time, base: 300 }\n',
      ),
    ).toEqual([]);
  });

  it('sluiced --check refuses it, exit 2', () => {
    const r = runSluiced([
      '--config',
      site(
        MODBUS,
        '  inlet-valve: { plc: p1, profile: valve, base: 100 }\n  drain-valve: { plc: p1, profile: limit-switch-valve, base: 103 }\n',
      ),
      '--check',
    ]);
    expect(r.stderr).toContain(
      "devices.drain-valve.base: 103 puts its status field modbus.status.state (holding 103) on device inlet-valve's modbus.status.seqEcho (holding 103) on PLC p1",
    );
    expect(r.stdout).toBe('');
    expect(r.status).toBe(2);
  }, 30_000);

  it('refuses a status field on a command block: a base off by one block', () => {
    expect(
      errorsOf(() =>
        loadConfig(
          site(
            MODBUS,
            '  a: { plc: p1, profile: valve, base: 0 }\n  b: { plc: p1, profile: valve, base: 10 }\n',
          ),
          { env: {} },
        ),
      ),
    ).toEqual([
      "devices.b.base: its status field modbus.status.state (holding 10..10) lies on the command registers of device a (10..12) on PLC p1: it would read the commands written there as the device's status",
      "devices.b.base: its status field modbus.status.position (holding 11..11) lies on the command registers of device a (10..12) on PLC p1: it would read the commands written there as the device's status",
      "devices.b.base: its status field modbus.status.fault (holding 12..12) lies on the command registers of device a (10..12) on PLC p1: it would read the commands written there as the device's status",
    ]);
    // The PLC-wide clock (absolute, 900..903) under a device's own command block.
    expect(
      errorsOf(() =>
        loadConfig(site(MODBUS, '  a: { plc: p1, profile: valve, base: 890 }\n'), { env: {} }),
      ),
    ).toEqual([
      "devices.a.base: its status field modbus.status.clock (holding 900..903) lies on its own command registers (900..902) on PLC p1: it would read the commands written there as the device's status",
    ]);
  });
});

describe("a profile's bound on an acknowledged write against its confirm timeout", () => {
  // timing.ackedWriteTakenWithinMs shortens the wait for a write the controller may have
  // acknowledged (after a restart, behind a resolved command): longer than the confirm timeout,
  // a write kept that long could be taken after its command ended.
  const profilesWithValveBound = (ms: number): string =>
    bundledWith('valve.yaml', (text) =>
      text.replace(
        /( +)redispatchGuardMs: (\d+)/,
        `$1redispatchGuardMs: $2\n$1ackedWriteTakenWithinMs: ${ms}`,
      ),
    );
  const message = (file: string, ms: number): string =>
    `profilesDir: ${file}: timing.ackedWriteTakenWithinMs: ${ms} ms is longer than confirmTimeoutMs (8000 ms): a write the controller keeps longer than the confirm timeout could be taken after its command ended; lower it to the longest the controller keeps an acknowledged write, or leave it out (the confirm timeout)`;

  it('refuses a bound longer than the confirm timeout, naming the file, the field and both values', () => {
    const profilesDir = profilesWithValveBound(8_001);
    expect(
      errorsOf(() => loadConfig(write(`profilesDir: ${profilesDir}\n${SITE}`), { env: {} })),
    ).toEqual([message(join(profilesDir, 'valve.yaml'), 8_001)]);
  });

  it('accepts one up to the confirm timeout; without one, the bound is the confirm timeout', () => {
    const profilesDir = profilesWithValveBound(100);
    const config = loadConfig(write(`profilesDir: ${profilesDir}\n${SITE}`), { env: {} });
    const timing = loadProfiles(config.profilesDir!).get('valve')!.timing;
    expect(ackedWriteBoundMs(timing)).toBe(100);
    for (const [name, p] of SHIPPED) {
      expect(ackedWriteBoundMs(p.timing), name).toBe(p.timing.confirmTimeoutMs);
    }
  });

  it('sluiced --check exits 2 with the message', () => {
    const profilesDir = profilesWithValveBound(9_000);
    const r = runSluiced(['--config', write(`profilesDir: ${profilesDir}\n${SITE}`), '--check']);
    expect(r.stderr).toContain(message(join(profilesDir, 'valve.yaml'), 9_000));
    expect(r.status).toBe(2);
  }, 30_000);
});

describe("the gateway clock's polling against its holdover", () => {
  const site = (clock: string): string => `${SITE}clock: ${clock}\n`;

  it('refuses a poll (and the source run) longer than the holdover: a lost lock would be reported LOCKED past it', () => {
    const errors = errorsOf(() =>
      loadConfig(write(site('{ source: chrony, pollIntervalMs: 600000, holdoverMs: 60000 }')), {
        env: {},
      }),
    );
    expect(errors).toEqual([
      'clock.holdoverMs: 60000 ms is shorter than a status can be old: clock.pollIntervalMs 600000 ms + twice clock.chrony.timeoutMs (4000 ms) = 604000 ms, for which a lost lock would still be reported LOCKED; set holdoverMs to at least 604000, or poll more often',
    ]);
    // The source's own timeout counts: ptp's here.
    expect(
      errorsOf(() =>
        loadConfig(write(site('{ source: ptp, holdoverMs: 5000, ptp: { timeoutMs: 3000 } }')), {
          env: {},
        }),
      ),
    ).toEqual([
      'clock.holdoverMs: 5000 ms is shorter than a status can be old: clock.pollIntervalMs 1000 ms + twice clock.ptp.timeoutMs (6000 ms) = 7000 ms, for which a lost lock would still be reported LOCKED; set holdoverMs to at least 7000, or poll more often',
    ]);
  });

  it('accepts the boundary, the defaults, and any holdover with no source', () => {
    expect(
      loadConfig(write(site('{ source: ptp, holdoverMs: 5000 }')), { env: {} }).clock.holdoverMs,
    ).toBe(5000);
    expect(loadConfig(write(site('{ source: chrony }')), { env: {} }).clock.holdoverMs).toBe(
      60_000,
    );
    expect(
      loadConfig(write(site('{ source: none, holdoverMs: 0 }')), { env: {} }).clock.holdoverMs,
    ).toBe(0);
  });

  it('sluiced --check says so and exits 2', () => {
    const r = runSluiced(['--config', write(site('{ source: ptp, holdoverMs: 1000 }')), '--check']);
    expect(r.stderr).toContain('clock.holdoverMs: 1000 ms is shorter than a status can be old');
    expect(r.status).toBe(2);
  }, 30_000);
});
