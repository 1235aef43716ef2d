import { execFile, spawn } from 'node:child_process';
import { cpSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { parse, stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type { DeviceSnapshot } from '../../simulators/plc.js';
import type { WriteLogEntry } from '../../simulators/write-log.js';
import { ROOT, tempDir } from '../helpers/fixtures.js';
import { hasCommand, isRoot, realComponent } from '../helpers/real.js';
import { SimProcess, type PlantPlcs } from '../helpers/sim-process.js';
import { buildInto } from '../systemd/build.js';
import { registersToTime, until } from './helpers.js';

/**
 * The other printed commands of simulators/README.md, run verbatim, each one's effect checked
 * on the plant's ground truth (its write log and device view; test/simulators/
 * control-api-readme.test.ts does the control API's curl block):
 *
 * - the mbpoll block ("By hand with mbpoll"), against the default plant and the field plant
 *   as their plant files describe them, in sluice-sim processes of their own;
 * - the node-opcua script ("By hand with node-opcua"), run by node as a reader would save it;
 * - `npx sluice-sim --plant my-plant.yaml --log-level info`, in a checkout of the package,
 *   with the README's example plant as my-plant.yaml, stopped by Ctrl-C (SIGINT to the
 *   terminal's process group).
 *
 * The one substitution is the port: the plant files' fixed ports (5020, 5021, 4840) become the
 * ones the simulator bound, as the plants start on ephemeral ports here. The default plant's
 * are the demo's (test/daemon/demo.test.ts binds them, files run in parallel) and the field
 * plant's are profiles-walkthrough.test.ts's. For the same reason the README's two other
 * start lines (`npm run build && npx sluice-sim` with the default plant, `npx sluice-sim
 * --plant simulators/plants/field.yaml`) are not run here: the walkthrough runs the second,
 * and the demo the default plant on its ports.
 */

const tools =
  realComponent('mbpoll', hasCommand('mbpoll'), 'apt-get install mbpoll') &&
  realComponent('curl', hasCommand('curl'), 'apt-get install curl');

/** Network namespaces, where the plant files' fixed ports are free whatever runs beside. */
const netns = realComponent(
  'network namespaces (root, unshare, nsenter, ip)',
  isRoot && hasCommand('unshare') && hasCommand('nsenter') && hasCommand('ip'),
  'root, util-linux and iproute2',
);

const README = readFileSync(join(ROOT, 'simulators', 'README.md'), 'utf8');

/** The ```lang blocks of the text after `marker` up to the next `## ` heading. */
function blocksAfter(marker: string, lang: string): string[] {
  const start = README.indexOf(marker);
  expect(start, `simulators/README.md: ${marker}`).toBeGreaterThan(-1);
  const section = README.slice(start).split(/\n## /)[0]!;
  return [...section.matchAll(new RegExp(`^\`\`\`${lang}\\n([\\s\\S]*?)^\`\`\`$`, 'gm'))].map(
    (m) => m[1]!,
  );
}

function plantFile(name: string): { control?: unknown; plcs: PlantPlcs } {
  return parse(readFileSync(join(ROOT, 'simulators', 'plants', name), 'utf8')) as {
    plcs: PlantPlcs;
  };
}

interface Run {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

function shell(
  line: string,
  options: { cwd?: string; env?: NodeJS.ProcessEnv } = {},
): Promise<Run> {
  return new Promise((resolve) => {
    execFile('sh', ['-c', line], { timeout: 60_000, ...options }, (error, stdout, stderr) => {
      const code = error === null ? 0 : typeof error.code === 'number' ? error.code : -1;
      resolve({ code, stdout, stderr });
    });
  });
}

/** The registers mbpoll printed (`[at]: value`, a signed form in brackets ignored). */
function printed(out: string): Map<number, number> {
  return new Map(
    [...out.matchAll(/^\[(\d+)\]:\s+(-?\d+)/gm)].map((m) => [Number(m[1]), Number(m[2])]),
  );
}

const started: SimProcess[] = [];
let defaultPlant: SimProcess;
let fieldPlant: SimProcess;
let cleanup: () => void;
let dir: string;

beforeAll(async () => {
  if (!tools) return;
  ({ dir, cleanup } = tempDir('sluice-sim-readme-'));
  for (const sub of ['default', 'field']) mkdirSync(join(dir, sub));
  const results = await Promise.allSettled([
    SimProcess.start(join(dir, 'default'), plantFile('default.yaml').plcs),
    SimProcess.start(join(dir, 'field'), plantFile('field.yaml').plcs),
  ]);
  // Those that started are stopped at the end, whichever failed.
  for (const result of results) if (result.status === 'fulfilled') started.push(result.value);
  for (const result of results) if (result.status === 'rejected') throw result.reason;
  [defaultPlant, fieldPlant] = started as [SimProcess, SimProcess];
}, 90_000);

afterAll(async () => {
  if (!tools) return;
  await Promise.allSettled(started.map((plant) => plant.stop()));
  cleanup();
});

async function view(plant: SimProcess, device: string): Promise<DeviceSnapshot> {
  return (await plant.call('GET', `/devices/${device}`)) as DeviceSnapshot;
}

async function writes(plant: SimProcess, device: string): Promise<WriteLogEntry[]> {
  return ((await plant.call('GET', `/devices/${device}/writes`)) as { writes: WriteLogEntry[] })
    .writes;
}

/** The writes of a device once a scan has taken every one of them. */
async function settledWrites(plant: SimProcess, device: string): Promise<WriteLogEntry[]> {
  let log: WriteLogEntry[] = [];
  await until(async () => {
    log = await writes(plant, device);
    return log.every((w) => w.outcome !== null);
  });
  return log;
}

function portOf(plant: SimProcess): number {
  const endpoint = plant.plcs[0]!.endpoint;
  if (endpoint.protocol !== 'modbus') throw new Error('the first PLC is not Modbus');
  return endpoint.port;
}

/** A float32 from two registers, low word first (the float layout's "CDAB"). */
function floatLowFirst(low: number, high: number): number {
  const buffer = Buffer.alloc(4);
  buffer.writeUInt16BE(high & 0xffff, 0);
  buffer.writeUInt16BE(low & 0xffff, 2);
  return buffer.readFloatBE(0);
}

/** The limit-switch status word the README's bit table gives for a device view. */
function statusWord(v: DeviceSnapshot): number {
  const p = v.published;
  return (
    (p.rawPosition >= 100 ? 1 : 0) |
    (p.rawPosition <= 0 ? 2 : 0) |
    (p.state === 'FAULT' ? 4 : 0) |
    (p.state === 'OPENING' ? 8 : 0) |
    (p.state === 'CLOSING' ? 16 : 0) |
    (p.state === 'LOCAL' ? 32 : 0)
  );
}

describe.runIf(tools).concurrent('simulators/README.md, its printed commands as printed', () => {
  it('the mbpoll block reads and writes what its comments say', async () => {
    const [block] = blocksAfter('By hand with [mbpoll]', 'sh');
    const lines = block!.split('\n').filter((l) => l.startsWith('mbpoll '));
    const defaultPort = portOf(defaultPlant);
    const fieldPort = portOf(fieldPlant);
    const run = async (line: string): Promise<Map<number, number>> => {
      const ports = [...line.matchAll(/-p (\d+)/g)].map((m) => m[1]);
      expect(ports.length === 1 && ['5020', '5021'].includes(ports[0]!), line).toBe(true);
      const command = line
        .replace('-p 5020', `-p ${defaultPort}`)
        .replace('-p 5021', `-p ${fieldPort}`);
      const result = await shell(command);
      expect(result.code, `${line}\n${result.stdout}${result.stderr}`).toBe(0);
      return printed(result.stdout);
    };
    const next = (pattern: RegExp): string => {
      const line = lines.shift();
      expect(line, `the README's next mbpoll line is ${pattern.source}`).toMatch(pattern);
      return line!;
    };

    // The status block of inlet-valve: state, position, fault, seq echo, then its scan time.
    let registers = await run(next(/-p 5020 .* -r 0 -c 8 -1 /));
    let inlet = await view(defaultPlant, 'inlet-valve');
    const p = inlet.published;
    expect([0, 1, 2, 3].map((i) => registers.get(i))).toEqual([
      p.stateCode,
      Math.round(p.position * 10),
      p.faultCode,
      p.seqEcho,
    ]);
    const scanTime = registersToTime([4, 5, 6, 7].map((i) => registers.get(i)!));
    expect(scanTime).toBeLessThanOrEqual(inlet.controllerTime);
    expect(scanTime).toBeGreaterThan(inlet.controllerTime - 5_000);

    // Open it: code 1, setpoint 0, seq 7, in one request; the valve opens.
    await run(next(/-p 5020 .* -0 -r 10 127\.0\.0\.1 1 0 7$/));
    expect(
      (await settledWrites(defaultPlant, 'inlet-valve')).map((w) => [w.seq, w.code, w.outcome]),
    ).toEqual([[7, 1, 'accepted']]);
    inlet = await view(defaultPlant, 'inlet-valve');
    expect(['OPENING', 'OPEN']).toContain(inlet.state);

    // The same without -0: reference 11 is address 10, so seq 8 lands in the command block.
    await run(next(/-p 5020 .* -t 4 -r 11 127\.0\.0\.1 1 0 8$/));
    expect((await settledWrites(defaultPlant, 'inlet-valve')).map((w) => [w.seq, w.code])).toEqual([
      [7, 1],
      [8, 1],
    ]);

    // The controller clock (the default plant's: no offset).
    const before = Date.now();
    registers = await run(next(/-p 5020 .* -r 900 -c 4 -1 /));
    const clock = registersToTime([900, 901, 902, 903].map((i) => registers.get(i)!));
    expect(clock).toBeGreaterThanOrEqual(before);
    expect(clock).toBeLessThanOrEqual(Date.now());

    // Field plant: lsv-101's status word and the same bits as discrete inputs.
    registers = await run(next(/-p 5021 .* -t 4 -0 -r 100 -1 /));
    const lsv = await view(fieldPlant, 'lsv-101');
    expect(registers.get(100)).toBe(statusWord(lsv));
    expect(registers.get(100), 'closed: CLOSED LIMIT only').toBe(2);
    registers = await run(next(/-p 5021 .* -t 1 -0 -r 100 -c 6 -1 /));
    expect([0, 1, 2, 3, 4, 5].map((i) => registers.get(100 + i))).toEqual(
      [0, 1, 2, 3, 4, 5].map((bit) => (statusWord(lsv) >> bit) & 1),
    );
    // Open it: one command in its command register, no seq.
    await run(next(/-p 5021 .* -r 110 127\.0\.0\.1 1$/));
    expect(
      (await settledWrites(fieldPlant, 'lsv-101')).map((w) => [w.seq, w.code, w.outcome]),
    ).toEqual([[0, 1, 'accepted']]);
    expect(['OPENING', 'OPEN']).toContain((await view(fieldPlant, 'lsv-101')).state);

    // fcv-201: move to 37.25 % with seq 9, then its status block.
    await run(next(/-p 5021 .* -r 200 127\.0\.0\.1 1 0 16917 9$/));
    expect(
      (await settledWrites(fieldPlant, 'fcv-201')).map((w) => [w.seq, w.code, w.setpoint]),
    ).toEqual([[9, 1, 37.25]]);
    const fcvBefore = await view(fieldPlant, 'fcv-201');
    registers = await run(next(/-p 5021 .* -r 210 -c 14 -1 /));
    const fcvAfter = await view(fieldPlant, 'fcv-201');
    // Vendor state codes: 1 IDLE, 2 MOVING.
    expect([1, 2]).toContain(registers.get(210));
    const position = floatLowFirst(registers.get(211)!, registers.get(212)!);
    expect(position).toBeGreaterThanOrEqual(fcvBefore.published.rawPosition - 1e-3);
    expect(position).toBeLessThanOrEqual(fcvAfter.published.rawPosition + 1e-3);
    expect(position).toBeLessThanOrEqual(37.25 + 1e-3);
    expect([213, 214, 215].map((i) => registers.get(i))).toEqual([0, 9, 0]);
    const imageTime = registersToTime([216, 217, 218, 219].map((i) => registers.get(i)!));
    const liveClock = registersToTime([220, 221, 222, 223].map((i) => registers.get(i)!));
    expect(imageTime).toBeLessThanOrEqual(liveClock);
    expect(liveClock).toBeLessThanOrEqual(fcvAfter.controllerTime);
    await until(async () => (await view(fieldPlant, 'fcv-201')).state === 'IDLE', {
      attempts: 300,
      everyMs: 20,
    });
    expect((await view(fieldPlant, 'fcv-201')).position).toBe(37.3);

    expect(lines, 'every mbpoll line of the block was run').toEqual([]);
  }, 60_000);

  it('the node-opcua script opens outlet-valve with seq 7 and prints its state', async () => {
    const [script] = blocksAfter('By hand with node-opcua', 'js');
    expect(script).toContain("'opc.tcp://127.0.0.1:4840'");
    const endpoint = defaultPlant.plcs.find((p) => p.name === 'opcua-plc')!.endpoint;
    if (endpoint.protocol !== 'opcua') throw new Error('opcua-plc is not OPC UA');
    // Saved as a reader would, beside a node_modules with node-opcua; its client certificate
    // (made on first use, under HOME) in the test's folder.
    const here = join(dir, 'opcua-example');
    cpSync(join(ROOT, 'package.json'), join(here, 'package.json'));
    symlinkSync(join(ROOT, 'node_modules'), join(here, 'node_modules'));
    writeFileSync(
      join(here, 'example.mjs'),
      script!.replace("'opc.tcp://127.0.0.1:4840'", `'${endpoint.endpointUrl}'`),
    );
    const result = await shell('node example.mjs', {
      cwd: here,
      env: { ...process.env, HOME: here },
    });
    expect(result.code, result.stderr).toBe(0);
    const writesOf = await settledWrites(defaultPlant, 'outlet-valve');
    expect(writesOf.map((w) => [w.seq, w.code, w.setpoint, w.outcome])).toEqual([
      [7, 1, 0, 'accepted'],
    ]);
    // The state read right after the write: before or after the scan that took it.
    // node-opcua prints notes of its own on stdout (its W27 check, the certificate it makes).
    const printedStates = result.stdout.split('\n').filter((l) => /^[A-Z]+$/.test(l));
    expect(printedStates, result.stdout).toHaveLength(1);
    expect(['CLOSED', 'OPENING']).toContain(printedStates[0]);
    expect(['OPENING', 'OPEN']).toContain((await view(defaultPlant, 'outlet-valve')).state);
  }, 90_000);

  it('npx sluice-sim --plant my-plant.yaml --log-level info runs the plant until Ctrl-C', async () => {
    const line = startLines().find((l) => l.startsWith('npx sluice-sim --plant my-plant.yaml'));
    expect(line).toBe('npx sluice-sim --plant my-plant.yaml --log-level info');
    // my-plant.yaml: the README's example plant, on ephemeral ports.
    const checkout = await checkoutDir();
    const yaml = blocksAfter('## Plant file', 'yaml')[0]!;
    const plant = parse(yaml) as {
      control: { port: number };
      plcs: Record<string, { port: number }>;
    };
    plant.control.port = 0;
    for (const plc of Object.values(plant.plcs)) plc.port = 0;
    writeFileSync(join(checkout, 'my-plant.yaml'), stringify(plant));

    const sim = terminal(line!, false);
    const shown: string[] = [];
    try {
      await until(() => sim.out.some((l) => l.startsWith('control: ')), {
        attempts: 600,
        everyMs: 100,
      });
      shown.push(...sim.out);
      expect(sim.out[0]).toBe('sluice-sim: plant my-plant.yaml');
      expect(sim.out[1]).toMatch(
        /^modbus-plc: modbus tcp:\/\/127\.0\.0\.1:\d+ unit 1 — inlet-valve \(valve @0\)$/,
      );
      expect(sim.out[2]).toMatch(
        /^opcua-plc: opcua {2}opc\.tcp:\/\/127\.0\.0\.1:\d+ ns urn:sluice:sim:opcua-plc — outlet-valve \(valve\), dosing-actuator \(actuator\)$/,
      );
      const control = /^control: (\S+)$/.exec(sim.out[3]!)?.[1];
      expect(control).toBeDefined();
      // --log-level info: pino JSON on stderr, info lines included.
      const logged = sim.err
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as { level: number; msg: string });
      expect(logged.some((l) => l.level === 30 && l.msg === 'control API listening')).toBe(true);
      // The plant of my-plant.yaml runs: its devices, and its Modbus PLC answers.
      const devices = (
        (await (await fetch(`${control!}/devices`)).json()) as {
          devices: { id: string }[];
        }
      ).devices.map((d) => d.id);
      expect(devices.sort()).toEqual(['dosing-actuator', 'inlet-valve', 'outlet-valve']);
      const modbusPort = Number(/tcp:\/\/127\.0\.0\.1:(\d+)/.exec(sim.out[1]!)![1]);

      await sim.ctrlC();
      // One line per PLC and the control API, then the stop: stdout holds nothing else
      // (node-opcua's notes included).
      expect(sim.out).toEqual([...shown, 'sluice-sim: stopped']);
      const refused = await new Promise<string | null>((resolve) => {
        const socket = connect({ host: '127.0.0.1', port: modbusPort });
        socket.once('connect', () => {
          socket.destroy();
          resolve(null);
        });
        socket.once('error', (e: NodeJS.ErrnoException) => {
          resolve(e.code ?? e.message);
        });
      });
      expect(refused, 'the Modbus port closed').toBe('ECONNREFUSED');
      await expect(fetch(`${control!}/devices`)).rejects.toThrow();
    } finally {
      sim.kill();
    }
  }, 120_000);

  it.runIf(netns)(
    "npx sluice-sim prints the README's lines on the default plant's ports, and runs the field plant",
    async () => {
      // Each in a network namespace of its own: the plant files' fixed ports are free there.
      // The README's `npm run build && ` before the first is not run: the checkout's dist/ is
      // the run's compiled tree (building would write this tree's dist/).
      const lines = startLines();
      expect(lines).toContain('npm run build && npx sluice-sim');
      const defaultLine = 'npx sluice-sim';
      const fieldLine = 'npx sluice-sim --plant simulators/plants/field.yaml';
      expect(lines).toContain(fieldLine);
      const checkout = await checkoutDir();
      cpSync(join(ROOT, 'simulators', 'plants'), join(checkout, 'simulators', 'plants'), {
        recursive: true,
      });
      const [sample] = blocksAfter('It prints one line per PLC', '');
      const expected = sample!.split('\n').filter((l) => l !== '');

      const sims = [terminal(defaultLine, true), terminal(fieldLine, true)];
      try {
        await until(() => sims.every((sim) => sim.out.some((l) => l.startsWith('control: '))), {
          attempts: 600,
          everyMs: 100,
        });
        const [plain, field] = sims as [Terminal, Terminal];
        // The default plant: the README's sample output, its package path aside.
        expect(plain.out).toHaveLength(expected.length);
        expect(plain.out[0]).toMatch(/^sluice-sim: plant \/.+\/simulators\/plants\/default\.yaml$/);
        expect(expected[0]).toBe('sluice-sim: plant /…/simulators/plants/default.yaml');
        expect(plain.out.slice(1)).toEqual(expected.slice(1));
        expect(field.out).toEqual([
          'sluice-sim: plant simulators/plants/field.yaml',
          'field-plc: modbus tcp://127.0.0.1:5021 unit 1 — std-valve (valve @0), lsv-101 (valve limit-switch @100), fcv-201 (actuator float @200)',
          'control: http://127.0.0.1:5081',
        ]);
        // Their control APIs, as curl in each namespace sees them.
        const ids = async (sim: Terminal, port: number): Promise<string[]> => {
          const run = await shell(`nsenter -t ${sim.pid} -n curl -s localhost:${port}/devices`);
          expect(run.code, run.stderr).toBe(0);
          return (JSON.parse(run.stdout) as { devices: { id: string }[] }).devices
            .map((d) => d.id)
            .sort();
        };
        expect(await ids(plain, 5080)).toEqual([
          'dosing-actuator',
          'drain-valve',
          'inlet-valve',
          'outlet-valve',
        ]);
        expect(await ids(field, 5081)).toEqual(['fcv-201', 'lsv-101', 'std-valve']);
        await Promise.all(sims.map((sim) => sim.ctrlC()));
        expect(plain.out.slice(1)).toEqual([...expected.slice(1), 'sluice-sim: stopped']);
        expect(field.out.at(-1)).toBe('sluice-sim: stopped');
      } finally {
        for (const sim of sims) sim.kill();
      }
    },
    120_000,
  );
});

/** The start lines of the README's first block (comments dropped, as the shell drops them). */
function startLines(): string[] {
  const [block] = blocksAfter('# sluice-sim — software PLC simulators', 'sh');
  return block!
    .split('\n')
    .map((l) => l.replace(/\s+#.*$/, '').trim())
    .filter((l) => l !== '');
}

let checkout: Promise<string> | undefined;

/**
 * A checkout of the package as built: the run's compiled tree as its dist/ (or a build made
 * aside: never this tree's dist/), node_modules linked.
 */
function checkoutDir(): Promise<string> {
  checkout ??= (async () => {
    const here = join(dir, 'checkout');
    mkdirSync(here);
    cpSync(join(ROOT, 'package.json'), join(here, 'package.json'));
    symlinkSync(join(ROOT, 'node_modules'), join(here, 'node_modules'));
    const tree = inject('compiledTree');
    if (tree === undefined) await buildInto(join(here, 'dist'));
    else symlinkSync(tree, join(here, 'dist'));
    return here;
  })();
  return checkout;
}

interface Terminal {
  readonly pid: number;
  readonly out: string[];
  readonly err: string[];
  /** Ctrl-C: SIGINT to the process group; resolves once it stopped as the README says. */
  ctrlC(): Promise<void>;
  kill(): void;
}

/**
 * A command typed in a terminal in the checkout: its own process group, (with `netns`) in a
 * network namespace of its own with its loopback up. npm's cache is in the test's folder (npx
 * links the package there) and npm is offline: the bin is the checkout's own, nothing fetched.
 */
function terminal(command: string, netns: boolean): Terminal {
  const env = {
    ...process.env,
    npm_config_cache: join(dir, 'npm-cache'),
    npm_config_offline: 'true',
    npm_config_update_notifier: 'false',
    README_LINE: command,
  };
  const child = netns
    ? spawn('unshare', ['-n', 'sh', '-c', 'ip link set lo up && exec sh -c "$README_LINE"'], {
        cwd: join(dir, 'checkout'),
        env,
        stdio: ['ignore', 'pipe', 'pipe'],
        detached: true,
      })
    : spawn('sh', ['-c', command], {
        cwd: join(dir, 'checkout'),
        env,
        stdio: ['ignore', 'pipe', 'pipe'],
        detached: true,
      });
  const out: string[] = [];
  const err: string[] = [];
  createInterface({ input: child.stdout }).on('line', (l) => out.push(l));
  createInterface({ input: child.stderr }).on('line', (l) => err.push(l));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => {
      resolve({ code, signal });
    }),
  );
  return {
    pid: child.pid!,
    out,
    err,
    ctrlC: async () => {
      process.kill(-child.pid!, 'SIGINT');
      const ended = await exited;
      await until(() => out.includes('sluice-sim: stopped'), { attempts: 100, everyMs: 20 });
      // sluice-sim stopped cleanly (its exit 0); npm, Ctrl-C'd with it, ends by SIGINT, which a
      // shell shows as 130 (simulators/README.md).
      expect(ended.signal === 'SIGINT' || ended.code === 130, JSON.stringify(ended)).toBe(true);
      expect(() => process.kill(-child.pid!, 0), 'no process of the group left').toThrow();
    },
    kill: () => {
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        // the group is gone
      }
    },
  };
}
