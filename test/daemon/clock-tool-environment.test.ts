import { chmodSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { startPlant, type Plant } from '../../simulators/plant.js';
import { startSluiced, type Running } from '../config/sluiced.js';
import { tempDir } from '../helpers/fixtures.js';
import { loopbackCertificate } from '../helpers/loopback-https.js';
import { until } from '../helpers/mosquitto.js';
import { inventoryFor } from '../helpers/plant-inventory.js';

/**
 * The clock tools (pmc, chronyc), the daemon's only children, get the environment the daemon
 * was started with, not what node-opcua left in process.env: node-opcua-crypto sets OPENSSL_CONF
 * around reading the client's private key and puts an unset one back as the string "undefined",
 * and node-opcua-pki points OPENSSL_CONF and RANDFILE at its own files. An OpenSSL tool given
 * OPENSSL_CONF=undefined fails (`openssl req`: Can't open "undefined"). The real sluiced against
 * sluice-sim's OPC UA PLC, with its chronyc a script that writes the environment it was given to
 * a file; the files written after the OPC UA session opened are the ground truth.
 */

/** A variable the daemon is started with, to show that a child's environment is the daemon's. */
const MARKER = 'CLOCK_TOOL_ENVIRONMENT_MARKER';

let dir: string;
let cleanup: () => void;
let plant: Plant;
let daemon: Running;
let runs: string;

/** The runs of the script so far, oldest first: one environment (NAME=value lines) each. */
function environments(): Map<string, string>[] {
  return readdirSync(runs)
    .filter((name) => name.startsWith('run.'))
    .sort((a, b) => Number(a.slice(4)) - Number(b.slice(4)))
    .map(
      (name) =>
        new Map(
          readFileSync(join(runs, name), 'utf8')
            .split('\n')
            .filter((line) => line.includes('='))
            .map((line) => [line.slice(0, line.indexOf('=')), line.slice(line.indexOf('=') + 1)]),
        ),
    );
}

beforeAll(async () => {
  ({ dir, cleanup } = tempDir('sluice-clock-tool-env-'));
  runs = join(dir, 'runs');
  mkdirSync(runs);
  // Each run numbered in the order they start (the poller runs one at a time), its file made
  // whole by a rename so that a file seen is a finished one.
  const chronyc = join(dir, 'chronyc');
  writeFileSync(
    chronyc,
    [
      '#!/bin/sh',
      `n=$(ls "${runs}" | wc -l)`,
      `env > "${runs}/tmp.$$"`,
      `mv "${runs}/tmp.$$" "${runs}/run.$n"`,
      '',
    ].join('\n'),
  );
  chmodSync(chronyc, 0o755);
  plant = await startPlant(
    {
      control: { host: '127.0.0.1', port: 0 },
      plcs: {
        ua: {
          protocol: 'opcua',
          host: '127.0.0.1',
          port: 0,
          devices: { 'outlet-valve': { profile: 'valve', travelMs: 200 } },
        },
      },
    },
    { ephemeralPorts: true, control: false },
  );
  await loopbackCertificate(dir);
  const inventory = inventoryFor(plant);
  const configPath = join(dir, 'sluice.yaml');
  writeFileSync(
    configPath,
    stringify({
      gatewayId: 'clockenv',
      stateDir: 'state',
      https: { host: '127.0.0.1', port: 0, certFile: 'cert.pem', keyFile: 'key.pem' },
      clock: { source: 'chrony', pollIntervalMs: 200, chrony: { chronyc } },
      opcua: { acceptUnknownCertificates: true },
      identities: {},
      plcs: inventory.plcs,
      devices: inventory.devices,
    }),
  );
  // Neither variable set, as on a gateway: node-opcua-crypto's "restore" makes the string.
  daemon = startSluiced(['--config', configPath], {
    OPENSSL_CONF: undefined,
    RANDFILE: undefined,
    [MARKER]: 'started-with',
  });
  await daemon.line((l) => l.includes('"msg":"sluiced ready"'), 60_000);
}, 90_000);

afterAll(async () => {
  await daemon.stop();
  await plant.stop();
  cleanup();
}, 30_000);

it('a clock tool run after an OPC UA session opened gets the daemon’s start environment, no OPENSSL_CONF="undefined"', async () => {
  await daemon.line((l) => l.includes('"msg":"opc ua session open"'), 30_000);
  // Two runs more than were finished when the session was seen open: the second started after
  // the first had finished, so after the session opened and the client read its key.
  const seen = environments().length;
  await until(
    () => (environments().length >= seen + 2 ? true : undefined),
    10_000,
    'two clock tool runs after the OPC UA session opened',
  );
  const all = environments();
  expect(all.length).toBeGreaterThanOrEqual(seen + 2);
  // Every run, from the first: the daemon's start environment, and the locale the readers parse.
  for (const env of all) {
    expect({
      marker: env.get(MARKER),
      locale: env.get('LC_ALL'),
      opensslConf: env.get('OPENSSL_CONF'),
      randFile: env.get('RANDFILE'),
    }).toEqual({
      marker: 'started-with',
      locale: 'C',
      opensslConf: undefined,
      randFile: undefined,
    });
  }
}, 60_000);
