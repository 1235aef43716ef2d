import { execFile, spawn } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { pino } from 'pino';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { Daemon } from '../../src/daemon/daemon.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { startPlant, type Plant } from '../../simulators/plant.js';
import { makePki, type Pki } from '../intake/https-client.js';
import { ROOT, tempDir } from '../helpers/fixtures.js';
import {
  freePort,
  mosquittoAvailable,
  startMosquitto,
  until,
  type Mosquitto,
} from '../helpers/mosquitto.js';
import { inventoryFor } from '../helpers/plant-inventory.js';
import { hasCommand, realComponent } from '../helpers/real.js';

/**
 * The example blocks of docs/http-api.md (curl) and docs/mqtt-api.md (mosquitto-clients), read
 * from the docs and run verbatim by a shell against a running daemon with the devices, gateway
 * id and identities they name, on sluice-sim and a real Mosquitto; each judged on the
 * simulator's write counters and the journal file. Two settings are the reader's own and are
 * given here: the curl block's `SLUICE=` line gets this daemon's port (the demo test owns 8443),
 * and the mosquitto clients find this broker's port in their own options files
 * (`$XDG_CONFIG_HOME/mosquitto_pub` and so on, which they read before the command line); every
 * other character runs as printed.
 */

const real =
  mosquittoAvailable() &&
  realComponent('curl', hasCommand('curl'), 'apt-get install curl') &&
  realComponent(
    'mosquitto_pub, mosquitto_sub and mosquitto_rr',
    hasCommand('mosquitto_pub') && hasCommand('mosquitto_sub') && hasCommand('mosquitto_rr'),
    'apt-get install mosquitto-clients',
  );

const TOKEN = 'api-doc-examples-token';

let plant: Plant;
let broker: Mosquitto;
let daemon: Daemon;
let pki: Pki;
let dir: string;
let cleanup: () => void;
let journalPath: string;
let httpsPort: number;

/** The code blocks of a doc between two headings, in order. */
function blocks(doc: string, from: string, to: string): string[] {
  const text = readFileSync(join(ROOT, 'docs', doc), 'utf8');
  const start = text.indexOf(from);
  const end = text.indexOf(to, start);
  expect(start, `${doc}: ${from}`).toBeGreaterThanOrEqual(0);
  expect(end, `${doc}: ${to}`).toBeGreaterThan(start);
  return [...text.slice(start, end).matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => m[1]!);
}

/** The first JSON example after a heading of docs/http-api.md. */
function docJson(heading: string): unknown {
  const text = readFileSync(join(ROOT, 'docs', 'http-api.md'), 'utf8');
  const at = text.indexOf(heading);
  expect(at, heading).toBeGreaterThanOrEqual(0);
  const block = /```json\n([\s\S]*?)```/.exec(text.slice(at))?.[1];
  return JSON.parse(block!) as unknown;
}

/** A document's member names, nested objects' included (values and types aside). */
function shape(doc: unknown): unknown {
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) return '*';
  return Object.fromEntries(
    Object.entries(doc as Record<string, unknown>)
      .map(([k, v]) => [k, v === null ? '*' : shape(v)] as const)
      .sort(([a], [b]) => a.localeCompare(b)),
  );
}

interface ShellRun {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** The environment of the reader's shell: the clients' options files name the broker's port. */
function readerEnv(): NodeJS.ProcessEnv {
  return { ...process.env, XDG_CONFIG_HOME: join(dir, 'xdg') };
}

/** A script as a shell runs it, in the folder with ca.crt, token.txt, client.crt, client.key. */
function shell(script: string): Promise<ShellRun> {
  return new Promise((resolve) => {
    execFile(
      'bash',
      ['-c', script],
      { cwd: dir, env: readerEnv(), timeout: 60_000 },
      (error, stdout, stderr) => {
        const code = error === null ? 0 : typeof error.code === 'number' ? error.code : -1;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

function onFile(scope: string, key: string): { state: string; code: string | null } {
  const journal = SqliteJournal.open({ path: journalPath, readonly: true });
  try {
    const record = journal.get({ scope, key });
    if (record === undefined) throw new Error(`no command ${scope}/${key} in the journal`);
    return { state: record.state, code: record.code };
  } finally {
    journal.close();
  }
}

beforeAll(async () => {
  if (!real) return;
  ({ dir, cleanup } = tempDir('sluice-api-doc-examples-'));
  plant = await startPlant(
    {
      control: { host: '127.0.0.1', port: 0 },
      plcs: {
        mb: {
          protocol: 'modbus',
          host: '127.0.0.1',
          port: 0,
          scanMs: 5,
          devices: {
            v1: { profile: 'valve', base: 0, travelMs: 200 },
            a1: { profile: 'actuator', base: 100, travelMs: 200 },
            'inlet-valve-1': { profile: 'valve', base: 200, travelMs: 200 },
            'outlet-positioner-1': { profile: 'actuator', base: 300, travelMs: 200 },
          },
        },
      },
    },
    { ephemeralPorts: true, control: false },
  );
  broker = await startMosquitto();
  // What the reader has at hand: the CA of the gateway's certificate, a token, a client
  // certificate for mutual TLS.
  pki = await makePki();
  writeFileSync(join(dir, 'ca.crt'), pki.serverCa.cert);
  writeFileSync(join(dir, 'token.txt'), `${TOKEN}\n`, { mode: 0o600 });
  const client = await pki.client('maint-laptop-7');
  writeFileSync(join(dir, 'client.crt'), client.cert);
  writeFileSync(join(dir, 'client.key'), client.key, { mode: 0o600 });
  mkdirSync(join(dir, 'xdg'));
  for (const tool of ['mosquitto_pub', 'mosquitto_sub', 'mosquitto_rr']) {
    writeFileSync(join(dir, 'xdg', tool), `-p ${broker.port}\n`);
  }

  httpsPort = await freePort();
  const inventory = inventoryFor(plant);
  const configPath = join(dir, 'sluice.yaml');
  writeFileSync(
    configPath,
    stringify({
      gatewayId: 'gw-1',
      stateDir: 'state',
      profilesDir: join(ROOT, 'devices', 'profiles'),
      https: {
        host: '127.0.0.1',
        port: httpsPort,
        certFile: pki.certFile,
        keyFile: pki.keyFile,
        clientCaFile: pki.clientCaFile,
      },
      mqtt: { url: broker.url, identity: 'scada', clientId: 'sluice-api-doc-examples' },
      identities: {
        scada: { tokenFile: join(dir, 'token.txt'), devices: ['*'] },
        maintenance: { certificateCn: 'maint-laptop-7', devices: ['*'] },
      },
      plcs: inventory.plcs,
      devices: inventory.devices,
    }),
  );
  journalPath = join(dir, 'state', 'journal.db');
  daemon = await Daemon.start(loadConfig(configPath, { env: {} }), {
    logger: pino({ level: 'silent' }),
    monitorIntervalMs: 200,
  });
  await until(
    () => (daemon.readiness().ready ? true : undefined),
    20_000,
    'the daemon ready: MQTT and the first readbacks',
  );
}, 90_000);

afterAll(async () => {
  if (!real) return;
  await daemon.stop();
  await broker.close();
  await plant.stop();
  pki.cleanup();
  cleanup();
});

describe.runIf(real)('the examples of docs/http-api.md and docs/mqtt-api.md', () => {
  it('the curl block runs as printed: a valve opened, an actuator moved, mutual TLS, health', async () => {
    const [block] = blocks('http-api.md', '## Examples', '## Operator status page');
    expect(block).toBeDefined();
    // The block's settings, then its commented sections; each section run after the settings.
    const [settings, ...sections] = block!.split(/\n\n/);
    expect(settings).toMatch(/^SLUICE=https:\/\/127\.0\.0\.1:8443\n/);
    const here = settings!.replace(/^SLUICE=\S+/, `SLUICE=https://127.0.0.1:${httpsPort}`);
    const section = (comment: string): string => {
      const found = sections.filter((s) => s.startsWith(`# ${comment}`));
      expect(found.length, comment).toBe(1);
      return `set -e\n${here}\n${found[0]!}`;
    };

    // Open a valve and wait for the readback that confirms it: one write.
    const v1 = plant.device('v1');
    const opened = await shell(section('Open a valve'));
    expect(opened.stderr).toBe('');
    expect(opened.code).toBe(0);
    const result = JSON.parse(opened.stdout) as { key: string; seq: number };
    expect(result).toMatchObject({ device: 'v1', action: 'open', state: 'confirmed', code: 'OK' });
    expect(v1.counters.writesReceived).toBe(1);
    expect(v1.writesWithSeq(result.seq)).toBe(1);
    expect(onFile('scada', result.key)).toEqual({ state: 'confirmed', code: 'OK' });

    // Move an actuator: 202 with a Location at once, then its state at that Location.
    const a1 = plant.device('a1');
    const moved = await shell(section('Move an actuator'));
    expect(moved.stderr).toBe('');
    expect(moved.code).toBe(0);
    expect(moved.stdout).toMatch(/^HTTP\/1\.1 202 /);
    const key = /^location: \/v1\/commands\/(\S+)\r?$/im.exec(moved.stdout)?.[1];
    expect(key, moved.stdout).toBeDefined();
    // The 202's body and the polled answer follow each other: the poll's is the last document.
    const polled = JSON.parse(moved.stdout.slice(moved.stdout.lastIndexOf('{"key":'))) as {
      key: string;
      state: string;
    };
    expect(polled.key).toBe(key);
    expect(['accepted', 'dispatched', 'confirmed']).toContain(polled.state);
    await until(
      () => (onFile('scada', key!).state === 'confirmed' ? true : undefined),
      15_000,
      'the move confirmed in the journal',
    );
    expect(a1.counters.writesReceived).toBe(1);
    expect(a1.snapshot().position).toBe(40);

    // Mutual TLS instead of a token: the devices.
    const devices = await shell(section('Mutual TLS'));
    expect(devices.stderr).toBe('');
    expect(devices.code).toBe(0);
    // The shape http-api.md shows: `{"devices": [ … ]}`, each device with the example's members.
    const listed = JSON.parse(devices.stdout) as { devices: Record<string, unknown>[] };
    const device = listed.devices.find((d) => d.id === 'v1');
    expect(device).toBeDefined();
    const shown = docJson('### `GET /v1/devices`');
    expect(shape(device)).toEqual(shape(shown));
    // And the result the open answered with: the members of the doc's result.
    expect(shape(result)).toEqual(shape(docJson('### Result (`200`')));

    // Health, readiness, metrics: three answers one after the other.
    const health = await shell(section('Health, readiness, metrics'));
    expect(health.stderr).toBe('');
    expect(health.code).toBe(0);
    expect(health.stdout).toMatch(/^\{"status":"ok"/);
    expect(health.stdout).toContain('{"status":"ready"');
    expect(health.stdout).toMatch(
      /^sluice_commands_received_total\{intake="https",outcome="new"\} 2$/m,
    );
  }, 60_000);

  it('the mosquitto-clients blocks run as printed: results watched, commands, replays, state', async () => {
    const [watch, open, rr, userProperty, retained] = blocks(
      'mqtt-api.md',
      '## Examples (mosquitto-clients)',
      '## For the composition root',
    );
    expect(retained).toBeDefined();

    // Watch everything the gateway publishes; the retained `online` proves the subscription.
    const sub = spawn('bash', ['-c', watch!.trim()], {
      cwd: dir,
      env: readerEnv(),
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    const seen: string[] = [];
    let subErr = '';
    sub.stderr.on('data', (c: Buffer) => (subErr += c.toString('utf8')));
    createInterface({ input: sub.stdout }).on('line', (line) => seen.push(line));
    const watched = (topic: string, test: (doc: Record<string, unknown>) => boolean) =>
      until(
        () =>
          seen
            .filter((l) => l.startsWith(`${topic} `))
            .map((l) => JSON.parse(l.slice(topic.length + 1)) as Record<string, unknown>)
            .find(test),
        15_000,
        `mosquitto_sub printed on ${topic} (it printed ${seen.join('\n')}${subErr})`,
      );
    try {
      await until(
        () => (seen.includes('sluice/gw-1/status online') ? true : undefined),
        10_000,
        `the status online in the watch (${subErr})`,
      );

      // Open a valve, then the same lines again in the same shell: a replay, one write.
      const inlet = plant.device('inlet-valve-1');
      const openKey = '3a0d2f7e-1c52-4a8e-9f3b-0d6e8b1c2a44';
      expect(open).toContain(openKey);
      const publishLine = open!.slice(open!.indexOf('mosquitto_pub'));
      // One shell: stamp and send, wait (the reader sees the result), send the same line again.
      const session = spawn('bash', ['-c', `set -e\n${open!}read next\n${publishLine}`], {
        cwd: dir,
        env: readerEnv(),
        stdio: ['pipe', 'pipe', 'pipe'],
      });
      let sessionOut = '';
      session.stdout.on('data', (c: Buffer) => (sessionOut += c.toString('utf8')));
      session.stderr.on('data', (c: Buffer) => (sessionOut += c.toString('utf8')));
      const sessionExit = new Promise<number | null>((resolve) => session.once('exit', resolve));
      const first = await watched(
        'sluice/gw-1/result/inlet-valve-1',
        (d) => d.key === openKey && d.replayed === false,
      );
      expect(first).toMatchObject({ action: 'open', state: 'confirmed', code: 'OK' });
      expect(inlet.counters.writesReceived).toBe(1);
      session.stdin.end('\n');
      expect(await sessionExit).toBe(0);
      expect(sessionOut).toBe('');
      const replay = await watched(
        'sluice/gw-1/result/inlet-valve-1',
        (d) => d.key === openKey && d.replayed === true,
      );
      expect(replay).toEqual({ ...first, replayed: true });
      expect(inlet.counters.writesReceived).toBe(1);
      expect(onFile('scada', openKey)).toEqual({ state: 'confirmed', code: 'OK' });

      // Request and response in one call; run again, the stored result with replayed: true.
      expect(rr).toContain('"key":"doc-1"');
      const rrLine = rr!.slice(rr!.indexOf('mosquitto_rr'));
      const answered = await shell(`set -e\n${rr!}echo ---\n${rrLine}`);
      expect(answered.stderr).toBe('');
      expect(answered.code).toBe(0);
      const [closed, again] = answered.stdout
        .split('---\n')
        .map((out) => JSON.parse(out) as Record<string, unknown>);
      expect(closed).toMatchObject({
        key: 'doc-1',
        device: 'inlet-valve-1',
        action: 'close',
        state: 'confirmed',
        code: 'OK',
        replayed: false,
      });
      expect(again).toEqual({ ...closed, replayed: true });
      expect(inlet.counters.writesReceived).toBe(2);
      expect(onFile('scada', 'doc-1')).toEqual({ state: 'confirmed', code: 'OK' });

      // The key as a user property, timed by a Message Expiry Interval.
      const positioner = plant.device('outlet-positioner-1');
      const moved = await shell(userProperty!);
      expect(moved).toEqual({ code: 0, stdout: '', stderr: '' });
      const moveKey = '8c9e6a52-7b1f-4a3d-b0f2-5c4e9d1a7f60';
      expect(userProperty).toContain(moveKey);
      const move = await watched(
        'sluice/gw-1/result/outlet-positioner-1',
        (d) => d.key === moveKey,
      );
      expect(move).toMatchObject({ action: 'move', state: 'confirmed', code: 'OK' });
      expect(positioner.counters.writesReceived).toBe(1);
      expect(positioner.snapshot().position).toBe(42.5);
      expect(onFile('scada', moveKey)).toEqual({ state: 'confirmed', code: 'OK' });

      // The retained state of inlet-valve-1 (closed by doc-1) and the gateway's status.
      const read = await shell(`set -e\n${retained!}`);
      expect(read.stderr).toBe('');
      expect(read.code).toBe(0);
      const [state, status] = read.stdout.trim().split('\n');
      expect(JSON.parse(state!)).toMatchObject({ device: 'inlet-valve-1', state: 'CLOSED' });
      expect(status).toBe('online');
    } finally {
      if (sub.exitCode === null) process.kill(-sub.pid!, 'SIGTERM');
    }
  }, 90_000);
});
