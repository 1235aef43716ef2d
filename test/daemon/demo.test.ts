import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import {
  cpSync,
  existsSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import BetterSqlite3 from 'better-sqlite3';
import type { IClientOptions } from 'mqtt';
import { expect, it } from 'vitest';
import { ROOT, tempDir } from '../helpers/fixtures.js';
import {
  accepts,
  freePort,
  mosquittoAvailable,
  startMosquitto,
  TestClient,
  until,
} from '../helpers/mosquitto.js';
import { hasCommand, isRoot, realComponent } from '../helpers/real.js';
import { makePki } from '../intake/https-client.js';

/**
 * The README's first command: `npm start` comes up (building first when needed), the curl
 * command it prints opens a valve and, sent again, gets the same answer with
 * `Idempotent-Replayed: true` and no second write; the mosquitto_sub and mosquitto_pub commands
 * it prints open another and replay the result (the embedded broker speaks MQTT 3.1.1 only:
 * the intake falls back), and Ctrl-C stops everything, leaving no process and no port.
 * node-opcua's own messages (its W27 check, "Creating default certificate") go to the demo's
 * log, never into the instructions. With 1883 taken by another broker, `npm start` prints the
 * command that points the demo at it; that command, run as printed, brings the demo up on
 * that broker (Mosquitto: MQTT 5), and the printed mosquitto commands work there too. With
 * 8443 taken, it prints (in words, not a stack trace) the command that moves its HTTPS, and
 * that command brings it up on the other port, where its printed curl works. Pointed at a
 * broker of the user's own that wants TLS, its CA, a client certificate, a user and a password
 * (all in the site file's mqtt section: no embedded broker then, and the banner names the site
 * file), the printed mosquitto commands carry what that broker needs, the password read from
 * its file, and work as printed. Pointed at a
 * WebSocket broker (ws://), which the mosquitto clients cannot reach, it prints a sluicectl send
 * instead, which works as printed and replays. With no mqtt section in the site file, it starts
 * no broker and prints no MQTT command: the daemon takes none.
 */

const PORTS = [8443, 1883, 5020, 4840, 5080];
const STATE = join(ROOT, '.state', 'demo');
const LOG = join(STATE, 'sluiced.log');
/** The simulated OPC UA server's certificate, which the demo keeps from one start to the next. */
const SIM_CERTIFICATE = join(STATE, 'sim-pki/opcua-plc/pki/own/certs/certificate.pem');

/** The kept simulator certificate's SHA-256 fingerprint; null while there is none. */
function keptSimCertificate(): string | null {
  if (!existsSync(SIM_CERTIFICATE)) return null;
  return new X509Certificate(readFileSync(SIM_CERTIFICATE)).fingerprint256;
}

/** What node-opcua prints by itself when nobody routes it. */
const OPCUA_NOISE = /NODE-OPCUA|security-revert|Creating default certificate/;

async function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', () => {
      resolve(false);
    });
    server.listen(port, '127.0.0.1', () =>
      server.close(() => {
        resolve(true);
      }),
    );
  });
}

const curl = realComponent('curl', hasCommand('curl'), 'apt-get install curl');
const mosquittoClients = realComponent(
  'mosquitto_pub and mosquitto_sub',
  hasCommand('mosquitto_pub') && hasCommand('mosquitto_sub'),
  'apt-get install mosquitto-clients',
);

async function writesReceived(controlUrl: string, device: string): Promise<number> {
  const url = `${controlUrl}/devices/${device}/writes`;
  // A kept-alive connection the simulator's control API closed as idle just as it was reused
  // (a command run in between took its keep-alive time): asked again, on a new one.
  const response = await fetch(url).catch(() => fetch(url));
  return ((await response.json()) as { writesReceived: number }).writesReceived;
}

/** A printed command as a user pastes it: from its first line through its continuations. */
function printed(lines: readonly string[], start: string): string {
  const first = lines.findIndex((l) => l.trim().startsWith(start));
  if (first < 0) throw new Error(`the demo printed no line starting with ${start}`);
  const out: string[] = [];
  for (let i = first; i < lines.length; i += 1) {
    const line = (lines[i] ?? '').trim();
    out.push(line);
    if (!line.endsWith('\\')) break;
  }
  return out.join('\n');
}

/**
 * The MQTT instructions the demo prints, run verbatim with `sh -c`: `mosquitto_sub` watching
 * the results, then the ISSUED_AT line and `mosquitto_pub`, then — once the result is in — the
 * same `mosquitto_pub` line again in the same shell (the user's "run it again"). Judged on the
 * simulator's write counter: one write for the command, none for the replay. `topics`: the
 * daemon's `{topicRoot}/{gatewayId}`, where the test watches too; `broker`: how the test's own
 * client reaches the broker.
 */
async function printedMqttCommandsWork(
  lines: readonly string[],
  controlUrl: string,
  topics = 'sluice/demo',
  broker: { url: string; options: IClientOptions } = {
    url: 'mqtt://127.0.0.1:1883',
    options: { protocolVersion: 4 },
  },
): Promise<void> {
  const subCommand = printed(lines, 'mosquitto_sub ');
  const stamp = printed(lines, 'ISSUED_AT=');
  const pubCommand = printed(lines, 'mosquitto_pub ');
  const key = /"key":"([^"]+)"/.exec(pubCommand)?.[1] ?? '';
  expect(key).not.toBe('');
  const sub = spawn('sh', ['-c', subCommand], {
    stdio: ['ignore', 'pipe', 'inherit'],
    detached: true,
  });
  const seen: string[] = [];
  const waiters = new Set<() => void>();
  createInterface({ input: sub.stdout }).on('line', (line) => {
    seen.push(line);
    for (const wake of waiters) wake();
  });
  const waitForLine = (predicate: (line: string) => boolean, what: string): Promise<string> =>
    new Promise((resolve, reject) => {
      const check = (): void => {
        const hit = seen.find(predicate);
        if (hit === undefined) return;
        clearTimeout(timer);
        waiters.delete(check);
        resolve(hit);
      };
      const timer = setTimeout(() => {
        waiters.delete(check);
        reject(new Error(`mosquitto_sub printed no ${what}; it printed:\n${seen.join('\n')}`));
      }, 15_000);
      waiters.add(check);
      check();
    });
  const resultOf = (line: string): Record<string, unknown> =>
    JSON.parse(line.slice(line.indexOf(' ') + 1)) as Record<string, unknown>;
  const isResult =
    (replayed: boolean) =>
    (line: string): boolean =>
      line.startsWith(`${topics}/result/drain-valve `) &&
      resultOf(line).key === key &&
      resultOf(line).replayed === replayed;
  const probe = await TestClient.connect(broker.url, broker.options);
  try {
    // The subscription is in place once mosquitto_sub prints a probe published after it.
    const ticker = setInterval(() => {
      void probe.publish(`${topics}/result/probe`, 'probe', { qos: 0 }).catch(() => undefined);
    }, 200);
    try {
      await waitForLine((l) => l.startsWith(`${topics}/result/probe `), 'probe');
    } finally {
      clearInterval(ticker);
    }

    const before = await writesReceived(controlUrl, 'drain-valve');
    // One shell for the session: stamp and send, wait (the user reads the result), send again.
    const session = spawn('sh', ['-c', `${stamp}\n${pubCommand}\nread next\n${pubCommand}\n`], {
      stdio: ['pipe', 'inherit', 'inherit'],
    });
    const sessionExit = new Promise<number | null>((resolve) => session.once('exit', resolve));
    const first = resultOf(await waitForLine(isResult(false), 'result'));
    expect(first).toMatchObject({
      device: 'drain-valve',
      action: 'open',
      state: 'confirmed',
      code: 'OK',
      issuedAtSource: 'issuer',
    });
    expect(await writesReceived(controlUrl, 'drain-valve')).toBe(before + 1);

    session.stdin.end('\n');
    const replay = resultOf(await waitForLine(isResult(true), 'replay'));
    expect(replay).toEqual({ ...first, replayed: true });
    expect(await sessionExit).toBe(0);
    expect(await writesReceived(controlUrl, 'drain-valve')).toBe(before + 1);
  } finally {
    await probe.end();
    if (sub.exitCode === null) process.kill(-sub.pid!, 'SIGTERM');
  }
}

interface RunningDemo {
  readonly child: ChildProcess;
  /** The lines it printed to stdout so far. */
  readonly lines: string[];
  stderr(): string;
  /** Ctrl-C in a terminal, and what it must leave: a clean stop, no process, no port. */
  stop(): Promise<void>;
}

/**
 * Starts the demo as `command` and waits for its instructions; `ports` are the ones it takes
 * (all of PORTS, or all but 1883 when it uses another broker there).
 */
async function startDemo(
  command: readonly string[],
  env: NodeJS.ProcessEnv,
  ports: readonly number[] = PORTS,
  cwd = ROOT,
): Promise<RunningDemo> {
  for (const port of ports) {
    if (!(await portFree(port))) throw new Error(`port ${port} is taken: the demo cannot start`);
  }
  const child = spawn(command[0]!, command.slice(1), {
    cwd,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  const lines: string[] = [];
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => {
    stderr += chunk.toString('utf8');
    process.stderr.write(chunk);
  });
  const stop = async (): Promise<void> => {
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
      child.once('exit', (code, signal) => {
        resolve({ code, signal });
      }),
    );
    // Every holder of the output pipes gone (npm and the demo under it): all lines are in.
    const closed = new Promise<void>((resolve) =>
      child.once('close', () => {
        resolve();
      }),
    );
    // Ctrl-C in a terminal: SIGINT to the whole foreground process group (npm and the demo).
    if (child.exitCode === null) process.kill(-child.pid!, 'SIGINT');
    const result = await Promise.race([
      exited,
      new Promise<'timeout'>((r) =>
        setTimeout(() => {
          r('timeout');
        }, 20_000),
      ),
    ]);
    if (result === 'timeout') process.kill(-child.pid!, 'SIGKILL');
    expect(result).not.toBe('timeout');
    // npm itself ends by the signal; the demo under it stops cleanly and says so.
    if (result !== 'timeout') expect(result.code === 0 || result.signal === 'SIGINT').toBe(true);
    await Promise.race([closed, new Promise((r) => setTimeout(r, 10_000))]);
    expect(lines.join('\n')).toContain('stopping');
    // Nothing left behind: no process of the group, every port free again.
    expect(() => process.kill(-child.pid!, 0)).toThrow();
    for (const port of ports) expect(await portFree(port)).toBe(true);
  };
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new Error(`demo did not come up:\n${lines.join('\n')}`));
      }, 120_000);
      createInterface({ input: child.stdout }).on('line', (line) => {
        lines.push(line);
        if (line.includes('Ctrl-C stops everything')) {
          clearTimeout(timer);
          resolve();
        }
      });
      child.once('exit', (code) => {
        reject(new Error(`demo exited with ${code}:\n${lines.join('\n')}`));
      });
    });
  } catch (error) {
    if (child.exitCode === null) process.kill(-child.pid!, 'SIGKILL');
    throw error;
  }
  return { child, lines, stderr: () => stderr, stop };
}

/**
 * A curl command as a user pastes it: run by a shell in the clone's folder (where the README
 * has them run `npm start`), its output piped as into jq or a file. `extra` options are appended
 * only where the test must see more than the user does (the headers). Its stderr is kept:
 * piped, curl's progress meter goes there unless the command says -s.
 */
async function curlRun(
  command: string,
  extra = '',
  cwd = ROOT,
): Promise<{ stdout: string; stderr: string }> {
  // Not spawnSync: the MQTT commands run beside these, on the same event loop.
  const run = spawn('sh', ['-c', extra === '' ? command : `${command} ${extra}`], {
    cwd,
    stdio: ['ignore', 'pipe', 'pipe'],
    timeout: 30_000,
  });
  let stdout = '';
  let stderr = '';
  run.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
  run.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  const status = await new Promise<number | null>((resolve, reject) => {
    run.once('error', reject);
    run.once('close', resolve);
  });
  expect(status, `${command}\n${stderr}`).toBe(0);
  return { stdout, stderr };
}

/** Waits for both (neither left running when the other fails), then throws the first failure. */
async function bothDone(a: Promise<void>, b: Promise<void>): Promise<void> {
  const results = await Promise.allSettled([a, b]);
  for (const result of results) if (result.status === 'rejected') throw result.reason;
}

/** The README's curl command for the demo, as written there (its fenced block). */
function readmeCurl(): string {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const blocks = [...readme.matchAll(/^```[a-z]*\n([\s\S]*?)^```$/gm)].map((m) => m[1]!.trim());
  const found = blocks.filter((b) => b.startsWith('curl ') && b.includes('/v1/commands'));
  expect(found, 'the README shows one curl command for the demo').toHaveLength(1);
  return found[0]!;
}

it.runIf(curl && mosquittoClients)(
  'npm start comes up, its printed curl and mosquitto commands open valves and replay, Ctrl-C leaves nothing behind',
  async () => {
    // A first start's OPC UA client and simulated server: each makes its certificate, as on a
    // fresh clone.
    rmSync(join(STATE, 'pki'), { recursive: true, force: true });
    rmSync(join(STATE, 'sim-pki'), { recursive: true, force: true });
    // And a fresh clone's journal: the README's key demo-1 not yet used.
    // (A fresh clone has no state folder yet.)
    const names = existsSync(STATE) ? readdirSync(STATE) : [];
    for (const name of names.filter((n) => n.startsWith('journal.db'))) {
      rmSync(join(STATE, name), { force: true });
    }
    const logFrom = existsSync(LOG) ? statSync(LOG).size : 0;
    const demo = await startDemo(['npm', 'start', '--silent'], {
      ...process.env,
      SLUICE_DEMO_TOKEN: 'demo-test-token',
      SLUICE_MQTT_URL: '',
    });
    const { lines } = demo;
    try {
      const text = lines.join('\n');
      expect(text).toContain('https://127.0.0.1:8443');
      expect(text).toContain('demo-test-token');
      // The banner comes once every device has answered (the OPC UA client has its
      // certificate and session), and nothing node-opcua says is in it.
      expect(lines).toContain('Sluice demo is running.');
      const banner = lines.slice(lines.indexOf('Sluice demo is running.'));
      expect(banner.map((l) => l.trim())).toContain('all 4 answering');
      expect(lines.filter((l) => OPCUA_NOISE.test(l))).toEqual([]);
      // The simulator's certificate is kept for the next start (the 8443 case starts on it).
      expect(keptSimCertificate()).not.toBeNull();
      // The printed curl command, exactly as a user pastes it (its lines and backslashes), run
      // verbatim, piped: the answer alone on stdout, nothing on stderr (no progress meter).
      const command = printed(lines, 'curl ');
      // As the README shows it: `npm start` ran in the clone, the certificate is under it.
      expect(command).toMatch(/^curl -sS --cacert \.state\/demo\/tls\/cert\.pem -X POST /);
      const controlUrl = /Simulators control API (\S+)/.exec(text)?.[1] ?? '';
      // The printed MQTT commands (drain-valve) run beside the HTTPS ones (inlet-valve), as from
      // a second terminal: each is judged on its own valve's write counter.
      const overMqtt = printedMqttCommandsWork(lines, controlUrl);
      const overHttps = async (): Promise<void> => {
        const first = await curlRun(command);
        expect(first.stderr).toBe('');
        const body = first.stdout;
        expect(JSON.parse(body)).toMatchObject({
          device: 'inlet-valve',
          state: 'confirmed',
          code: 'OK',
        });
        // Ground truth for HTTPS: the simulator counted one write on inlet-valve.
        expect(await writesReceived(controlUrl, 'inlet-valve')).toBe(1);

        // Sent again (README): the same answer, no second write; -i shows Idempotent-Replayed.
        expect(await curlRun(command)).toEqual({ stdout: body, stderr: '' });
        const again = (await curlRun(command, '-i')).stdout;
        const head = again.slice(0, again.indexOf('\r\n\r\n'));
        expect(head).toMatch(/^HTTP\/1\.1 200 /);
        expect(head).toMatch(/^idempotent-replayed: true\r?$/im);
        expect(again.slice(again.indexOf('\r\n\r\n') + 4)).toBe(body);
        expect(await writesReceived(controlUrl, 'inlet-valve')).toBe(1);

        const cacert = /--cacert (\S+)/.exec(command)?.[1] ?? '';

        // The README's own curl, as written there, from the clone's folder: the valve closed
        // first (a command of the test's own), it opens it with one write; sent again, the same
        // answer and no second write.
        const closed = JSON.parse(
          (
            await curlRun(
              `curl -sS --cacert ${cacert} -X POST https://127.0.0.1:8443/v1/commands -H "Authorization: Bearer demo-test-token" -H "Idempotency-Key: test-close-${Date.now()}" -H "Content-Type: application/json" -d '{"device":"inlet-valve","action":"close"}'`,
            )
          ).stdout,
        ) as Record<string, unknown>;
        expect(closed).toMatchObject({ state: 'confirmed', code: 'OK' });
        expect(await writesReceived(controlUrl, 'inlet-valve')).toBe(2);
        const readme = readmeCurl();
        const fromReadme = await curlRun(readme);
        expect(fromReadme.stderr).toBe('');
        expect(JSON.parse(fromReadme.stdout)).toMatchObject({
          key: 'demo-1',
          device: 'inlet-valve',
          action: 'open',
          state: 'confirmed',
          code: 'OK',
        });
        expect(await writesReceived(controlUrl, 'inlet-valve')).toBe(3);
        expect(await curlRun(readme)).toEqual(fromReadme);
        expect(await writesReceived(controlUrl, 'inlet-valve')).toBe(3);

        // /readyz says how MQTT is connected: the embedded broker refuses MQTT 5 (SPEC §5).
        const readyz = JSON.parse(
          (await curlRun(`curl -sS --cacert ${cacert} https://127.0.0.1:8443/readyz`)).stdout,
        ) as { checks: Record<string, { ok: boolean; detail: string }> };
        expect(readyz.checks.mqtt).toEqual({
          ok: true,
          detail:
            'connected (MQTT 3.1.1: the broker refused MQTT 5; response topics and message expiry unavailable)',
        });

        // The printed status page answers over the same TLS (the browser test logs in there).
        const statusUrl = /Status +(\S+)/.exec(text)?.[1] ?? '';
        expect(statusUrl).toBe('https://127.0.0.1:8443/ui/');
        const page = (await curlRun(`curl -sS --cacert ${cacert} -w '\n%{http_code}' ${statusUrl}`))
          .stdout;
        expect(page.slice(page.lastIndexOf('\n') + 1)).toBe('200');
        expect(page).toMatch(/<html/i);
        // "log in with the token": the demo token is an operator there (README).
        const login = JSON.parse(
          (
            await curlRun(
              `curl -sS --cacert ${cacert} -H 'Origin: https://127.0.0.1:8443' -H 'Content-Type: application/json' -d '{"token":"demo-test-token"}' https://127.0.0.1:8443/ui/api/login`,
            )
          ).stdout,
        ) as Record<string, unknown>;
        expect(login).toMatchObject({ identity: 'demo', role: 'operator', gatewayId: 'demo' });
      };
      await bothDone(overHttps(), overMqtt);
    } finally {
      await demo.stop();
    }
    // Not printed at any time, before the banner, inside it or after it: in the log instead.
    expect(lines.filter((l) => OPCUA_NOISE.test(l))).toEqual([]);
    expect(
      demo
        .stderr()
        .split('\n')
        .filter((l) => OPCUA_NOISE.test(l)),
    ).toEqual([]);
    const logged = readFileSync(LOG)
      .subarray(logFrom)
      .toString('utf8')
      .split('\n')
      .filter((l) => l.includes('"component":"node-opcua"'))
      .map((l) => JSON.parse(l) as { level: number; msg: string; note?: string });
    expect(logged).toContainEqual(
      expect.objectContaining({ level: 40, msg: 'Creating default certificate ... please wait' }),
    );
    // node-opcua runs its RSA PKCS#1 v1.5 check (W27) on Node 20 and 21 only.
    if (Number(process.versions.node.split('.')[0]) < 22) {
      const w27 = logged.filter((l) => l.msg.startsWith('[NODE-OPCUA-W27]'));
      expect(w27.map((l) => l.level)).toEqual([30]);
      expect(w27[0]?.note).toMatch(/^does not apply: only the Basic128Rsa15 security policy/);
    }
  },
  180_000,
);

/** A Mosquitto on the embedded broker's own address, 127.0.0.1:1883, as a gateway may have. */
async function mosquittoOn1883(): Promise<{ stop: () => Promise<void> }> {
  const { dir, cleanup } = tempDir('sluice-demo-mosquitto-');
  writeFileSync(
    join(dir, 'mosquitto.conf'),
    [
      'listener 1883 127.0.0.1',
      'allow_anonymous true',
      // As root mosquitto would switch to the `mosquitto` user.
      ...(isRoot ? ['user root'] : []),
      '',
    ].join('\n'),
  );
  const child = spawn('mosquitto', ['-c', join(dir, 'mosquitto.conf')], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  // Kept for the error when it is not seen listening.
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => {
    stderr += chunk.toString('utf8');
  });
  const ended: { how: string | null } = { how: null };
  const exited = new Promise<void>((resolve) =>
    child.once('exit', (code, signal) => {
      ended.how = signal ?? `exit ${String(code)}`;
      resolve();
    }),
  );
  const stop = async (): Promise<void> => {
    child.kill('SIGTERM');
    await exited;
    cleanup();
  };
  try {
    // Seen listening by connecting to it, and given up at its exit. It was waited for by
    // portFree(1883) every 20 ms, and not seen within 10 s once in CI: each probe listens on
    // 1883 a moment, and a Mosquitto binding the port in that moment exits with "Error: Address
    // already in use", after which the port is seen free until the wait runs out (3 of 30
    // starts with the probe run back to back; none in 250 at its 20 ms pace here).
    await until(
      async () => {
        if (ended.how !== null) throw new Error('mosquitto exited before it was seen listening');
        return (await accepts(1883)) ? true : undefined;
      },
      10_000,
      'mosquitto',
    );
  } catch (error) {
    const state = ended.how ?? 'still running';
    await stop();
    throw new Error(
      `${String(error)}; mosquitto: ${state}; its stderr: ${JSON.stringify(stderr)}`,
      {
        cause: error,
      },
    );
  }
  return { stop };
}

it.runIf(curl && mosquittoClients && mosquittoAvailable())(
  'with 1883 taken, npm start prints how to use that broker; the printed command runs the demo on it',
  async () => {
    for (const port of PORTS) {
      if (!(await portFree(port))) throw new Error(`port ${port} is taken: the demo cannot start`);
    }
    const broker = await mosquittoOn1883();
    try {
      // A gateway id of the user's own in the environment too: the printed commands follow the
      // daemon's topics, sluice/line-7/…, not the site file's sluice/demo/….
      const env: NodeJS.ProcessEnv = {
        ...process.env,
        SLUICE_DEMO_TOKEN: 'demo-test-token',
        SLUICE_GATEWAY_ID: 'line-7',
        // And HTTPS on every address (to be reached from elsewhere): the printed curl still
        // works from here.
        SLUICE_HTTPS_HOST: '0.0.0.0',
      };
      delete env.SLUICE_MQTT_URL;
      const refused = spawnSync('npm', ['start', '--silent'], {
        cwd: ROOT,
        env,
        encoding: 'utf8',
        timeout: 120_000,
      });
      expect(refused.status, refused.stderr).toBe(2);
      const hint = /point the demo at it: (.+)$/m.exec(refused.stderr)?.[1];
      expect(hint).toBe('SLUICE_MQTT_URL=mqtt://127.0.0.1:1883 npm start');
      // The refused start left nothing on the demo's other ports (it checks 1883 before starting
      // anything; taken later, it stops what it started).
      const ports = PORTS.filter((p) => p !== 1883);
      for (const port of ports) expect(await portFree(port)).toBe(true);

      // The hint, run as printed by a shell.
      const demo = await startDemo(['sh', '-c', hint!], env, ports);
      try {
        const text = demo.lines.join('\n');
        expect(text).toContain('mqtt://127.0.0.1:1883 (SLUICE_MQTT_URL)');
        expect(text).toContain('topics sluice/line-7/#');
        expect(demo.lines.map((l) => l.trim())).toContain('connected (MQTT 5)');
        const controlUrl = /Simulators control API (\S+)/.exec(text)?.[1] ?? '';
        const command = printed(demo.lines, 'curl ');
        expect(command).toContain(' https://127.0.0.1:8443/v1/commands ');
        // Side by side, as from two terminals: drain-valve over MQTT, inlet-valve over HTTPS.
        await bothDone(
          printedMqttCommandsWork(demo.lines, controlUrl, 'sluice/line-7'),
          (async () => {
            const out = await curlRun(command);
            expect(out.stderr).toBe('');
            expect(JSON.parse(out.stdout)).toMatchObject({ state: 'confirmed', code: 'OK' });
            expect(await writesReceived(controlUrl, 'inlet-valve')).toBe(1);
          })(),
        );
      } finally {
        await demo.stop();
      }
    } finally {
      await broker.stop();
    }
  },
  240_000,
);

it.runIf(curl)(
  'with 8443 taken, npm start prints how to move its HTTPS; the printed command runs the demo there',
  async () => {
    for (const port of PORTS) {
      if (!(await portFree(port))) throw new Error(`port ${port} is taken: the demo cannot start`);
    }
    // Something else on the demo's HTTPS address (another demo, a sluiced).
    const squatter = createServer();
    await new Promise<void>((resolve) => squatter.listen(8443, '127.0.0.1', resolve));
    try {
      const env: NodeJS.ProcessEnv = {
        ...process.env,
        SLUICE_DEMO_TOKEN: 'demo-test-token',
        SLUICE_MQTT_URL: '',
      };
      delete env.SLUICE_HTTPS_PORT;
      const refused = spawnSync('npm', ['start', '--silent'], {
        cwd: ROOT,
        env,
        encoding: 'utf8',
        timeout: 120_000,
      });
      // Said in words, as for the other ports, not a stack trace.
      expect(refused.status, refused.stderr).toBe(2);
      expect(refused.stderr).not.toMatch(/^\s+at /m);
      const hint = /give the demo another HTTPS port: (.+)$/m.exec(refused.stderr)?.[1];
      expect(hint).toBe('SLUICE_HTTPS_PORT=9443 npm start');
      for (const port of PORTS.filter((p) => p !== 8443)) expect(await portFree(port)).toBe(true);

      // The hint, run as printed by a shell: the demo on 9443, its printed curl works there.
      // It starts on the simulator certificate an earlier start kept (the first test's; none
      // when this test runs alone), serves it again (every device answers, the OPC UA ones
      // included) and leaves it as it was: no new one made.
      const kept = keptSimCertificate();
      const ports = [9443, ...PORTS.filter((p) => p !== 8443)];
      const demo = await startDemo(['sh', '-c', hint!], env, ports);
      try {
        const text = demo.lines.join('\n');
        expect(demo.lines.map((l) => l.trim())).toContain('all 4 answering');
        if (kept !== null) expect(keptSimCertificate()).toBe(kept);
        expect(text).toContain('HTTPS      https://127.0.0.1:9443');
        const command = printed(demo.lines, 'curl ');
        expect(command).toContain('https://127.0.0.1:9443/v1/commands');
        const out = await curlRun(command);
        expect(out.stderr).toBe('');
        expect(JSON.parse(out.stdout)).toMatchObject({
          device: 'inlet-valve',
          state: 'confirmed',
          code: 'OK',
        });
        const controlUrl = /Simulators control API (\S+)/.exec(text)?.[1] ?? '';
        expect(await writesReceived(controlUrl, 'inlet-valve')).toBe(1);
      } finally {
        await demo.stop();
      }
    } finally {
      await new Promise((resolve) => squatter.close(resolve));
    }
  },
  240_000,
);

/** The newest modification time under `dir` (of .ts files only, unless `every`). */
function newest(dir: string, every = false): number {
  let latest = 0;
  for (const item of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, item.name);
    if (item.isDirectory()) latest = Math.max(latest, newest(path, every));
    else if (every || item.name.endsWith('.ts')) latest = Math.max(latest, statSync(path).mtimeMs);
  }
  return latest;
}

/**
 * The demo as built (`npm start` builds when the build is older than its sources, as here) in
 * a copy of the package whose site file the test may edit as a user would: the repository's
 * own stays as it is. The build, the site file and the plant are copied, node_modules linked.
 */
function demoCopy(dir: string, edit: (site: string) => string): string {
  const entry = join(ROOT, 'dist', 'src', 'demo', 'main.js');
  const built = existsSync(entry) ? statSync(entry).mtimeMs : 0;
  const sources = Math.max(
    newest(join(ROOT, 'src')),
    newest(join(ROOT, 'simulators')),
    newest(join(ROOT, 'ui'), true),
  );
  if (built < sources) {
    execFileSync('npm', ['run', 'build', '--silent'], { cwd: ROOT, stdio: 'inherit' });
  }
  const copy = join(dir, 'sluice');
  for (const part of ['package.json', 'dist', 'devices', join('simulators', 'plants')]) {
    cpSync(join(ROOT, part), join(copy, part), { recursive: true });
  }
  symlinkSync(join(ROOT, 'node_modules'), join(copy, 'node_modules'));
  const site = join(copy, 'devices', 'site.example.yaml');
  writeFileSync(site, edit(readFileSync(site, 'utf8')));
  return copy;
}

const mosquittoPasswd = realComponent(
  'mosquitto_passwd',
  hasCommand('mosquitto_passwd'),
  'apt-get install mosquitto',
);

it.runIf(mosquittoClients && mosquittoPasswd && mosquittoAvailable())(
  "pointed at a broker that wants TLS, a client certificate, a user and a password, the demo's printed mosquitto commands work as printed",
  async () => {
    const ports = PORTS.filter((p) => p !== 1883);
    for (const port of ports) {
      if (!(await portFree(port))) throw new Error(`port ${port} is taken: the demo cannot start`);
    }
    const { dir, cleanup } = tempDir('sluice-demo-broker-');
    const pki = await makePki();
    const files = {
      ca: join(dir, 'broker-ca.pem'),
      cert: join(dir, 'gateway.pem'),
      key: join(dir, 'gateway.key'),
      password: join(dir, 'mqtt password'),
      passwd: join(dir, 'mosquitto.passwd'),
    };
    const client = await pki.client('demo-gateway');
    writeFileSync(files.ca, pki.serverCa.cert);
    writeFileSync(files.cert, client.cert);
    writeFileSync(files.key, client.key, { mode: 0o600 });
    const password = `pw ${Date.now().toString(36)}`;
    writeFileSync(files.password, `${password}\n`, { mode: 0o600 });
    execFileSync('mosquitto_passwd', ['-c', '-b', files.passwd, 'line-op', password]);
    // A site's broker: TLS only, a client certificate of its CA, and a user with a password.
    const broker = await startMosquitto({
      settings: [
        'allow_anonymous false',
        `password_file ${files.passwd}`,
        `cafile ${pki.clientCaFile}`,
        `certfile ${pki.certFile}`,
        `keyfile ${pki.keyFile}`,
        'require_certificate true',
      ],
    });
    const url = `mqtts://127.0.0.1:${broker.port}`;
    const tls: IClientOptions = {
      ca: pki.serverCa.cert,
      cert: client.cert,
      key: client.key,
      reconnectPeriod: 0,
    };
    try {
      // The broker wants them all: without the password it refuses.
      await expect(TestClient.connect(url, { ...tls, username: 'line-op' })).rejects.toThrow();

      // The user's edit: the mqtt section of the demo's site file names the broker and its
      // files. The site file's URL once did not count: the embedded broker started on 1883 all
      // the same, and the banner called the site's broker "(embedded broker)".
      const copy = demoCopy(dir, (site) => {
        const identity = "  identity: demo # MQTT commands share the demo token's key scope\n";
        expect(site).toContain(identity);
        expect(site).toContain('  url: mqtt://127.0.0.1:1883 ');
        return site
          .replace('  url: mqtt://127.0.0.1:1883 ', `  url: ${url} `)
          .replace(
            identity,
            `${identity}  username: line-op\n  passwordFile: ${JSON.stringify(files.password)}\n  caFile: ${files.ca}\n  certFile: ${files.cert}\n  keyFile: ${files.key}\n`,
          );
      });
      const env: NodeJS.ProcessEnv = { ...process.env, SLUICE_DEMO_TOKEN: 'demo-test-token' };
      delete env.SLUICE_MQTT_URL;
      delete env.SLUICE_GATEWAY_ID;
      delete env.INIT_CWD;
      const demo = await startDemo(
        [process.execPath, join(copy, 'dist', 'src', 'demo', 'main.js')],
        env,
        ports,
        copy,
      );
      try {
        const text = demo.lines.join('\n');
        expect(text).toContain(`${url} (devices/site.example.yaml)`);
        expect(text).not.toContain('embedded broker');
        // The banner comes after the broker's start: no embedded one took 1883.
        expect(await portFree(1883)).toBe(true);
        expect(demo.lines.map((l) => l.trim())).toContain('connected (MQTT 5)');
        // The password is read from its file by the shell, never printed.
        expect(text).not.toContain(password);
        expect(printed(demo.lines, 'mosquitto_pub ')).toContain(`-P "$(cat '${files.password}')"`);
        const controlUrl = /Simulators control API (\S+)/.exec(text)?.[1] ?? '';
        await printedMqttCommandsWork(demo.lines, controlUrl, 'sluice/demo', {
          url,
          options: { ...tls, protocolVersion: 5, username: 'line-op', password },
        });
      } finally {
        await demo.stop();
      }
    } finally {
      await broker.close();
      pki.cleanup();
      cleanup();
    }
  },
  240_000,
);

it.runIf(mosquittoClients && mosquittoAvailable())(
  'pointed at a WebSocket broker (ws://), the demo prints no mosquitto command but a sluicectl send that works as printed',
  async () => {
    // SLUICE_MQTT_URL takes ws:// and wss:// (config.ts), and the demo printed mosquitto_sub and
    // mosquitto_pub with that URL's host and port: the mosquitto clients speak MQTT over TCP
    // only, so they failed against the broker's WebSocket listener. Ground truth: the
    // simulator's write counter and the demo's journal.
    const ports = PORTS.filter((p) => p !== 1883);
    for (const port of ports) {
      if (!(await portFree(port))) throw new Error(`port ${port} is taken: the demo cannot start`);
    }
    const { broker, port: wsPort, url } = await wsBroker();
    try {
      const env: NodeJS.ProcessEnv = {
        ...process.env,
        SLUICE_DEMO_TOKEN: 'demo-test-token',
        SLUICE_MQTT_URL: url,
      };
      delete env.SLUICE_GATEWAY_ID;
      delete env.SLUICE_STATE_DIR;
      // That broker's URL with a user and a password: a password in the URL would be printed
      // in the banner and in the printed sluicectl line. Refused before anything starts, the
      // password not printed; a user with an `@` of its own once hid it, and the demo came up.
      const secret = `s3cret-${Date.now().toString(36)}`;
      const withPassword = `ws://op@line2:${secret}@127.0.0.1:${wsPort}`;
      const refused = spawnSync('npm', ['start', '--silent'], {
        cwd: ROOT,
        env: { ...env, SLUICE_MQTT_URL: withPassword },
        encoding: 'utf8',
        timeout: 120_000,
      });
      expect(refused.status, refused.stdout + refused.stderr).toBe(2);
      expect(refused.stderr).toContain(
        `mqtt.url: carries a password (user:…@ in ws://op@line2:***@127.0.0.1:${wsPort})`,
      );
      expect(refused.stdout + refused.stderr).not.toContain(secret);
      for (const port of ports) expect(await portFree(port)).toBe(true);
      const demo = await startDemo(['npm', 'start', '--silent'], env, ports);
      try {
        const text = demo.lines.join('\n');
        expect(text).toContain(`${url} (SLUICE_MQTT_URL)`);
        expect(demo.lines.map((l) => l.trim())).toContain('connected (MQTT 5)');
        expect(demo.lines.filter((l) => /^\s*mosquitto_(sub|pub) /.test(l))).toEqual([]);
        expect(text).toContain(
          'mosquitto clients (mosquitto_pub, mosquitto_sub) cannot reach: they speak MQTT over TCP',
        );
        // The printed line, run verbatim in a shell from the clone's folder (where `npm start`
        // ran), in a terminal without the demo's environment.
        const send = printed(demo.lines, 'SLUICE_MQTT_URL=');
        const shellEnv: NodeJS.ProcessEnv = { ...process.env };
        delete shellEnv.SLUICE_MQTT_URL;
        const controlUrl = /Simulators control API (\S+)/.exec(text)?.[1] ?? '';
        await sendTwiceAsPrinted(send, ROOT, shellEnv, controlUrl, join(STATE, 'journal.db'));
      } finally {
        await demo.stop();
      }
    } finally {
      await broker.close();
    }
  },
  240_000,
);

/** A Mosquitto with one WebSocket listener on a free port of 127.0.0.1; its port, its ws:// URL. */
async function wsBroker(): Promise<{
  broker: Awaited<ReturnType<typeof startMosquitto>>;
  port: number;
  url: string;
}> {
  const wsPort = await freePort();
  const broker = await startMosquitto({
    settings: [`listener ${wsPort} 127.0.0.1`, 'protocol websockets'],
  });
  return { broker, port: wsPort, url: `ws://127.0.0.1:${wsPort}` };
}

/**
 * Runs the printed sluicectl send line verbatim in a shell (from `cwd`, with `env`) twice, as the
 * demo says: the first opens drain-valve with one write (the simulator's write counter) and a
 * confirmed mqtt row in the journal; the second replays the stored result, with no second write.
 */
async function sendTwiceAsPrinted(
  send: string,
  cwd: string,
  env: NodeJS.ProcessEnv,
  controlUrl: string,
  journal: string,
): Promise<void> {
  const key = /--key (\S+)/.exec(send)?.[1] ?? '';
  expect(key).not.toBe('');
  const run = (): { status: number | null; stdout: string; stderr: string } =>
    spawnSync('sh', ['-c', send], { cwd, env, encoding: 'utf8', timeout: 60_000 });
  const before = await writesReceived(controlUrl, 'drain-valve');
  const first = run();
  expect(first.status, `${first.stdout}\n${first.stderr}`).toBe(0);
  expect(first.stdout).toMatch(/^CONFIRMED over mqtt/);
  expect(await writesReceived(controlUrl, 'drain-valve')).toBe(before + 1);
  const journalRow = (): unknown => {
    const db = new BetterSqlite3(journal, { readonly: true });
    try {
      return db
        .prepare('SELECT device, action, state, code, intake FROM commands WHERE key = ?')
        .all(key);
    } finally {
      db.close();
    }
  };
  const settled = {
    device: 'drain-valve',
    action: 'open',
    state: 'confirmed',
    code: 'OK',
    intake: 'mqtt',
  };
  expect(journalRow()).toEqual([settled]);
  // Run again as the demo says: the stored result, no second write.
  const again = run();
  expect(again.status, `${again.stdout}\n${again.stderr}`).toBe(0);
  expect(again.stdout).toMatch(new RegExp(`^REPLAYED: key ${key} was already settled`));
  expect(await writesReceived(controlUrl, 'drain-valve')).toBe(before + 1);
  expect(journalRow()).toEqual([settled]);
}

/** The shell commands the demo printed for a user to run: their first lines. */
function printedCommands(lines: readonly string[]): string[] {
  return lines
    .map((l) => l.trim())
    .filter((l) => /^(curl|mosquitto_sub|mosquitto_pub|ISSUED_AT=|SLUICE_\w+=|node) /.test(l));
}

it.runIf(curl)(
  'with no mqtt section in the site file, the demo starts no broker and prints no MQTT command; its curl works as printed',
  async () => {
    for (const port of PORTS) {
      if (!(await portFree(port))) throw new Error(`port ${port} is taken: the demo cannot start`);
    }
    // The site file without its mqtt section: the daemon has no MQTT intake. The demo started
    // the embedded broker on 1883 all the same and printed mosquitto_sub and mosquitto_pub
    // commands, whose commands reached no daemon (no write, no journal row, no result).
    const { dir, cleanup } = tempDir('sluice-demo-no-mqtt-');
    try {
      const copy = demoCopy(dir, (site) => {
        const section = /^mqtt:\n(?: .*\n)+\n/m;
        expect(site).toMatch(section);
        return site.replace(section, '');
      });
      const env: NodeJS.ProcessEnv = { ...process.env, SLUICE_DEMO_TOKEN: 'demo-test-token' };
      delete env.SLUICE_MQTT_URL;
      delete env.SLUICE_GATEWAY_ID;
      delete env.INIT_CWD;
      const demo = await startDemo(
        [process.execPath, join(copy, 'dist', 'src', 'demo', 'main.js')],
        env,
        PORTS,
        copy,
      );
      try {
        const text = demo.lines.join('\n');
        // Up and banner printed: no broker took 1883.
        expect(await portFree(1883)).toBe(true);
        // Every command printed is run here: the curl alone.
        expect(printedCommands(demo.lines).map((l) => l.split(' ')[0])).toEqual(['curl']);
        expect(text).toContain(
          'MQTT       off (no mqtt section in devices/site.example.yaml): commands over HTTPS only',
        );
        expect(text).not.toContain('embedded broker');
        const command = printed(demo.lines, 'curl ');
        const out = await curlRun(command, '', copy);
        expect(out.stderr).toBe('');
        expect(JSON.parse(out.stdout)).toMatchObject({
          device: 'inlet-valve',
          state: 'confirmed',
          code: 'OK',
        });
        const controlUrl = /Simulators control API (\S+)/.exec(text)?.[1] ?? '';
        expect(await writesReceived(controlUrl, 'inlet-valve')).toBe(1);
      } finally {
        await demo.stop();
      }
    } finally {
      cleanup();
    }
  },
  240_000,
);

it.runIf(mosquittoAvailable())(
  'pointed at a WebSocket broker named in the site file, the printed sluicectl send names it nowhere else and works as printed',
  async () => {
    // The broker is in the site file, which the printed line gives sluicectl (--config): the
    // line repeated it as SLUICE_MQTT_URL, a second place to keep in step for nothing. Run
    // verbatim in a shell of the copy's folder (where the demo ran) without the demo's
    // environment; ground truth: the simulator's write counter and the copy's journal.
    const ports = PORTS.filter((p) => p !== 1883);
    for (const port of ports) {
      if (!(await portFree(port))) throw new Error(`port ${port} is taken: the demo cannot start`);
    }
    const { broker, url } = await wsBroker();
    const { dir, cleanup } = tempDir('sluice-demo-site-ws-');
    try {
      const copy = demoCopy(dir, (site) => {
        expect(site).toContain('  url: mqtt://127.0.0.1:1883 ');
        return site.replace('  url: mqtt://127.0.0.1:1883 ', `  url: ${url} `);
      });
      const env: NodeJS.ProcessEnv = { ...process.env, SLUICE_DEMO_TOKEN: 'demo-test-token' };
      delete env.SLUICE_MQTT_URL;
      delete env.SLUICE_GATEWAY_ID;
      delete env.SLUICE_STATE_DIR;
      delete env.INIT_CWD;
      const demo = await startDemo(
        [process.execPath, join(copy, 'dist', 'src', 'demo', 'main.js')],
        env,
        ports,
        copy,
      );
      try {
        const text = demo.lines.join('\n');
        expect(text).toContain(`${url} (devices/site.example.yaml)`);
        expect(demo.lines.map((l) => l.trim())).toContain('connected (MQTT 5)');
        expect(text).not.toContain('SLUICE_MQTT_URL');
        // Every command printed is run here: the curl and the sluicectl line.
        expect(printedCommands(demo.lines).map((l) => l.split(' ')[0])).toEqual(['curl', 'node']);
        const controlUrl = /Simulators control API (\S+)/.exec(text)?.[1] ?? '';
        const curled = await curlRun(printed(demo.lines, 'curl '), '', copy);
        expect(curled.stderr).toBe('');
        expect(JSON.parse(curled.stdout)).toMatchObject({ state: 'confirmed', code: 'OK' });
        expect(await writesReceived(controlUrl, 'inlet-valve')).toBe(1);
        const send = printed(demo.lines, 'node ');
        expect(send).toContain(' --via mqtt ');
        const shellEnv: NodeJS.ProcessEnv = { ...process.env };
        delete shellEnv.SLUICE_MQTT_URL;
        delete shellEnv.SLUICE_GATEWAY_ID;
        delete shellEnv.SLUICE_STATE_DIR;
        await sendTwiceAsPrinted(
          send,
          copy,
          shellEnv,
          controlUrl,
          join(copy, '.state', 'demo', 'journal.db'),
        );
      } finally {
        await demo.stop();
      }
    } finally {
      await broker.close();
      cleanup();
    }
  },
  240_000,
);
