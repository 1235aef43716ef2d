import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { tempDir } from '../helpers/fixtures.js';
import { runSluiced, runSluicedInProcess } from './sluiced.js';

/**
 * A `sluiced` command line it refuses (an unknown flag, a --log-level not among the levels, no
 * --config) is an invalid configuration: exit 2, on which systemd/sluiced.service does not
 * restart it (RestartPreventExitStatus=2 3), one line on stderr starting "sluiced:", nothing
 * created. With commander's own exit 1, a typo in a drop-in's ExecStart= had the unit start it
 * again every 2 s for ever. Run through sluiced's command line and checks in this process
 * (src/daemon/prepare.ts), and the binary as a process for the exit code systemd sees.
 */

let dir: string;
let cleanup: () => void;
let site: string;

beforeAll(() => {
  ({ dir, cleanup } = tempDir('sluice-command-line-'));
  // A valid site (the command lines below differ from one --check passes by their flag alone),
  // whose state folder must never be made.
  site = join(dir, 'sluice.yaml');
  writeFileSync(
    site,
    [
      'gatewayId: g1',
      'stateDir: never-made',
      'mqtt: { url: mqtt://127.0.0.1:1883, identity: plant }',
      "identities: { plant: { devices: ['*'] } }",
      'plcs: { p1: { protocol: modbus, host: 127.0.0.1, port: 502 } }',
      'devices: { v1: { plc: p1, profile: valve, base: 0 } }',
      '',
    ].join('\n'),
  );
  const valid = runSluicedInProcess(['--config', site, '--log-level', 'debug', '--check']);
  expect(valid.stderr).toBe('');
  expect(valid.status).toBe(0);
});

afterAll(() => {
  cleanup();
});

it('exits 2 on a --log-level not among the levels, as on SLUICE_LOG_LEVEL=verbose', () => {
  const r = runSluicedInProcess(['--config', site, '--log-level', 'verbose', '--check']);
  expect(r.stderr).toBe(
    "sluiced: option '--log-level <level>' argument 'verbose' is invalid. Allowed choices are fatal, error, warn, info, debug, trace.\n",
  );
  expect(r.status).toBe(2);
  expect(existsSync(join(dir, 'never-made'))).toBe(false);
});

it('exits 2 on a flag it does not know (a typo in a drop-in ExecStart=), the binary as a process', () => {
  const r = runSluiced(['--config', site, '--shutdown-bond', '10000']);
  expect(r.stderr).toBe(
    "sluiced: unknown option '--shutdown-bond'\n(Did you mean --shutdown-bound?)\n",
  );
  expect(r.status).toBe(2);
  expect(existsSync(join(dir, 'never-made'))).toBe(false);
}, 30_000);

it('exits 2 without --config, and 0 for --help', () => {
  const none = runSluicedInProcess(['--check']);
  expect(none.stderr).toBe("sluiced: required option '-c, --config <file>' not specified\n");
  expect(none.status).toBe(2);
  const help = runSluicedInProcess(['--help']);
  expect(help.stdout).toMatch(/^Usage: sluiced \[options\]/);
  expect(help.status).toBe(0);
});
