import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { pino } from 'pino';
import { generate } from 'selfsigned';
import { parse, stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { Daemon } from '../../src/daemon/daemon.js';
import { sha256 } from '../../src/intake/identities.js';
import { startPlant, type Plant } from '../../simulators/plant.js';
import { nodeArgs } from '../helpers/entry.js';
import { ROOT, tempDir } from '../helpers/fixtures.js';
import { mosquittoAvailable, startMosquitto, until, type Mosquitto } from '../helpers/mosquitto.js';
import { inventoryFor } from '../helpers/plant-inventory.js';
import { TcpLink } from '../helpers/tcp-link.js';
import { retryArgs, sluicectl, untilFirstReadbacks, type CliRun } from './helpers.js';

/**
 * `sluicectl send` when it loses track of a command it has sent: the HTTPS connection cut while
 * the intake holds the command (Prefer: wait), the broker's PUBACK lost on the way back, the
 * MQTT connection cut before it. The command may be journaled and written — here it is (the
 * simulator's write counter says so) — so the run must not say "cannot reach" nor hang nor end
 * without a word: it says the outcome is unknown and prints the key and the line that retries
 * it safely; that line, run once the link is back, is the same command (written once).
 */

const TOKEN = 'cli-lost-token';
const IDENTITY = 'plant';
const real = mosquittoAvailable();

let plant: Plant;
let broker: Mosquitto;
let daemon: Daemon;
let dir: string;
let cleanup: () => void;
/** The configuration sluicectl reads: the daemon's, with HTTPS and MQTT through the links. */
let cliConfig: string;
let tokenFile: string;
let httpsLink: TcpLink;
let brokerLink: PubackLosingLink;

/**
 * A loopback relay to the MQTT broker that can lose the broker's PUBACKs on the way back (a
 * lossy path) and be cut (every connection reset). It reads MQTT's framing (fixed header and
 * remaining length) only to tell a PUBACK from the other packets, which pass as they came.
 */
class PubackLosingLink {
  losePubacks = false;
  private readonly sockets = new Set<Socket>();

  private constructor(
    private readonly server: Server,
    readonly port: number,
  ) {}

  static async open(target: { host: string; port: number }): Promise<PubackLosingLink> {
    const holder: { link: PubackLosingLink | null } = { link: null };
    const server = createServer((inbound) => {
      const link = holder.link;
      if (link === null) {
        inbound.destroy();
        return;
      }
      const outbound = createConnection(target);
      link.sockets.add(inbound);
      link.sockets.add(outbound);
      const close = (): void => {
        inbound.destroy();
        outbound.destroy();
        link.sockets.delete(inbound);
        link.sockets.delete(outbound);
      };
      inbound.on('error', close).on('close', close);
      outbound.on('error', close).on('close', close);
      inbound.pipe(outbound);
      let pending = Buffer.alloc(0);
      outbound.on('data', (chunk: Buffer) => {
        pending = Buffer.concat([pending, chunk]);
        for (;;) {
          const size = packetSize(pending);
          if (size === null) break;
          const packet = pending.subarray(0, size);
          pending = pending.subarray(size);
          // 0x4_: PUBACK.
          if (link.losePubacks && (packet[0] ?? 0) >> 4 === 4) continue;
          inbound.write(packet);
        }
      });
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => {
        resolve();
      });
    });
    const address = server.address();
    const port = typeof address === 'object' && address !== null ? address.port : 0;
    const link = new PubackLosingLink(server, port);
    holder.link = link;
    return link;
  }

  /** Every connection through the link is reset; new ones are carried. */
  cut(): void {
    for (const socket of this.sockets) socket.resetAndDestroy();
    this.sockets.clear();
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => {
      this.server.close(() => {
        resolve();
      });
    });
  }
}

/** The length of the MQTT packet at the start of `buffer`, or null while it is incomplete. */
function packetSize(buffer: Buffer): number | null {
  let length = 0;
  for (let i = 1; i <= 4; i++) {
    const byte = buffer[i];
    if (byte === undefined) return null;
    length += (byte & 0x7f) * 128 ** (i - 1);
    if ((byte & 0x80) === 0) return buffer.length >= 1 + i + length ? 1 + i + length : null;
  }
  throw new Error('not MQTT: a remaining length over four bytes');
}

const cli = (...args: string[]): Promise<CliRun> =>
  sluicectl(['--config', cliConfig, ...args], { env: { SUDO_USER: 'alice', USER: 'root' } });

const keyOf = (run: CliRun): string | undefined => /^ {2}key\s+(\S+)$/m.exec(run.stdout)?.[1];

beforeAll(async () => {
  if (!real) return;
  ({ dir, cleanup } = tempDir('sluice-ctl-lost-'));
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
            // A stuck valve stays OPENING/CLOSING (no travel timeout fault within the test).
            'lost-valve': { profile: 'valve', base: 0, travelMs: 300, travelTimeoutMs: 120_000 },
          },
        },
      },
    },
    { ephemeralPorts: true, control: false },
  );
  broker = await startMosquitto();
  const pems = await generate([{ name: 'commonName', value: 'localhost' }], {
    keyType: 'ec',
    curve: 'P-256',
    extensions: [{ name: 'subjectAltName', altNames: [{ type: 7, ip: '127.0.0.1' }] }],
  });
  writeFileSync(join(dir, 'cert.pem'), pems.cert);
  writeFileSync(join(dir, 'key.pem'), pems.private);
  tokenFile = join(dir, 'token');
  writeFileSync(tokenFile, `${TOKEN}\n`, { mode: 0o600 });
  // A confirm timeout long enough that the stuck valve holds its command open for the test.
  const profilesDir = join(dir, 'profiles');
  mkdirSync(profilesDir);
  const shipped = join(ROOT, 'devices', 'profiles');
  for (const file of readdirSync(shipped).filter((f) => f.endsWith('.yaml'))) {
    const profile = parse(readFileSync(join(shipped, file), 'utf8')) as {
      timing: Record<string, number>;
    };
    profile.timing = { ...profile.timing, confirmTimeoutMs: 30_000, pollIntervalMs: 50 };
    writeFileSync(join(profilesDir, file), stringify(profile));
  }
  const inventory = inventoryFor(plant);
  const site = {
    gatewayId: 'lost',
    stateDir: 'state',
    profilesDir: 'profiles',
    https: { host: '127.0.0.1', port: 0, certFile: 'cert.pem', keyFile: 'key.pem' },
    mqtt: { url: broker.url, identity: IDENTITY, clientId: 'sluice-ctl-lost' },
    identities: { [IDENTITY]: { tokenSha256: sha256(TOKEN).toString('hex'), devices: ['*'] } },
    plcs: inventory.plcs,
    devices: inventory.devices,
  };
  const configPath = join(dir, 'sluice.yaml');
  writeFileSync(configPath, stringify(site));
  daemon = await Daemon.start(loadConfig(configPath, { env: {} }), {
    logger: pino({ level: 'silent' }),
    monitorIntervalMs: 200,
  });
  const httpsPort = daemon.https?.port;
  if (httpsPort === undefined) throw new Error('the daemon has no HTTPS listener');
  httpsLink = await TcpLink.open({ host: '127.0.0.1', port: httpsPort });
  brokerLink = await PubackLosingLink.open({ host: '127.0.0.1', port: broker.port });
  cliConfig = join(dir, 'sluicectl.yaml');
  writeFileSync(
    cliConfig,
    stringify({
      ...site,
      https: { ...site.https, port: httpsLink.port },
      mqtt: { ...site.mqtt, url: `mqtt://127.0.0.1:${brokerLink.port}` },
    }),
  );
  await until(
    () => (daemon.readiness().checks.mqtt?.ok === true ? true : undefined),
    20_000,
    'the MQTT intake',
  );
  await untilFirstReadbacks(daemon);
}, 60_000);

afterAll(async () => {
  if (!real) return;
  await httpsLink.close();
  await brokerLink.close();
  await daemon.stop();
  await broker.close();
  await plant.stop();
  cleanup();
});

/** The action that moves the valve from where it rests. */
function moving(plantValve: ReturnType<Plant['device']>): 'open' | 'close' {
  return plantValve.snapshot().state === 'OPEN' ? 'close' : 'open';
}

describe.runIf(real)('sluicectl send that loses track of its command', () => {
  it('over HTTPS, a connection cut after the intake took the command is an unknown outcome with a safe retry, not "cannot reach"', async () => {
    const valve = plant.device('lost-valve');
    const before = valve.counters.writesReceived;
    valve.setFault({ kind: 'stuck-travel' });
    const action = moving(valve);
    // No --key: only the run's output can tell the operator which key it used.
    const running = cli('send', 'lost-valve', action, '--wait', '20s', '--token-file', tokenFile);
    let lost: CliRun;
    try {
      await until(
        () => (valve.counters.writesReceived === before + 1 ? true : undefined),
        15_000,
        'the write',
      );
      httpsLink.down();
      lost = await running;
    } finally {
      httpsLink.up();
      // The command settles (confirmed) once the valve moves again, whatever this test found.
      valve.clearFault('stuck-travel');
    }
    expect({ code: lost.code, stderr: lost.stderr }).toEqual({ code: 1, stderr: '' });
    expect(lost.stdout).toMatch(
      /^NOT SETTLED over https: the connection to https:\/\/127\.0\.0\.1:\d+ was lost after the command was sent \([^)]+\): whether the intake took it is unknown \(it may be journaled, and the valve may move\)/,
    );
    const key = keyOf(lost);
    expect(key).toMatch(/^[0-9a-f-]{36}$/);
    const retry = retryArgs(lost);
    expect(retry).toEqual([
      '--config',
      cliConfig,
      'send',
      'lost-valve',
      action,
      '--key',
      key,
      '--via',
      'https',
      '--token-file',
      tokenFile,
    ]);

    const again = await sluicectl(retry);
    expect({ code: again.code, stderr: again.stderr }).toEqual({ code: 0, stderr: '' });
    expect(again.stdout).toMatch(/^(CONFIRMED|REPLAYED)/);
    expect(keyOf(again)).toBe(key);
    expect(valve.counters.writesReceived).toBe(before + 1);
  }, 60_000);

  it('interrupted (Ctrl-C) while it waits: the key and a safe retry on stderr, exit 130', async () => {
    const valve = plant.device('lost-valve');
    const before = valve.counters.writesReceived;
    valve.setFault({ kind: 'stuck-travel' });
    const action = moving(valve);
    // No --key: only the run's words can tell the operator which key it used.
    const child = spawn(
      process.execPath,
      [
        ...nodeArgs('src/cli/sluicectl.ts'),
        '--config',
        cliConfig,
        'send',
        'lost-valve',
        action,
        '--wait',
        '20s',
        '--token-file',
        tokenFile,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString('utf8')));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
    const ended = new Promise<number | null>((resolve) => child.once('close', resolve));
    let code: number | null;
    try {
      // Written: the valve is commanded, and the run still waits for its result.
      await until(
        () => (valve.counters.writesReceived === before + 1 ? true : undefined),
        15_000,
        'the write',
      );
      child.kill('SIGINT');
      code = await ended;
    } finally {
      valve.clearFault('stuck-travel');
    }
    expect({ code, stdout }).toEqual({ code: 130, stdout: '' });
    const key = /\(key ([0-9a-f-]{36})\)/.exec(stderr)?.[1];
    expect(key, stderr).toBeDefined();
    const line = /send it again with the same key [^:]*: sluicectl (.*)$/m.exec(stderr)?.[1];
    expect(line, stderr).toBeDefined();
    const retry = line!.split(' ');
    expect(retry).toEqual([
      '--config',
      cliConfig,
      'send',
      'lost-valve',
      action,
      '--key',
      key,
      '--via',
      'https',
      '--token-file',
      tokenFile,
    ]);
    // The retry is the same command: followed or replayed, never written again.
    const again = await sluicectl(retry);
    expect({ code: again.code, stderr: again.stderr }).toEqual({ code: 0, stderr: '' });
    expect(keyOf(again)).toBe(key);
    expect(valve.counters.writesReceived).toBe(before + 1);
  }, 60_000);

  it('over MQTT, a connection cut before the PUBACK ends the run with the key and a safe retry, not a silent exit', async () => {
    const valve = plant.device('lost-valve');
    const before = valve.counters.writesReceived;
    valve.setFault({ kind: 'stuck-travel' });
    const action = moving(valve);
    brokerLink.losePubacks = true;
    const running = cli('send', 'lost-valve', action, '--via', 'mqtt', '--wait', '20s');
    let lost: CliRun;
    try {
      await until(
        () => (valve.counters.writesReceived === before + 1 ? true : undefined),
        15_000,
        'the write',
      );
      brokerLink.cut();
      lost = await running;
    } finally {
      brokerLink.losePubacks = false;
      valve.clearFault('stuck-travel');
    }
    expect({ code: lost.code, stderr: lost.stderr }).toEqual({ code: 1, stderr: '' });
    expect(lost.stdout).toMatch(
      /^NOT SETTLED over mqtt: the connection to the broker was lost.*, after the command was published to mqtt:\/\/127\.0\.0\.1:\d+: whether it reached the daemon is unknown/,
    );
    const key = keyOf(lost);
    expect(key).toMatch(/^[0-9a-f-]{36}$/);
    const retry = retryArgs(lost);
    // The issuedAt the run stamped goes with the retry: another would be another command.
    expect(retry.slice(0, 9)).toEqual([
      '--config',
      cliConfig,
      'send',
      'lost-valve',
      action,
      '--key',
      key,
      '--via',
      'mqtt',
    ]);
    expect(retry.slice(9, 10)).toEqual(['--issued-at']);

    const again = await sluicectl(retry);
    expect({ code: again.code, stderr: again.stderr }).toEqual({ code: 0, stderr: '' });
    expect(again.stdout).toMatch(/^(CONFIRMED|REPLAYED)/);
    expect(keyOf(again)).toBe(key);
    expect(valve.counters.writesReceived).toBe(before + 1);
  }, 60_000);

  it('over MQTT, a PUBACK that never comes holds the run no longer than --wait, and a result that comes first answers', async () => {
    const valve = plant.device('lost-valve');
    const before = valve.counters.writesReceived;
    brokerLink.losePubacks = true;
    try {
      // The daemon's result says what the PUBACK would not have: the command arrived.
      const answered = await cli('send', 'lost-valve', moving(valve), '--via', 'mqtt');
      expect({ code: answered.code, stderr: answered.stderr }).toEqual({ code: 0, stderr: '' });
      expect(answered.stdout).toMatch(/^CONFIRMED over mqtt\n/);
      expect(valve.counters.writesReceived).toBe(before + 1);

      valve.setFault({ kind: 'stuck-travel' });
      const held = await sluicectl(
        ['--config', cliConfig, 'send', 'lost-valve', moving(valve), '--via', 'mqtt'].concat([
          '--wait',
          '2s',
        ]),
        { timeoutMs: 20_000 },
      );
      expect({ code: held.code, stderr: held.stderr }).toEqual({ code: 1, stderr: '' });
      expect(held.stdout).toMatch(
        /^NOT SETTLED over mqtt: no PUBACK from the broker within 2000 ms, after the command was published/,
      );
      await until(
        () => (valve.counters.writesReceived === before + 2 ? true : undefined),
        15_000,
        'the second write',
      );
    } finally {
      brokerLink.losePubacks = false;
      valve.clearFault('stuck-travel');
    }
  }, 60_000);
});
