import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { cpSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { connect } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { certificateNames, ensureDemoCertificate } from '../../src/demo/https-certificate.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { buildInto } from '../systemd/build.js';
import { ROOT, tempDir } from '../helpers/fixtures.js';
import { until } from '../helpers/mosquitto.js';
import { hasCommand, realComponent } from '../helpers/real.js';

/**
 * The walkthrough of docs/device-profiles.md ("Mapping a PLC you have never seen"), its
 * commands run as printed by a shell, in a built checkout of the package that has the demo's
 * certificate and token (the doc says to run `npm start` once before): `npx sluice-sim` with
 * the field plant, the mbpoll cross-checks, `npx sluiced --check` on devices/site.field.yaml,
 * the daemon started the same way, then the first command's curl and mbpoll. Judged on the
 * simulator's control API (its write log), the mbpoll reads and the field site's journal.
 * Then the step the doc gives for a daemon left running when a later `npm start` makes the
 * demo's certificate anew: the demo's own code makes it (the kept one, made by that code a year
 * ago, expires within the day), the doc's curl fails on the old certificate, and
 * `kill -HUP <pid>` with the pid of the daemon's log puts the new one in place (the certificate
 * a new TLS handshake is given).
 * `npm run build` before `npx sluice-sim` is left out: the checkout is built by the same
 * compiler (test/systemd/build.ts) without touching this tree's dist/. The ports are the
 * doc's own (5021, 5081, 8444), which no other test takes.
 */

const tools =
  realComponent('mbpoll', hasCommand('mbpoll'), 'apt-get install mbpoll') &&
  realComponent('curl', hasCommand('curl'), 'apt-get install curl');

const TOKEN = 'walkthrough-token';

let dir: string;
let cleanup: () => void;
let checkout: string;
/** The demo's TLS folder in the checkout, as `npm start` leaves it. */
let tls: string;
const DAY = 86_400_000;
const started: ChildProcess[] = [];

interface ShellRun {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

function shell(script: string): Promise<ShellRun> {
  return new Promise((resolve) => {
    execFile(
      'bash',
      ['-c', script],
      { cwd: checkout, timeout: 60_000 },
      (error, stdout, stderr) => {
        const code = error === null ? 0 : typeof error.code === 'number' ? error.code : -1;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

/** A long-running command of the doc, in its own process group; its output as it comes. */
function background(command: string): { lines: string[] } {
  const child = spawn('bash', ['-c', command], {
    cwd: checkout,
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  started.push(child);
  const lines: string[] = [];
  createInterface({ input: child.stdout }).on('line', (l) => lines.push(l));
  createInterface({ input: child.stderr }).on('line', (l) => lines.push(l));
  return { lines };
}

/** The walkthrough's text: its code blocks and its inline `npx` commands. */
function walkthrough(): { blocks: string[]; text: string } {
  const doc = readFileSync(join(ROOT, 'docs', 'device-profiles.md'), 'utf8');
  const start = doc.indexOf('## Mapping a PLC you have never seen');
  const text = doc.slice(start, doc.indexOf('\n## ', start + 1));
  // The blocks are indented under their numbered steps.
  const blocks = [...text.matchAll(/^( *)```sh\n([\s\S]*?)^\1```/gm)].map((m) =>
    m[2]!
      .split('\n')
      .map((l) => l.slice(m[1]!.length))
      .join('\n'),
  );
  return { blocks, text };
}

/** What the simulator's control API says of a device's writes. */
async function writes(device: string): Promise<{ writesReceived: number }> {
  const r = await fetch(`http://127.0.0.1:5081/devices/${device}/writes`);
  return (await r.json()) as { writesReceived: number };
}

/** The fingerprint of the certificate a new TLS connection to the field daemon is given. */
function served(): Promise<string> {
  return new Promise((resolve, reject) => {
    // Looked at, not trusted: the test asks which certificate is served.
    const socket = connect({ host: '127.0.0.1', port: 8444, rejectUnauthorized: false }, () => {
      const fingerprint = socket.getPeerCertificate().fingerprint256;
      socket.destroy();
      resolve(fingerprint);
    });
    socket.once('error', reject);
  });
}

/** The number mbpoll printed for one register. */
function register(out: string, at: number): number {
  const m = new RegExp(`^\\[${at}\\]:\\s+(\\S+)$`, 'm').exec(out);
  if (m?.[1] === undefined) throw new Error(`mbpoll printed no register ${at}:\n${out}`);
  return Number(m[1]);
}

beforeAll(async () => {
  if (!tools) return;
  ({ dir, cleanup } = tempDir('sluice-walkthrough-'));
  checkout = join(dir, 'sluice');
  mkdirSync(checkout);
  await buildInto(join(checkout, 'dist'));
  for (const f of ['package.json', 'devices', 'simulators/plants']) {
    cpSync(join(ROOT, f), join(checkout, f), { recursive: true });
  }
  symlinkSync(join(ROOT, 'node_modules'), join(checkout, 'node_modules'));
  // What `npm start` leaves: the demo's certificate and token. The certificate is the demo's
  // own, made by its code as a start a year ago (364.5 days) made it: valid for half a day more.
  tls = join(checkout, '.state', 'demo', 'tls');
  const made = await ensureDemoCertificate(
    tls,
    certificateNames(undefined),
    Date.now() - 364.5 * DAY,
  );
  expect(made.made).toBe(true);
  writeFileSync(join(checkout, '.state', 'demo', 'demo-token'), `${TOKEN}\n`, { mode: 0o600 });
}, 120_000);

afterAll(async () => {
  for (const child of started.reverse()) {
    if (child.exitCode !== null || child.signalCode !== null) continue;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    process.kill(-child.pid!, 'SIGTERM');
    await exited;
  }
  if (tools) cleanup();
});

describe.runIf(tools)('the walkthrough of docs/device-profiles.md, as printed', () => {
  it('cross-checks the map, checks the site, and moves the positioner once', async () => {
    const { blocks, text } = walkthrough();
    expect(blocks).toHaveLength(2);
    const [crossCheck, firstCommand] = blocks as [string, string];

    // 2. The simulator, then the mbpoll cross-checks.
    const [buildAndSim, ...polls] = crossCheck.trim().split('\n');
    expect(buildAndSim).toBe(
      'npm run build && npx sluice-sim --plant simulators/plants/field.yaml',
    );
    const sim = background(buildAndSim!.replace(/^npm run build && /, ''));
    await until(
      () => (sim.lines.some((l) => l.startsWith('control: ')) ? true : undefined),
      60_000,
      `sluice-sim up (it printed: ${sim.lines.join('\n')})`,
    );
    const polled: string[] = [];
    for (const line of polls) {
      const r = await shell(line);
      expect(r.code, r.stderr).toBe(0);
      polled.push(r.stdout);
    }
    // "The state reads 1 (idle), the position 0.0 and the status word 2 (closed limit switch)."
    expect(text).toContain('The state reads 1 (idle), the position 0.0 and the status word 2');
    expect(register(polled[0]!, 210)).toBe(1);
    expect(register(polled[1]!, 211)).toBe(0);
    expect(register(polled[2]!, 100)).toBe(2);

    // 3. The site checked: the register map as the driver will use it, nothing created.
    const checkLine = /`(npx sluiced --config devices\/site\.field\.yaml --check)`/.exec(text)?.[1];
    expect(checkLine).toBeDefined();
    const check = await shell(checkLine!);
    expect(check.stderr).toBe('');
    expect(check.code).toBe(0);
    for (const said of ['reads holding 210+10', 'writes holding 200+4']) {
      expect(text).toContain(`\`${said}\``);
      const [verb, ...rest] = said.split(' ');
      expect(check.stdout).toMatch(
        new RegExp(`^\\s+${verb}\\s+${rest.join(' ').replace('+', '\\+')}`, 'm'),
      );
    }

    // 4. The daemon, started as the doc says, then the first command and its mbpoll.
    const startLine =
      /Start the daemon \(`(npx sluiced --config devices\/site\.field\.yaml)`\)/.exec(text)?.[1];
    expect(startLine).toBeDefined();
    const daemon = background(startLine!);
    await until(
      async () => {
        const r = await shell(
          'curl -sS --cacert .state/demo/tls/cert.pem https://127.0.0.1:8444/readyz',
        );
        return r.stdout.startsWith('{"status":"ready"') ? true : undefined;
      },
      30_000,
      `sluiced ready on 8444 (it printed: ${daemon.lines.slice(-5).join('\n')})`,
    );
    const before = (await writes('fcv-201')).writesReceived;
    const lines = firstCommand.trim().split('\n');
    const mbpollAt = lines.findIndex((l) => l.startsWith('mbpoll '));
    const curl = await shell(lines.slice(0, mbpollAt).join('\n'));
    expect(curl.code, curl.stderr).toBe(0);
    const result = JSON.parse(curl.stdout) as { seq: number; observed: { position: number } };
    // "The answer is `confirmed` with the position read back."
    expect(result).toMatchObject({
      key: 'first-move-1',
      device: 'fcv-201',
      action: 'move',
      state: 'confirmed',
      code: 'OK',
      observed: { position: 37.25 },
    });
    const after = await shell(lines[mbpollAt]!);
    expect(after.code, after.stderr).toBe(0);
    expect(register(after.stdout, 211)).toBe(37.25);
    // "`-r 203` shows the sequence number the bridge wrote, echoed at 214."
    const seq = await shell(lines[mbpollAt]!.replace(/-t 4:float -r 211/, '-r 203'));
    const echo = await shell(lines[mbpollAt]!.replace(/-t 4:float -r 211/, '-r 214'));
    expect(register(seq.stdout, 203)).toBe(result.seq);
    expect(register(echo.stdout, 214)).toBe(result.seq);
    // Ground truth: one write on the positioner, and the field site's journal says confirmed.
    expect((await writes('fcv-201')).writesReceived).toBe(before + 1);
    const journal = SqliteJournal.open({
      path: join(checkout, '.state', 'field', 'journal.db'),
      readonly: true,
    });
    try {
      expect(journal.get({ scope: 'demo', key: 'first-move-1' })).toMatchObject({
        state: 'confirmed',
        code: 'OK',
      });
    } finally {
      journal.close();
    }

    // A later `npm start` makes the demo's certificate anew: its code, on the kept one that
    // expires within the day. The daemon left running serves the old one, and the doc's curl,
    // trusting the new file, fails.
    expect(text).toContain('fails on this daemon (`SSL certificate problem`)');
    const oldServed = await served();
    const renewed = await ensureDemoCertificate(tls, certificateNames(undefined));
    expect(renewed.made).toBe(true);
    expect(renewed.problem).toMatch(/expires/);
    const newFingerprint = new X509Certificate(readFileSync(renewed.certFile)).fingerprint256;
    expect(newFingerprint).not.toBe(oldServed);
    const replay = lines.slice(0, mbpollAt).join('\n');
    const refused = await shell(replay);
    expect(refused.code).toBe(60);
    expect(refused.stderr).toContain('SSL certificate problem');
    expect(await served()).toBe(oldServed);

    // "`kill -HUP <pid>`, with the `pid` its log lines carry."
    expect(text).toContain(
      'Reload the daemon: `kill -HUP <pid>`, with the `pid` its log lines carry',
    );
    const logged = daemon.lines.find((l) => l.includes('"msg":"sluiced started"'));
    const pid = (JSON.parse(logged!) as { pid: number }).pid;
    const from = daemon.lines.length;
    const hup = await shell(`kill -HUP ${String(pid)}`);
    expect(hup.code, hup.stderr).toBe(0);
    await until(
      () =>
        daemon.lines.slice(from).some((l) => l.includes('"msg":"reload done"')) ? true : undefined,
      15_000,
      `the reload done (it printed: ${daemon.lines.slice(-5).join('\n')})`,
    );
    const done = daemon.lines.slice(from).find((l) => l.includes('"msg":"reload done"'));
    expect(JSON.parse(done!)).toMatchObject({ https: 'reloaded' });
    // New connections get the new pair; the doc's curl gets the stored answer.
    expect(await served()).toBe(newFingerprint);
    const again = await shell(replay);
    expect(again.code, again.stderr).toBe(0);
    expect(JSON.parse(again.stdout)).toMatchObject({ key: 'first-move-1', state: 'confirmed' });
    expect((await writes('fcv-201')).writesReceived).toBe(before + 1);
  }, 180_000);
});
