import { execFile } from 'node:child_process';
import { connect } from 'node:net';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse } from 'yaml';
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { DeviceSnapshot } from '../../simulators/plc.js';
import type { WriteLogEntry } from '../../simulators/write-log.js';
import { ROOT, tempDir } from '../helpers/fixtures.js';
import { hasCommand, realComponent } from '../helpers/real.js';
import { SimProcess, type PlantPlcs } from '../helpers/sim-process.js';
import { modbusEndpoint, rawModbus, registersToTime, until } from './helpers.js';
import type { ModbusEndpoint, RawModbus } from './helpers.js';
import {
  connectOpcua,
  nodeId,
  opcuaEndpoint,
  prepareClientCertificate,
  releaseClientPki,
  uaCommand,
} from './opcua-client.js';

/**
 * The curl block of simulators/README.md's "Control API" section, each line run verbatim by a
 * shell against sluice-sim in a process of its own (the README's example plant), and each
 * line's effect checked on the plant's ground truth: its write log and device view, and the
 * wire itself (Modbus and OPC UA requests of a real client, a TCP connect).
 *
 * The one substitution: `localhost:5080` becomes `localhost:<the control API's port>`. The plant
 * file's `control.port` makes the port configurable; the test asks for an ephemeral one because
 * 5080 is the default plant's fixed port, which test/daemon/demo.test.ts binds (files run in
 * parallel) and an operator's own sluice-sim may hold. The PLC ports are ephemeral likewise
 * (the block does not name them).
 *
 * Every line must have its check below: a line added to the README without one fails the test,
 * as does a check whose line is gone.
 */

const real = realComponent('curl', hasCommand('curl'), 'apt-get install curl');

const README = join(ROOT, 'simulators', 'README.md');

/** The fenced block of a section whose lines start with `curl `. */
function curlBlock(text: string, heading: string): string[] {
  const start = text.indexOf(`\n${heading}\n`);
  expect(start, `simulators/README.md has a section ${heading}`).toBeGreaterThan(-1);
  const section = text.slice(start + heading.length + 2).split(/\n## /)[0]!;
  const blocks = [...section.matchAll(/^```sh\n([\s\S]*?)^```$/gm)].map((m) => m[1]!);
  const found = blocks.filter((b) => b.split('\n').some((l) => l.startsWith('curl ')));
  expect(found, `one curl block in ${heading}`).toHaveLength(1);
  return found[0]!.split('\n').filter((l) => l.trim() !== '');
}

/** The example plant of "Plant file": its fenced YAML block, parsed. */
function examplePlant(text: string): { plcs: PlantPlcs } {
  const section = text.slice(text.indexOf('\n## Plant file\n')).split(/\n## /)[1]!;
  const yaml = /^```yaml\n([\s\S]*?)^```$/m.exec(section)?.[1];
  expect(yaml, 'the README shows an example plant').toBeDefined();
  return parse(yaml!) as { plcs: PlantPlcs };
}

interface Context {
  /** Runs the README line (once), returns curl's stdout parsed as JSON. */
  readonly run: () => Promise<Record<string, unknown>>;
}

/** A check, and whether it needs the write-free plant (no background check still running). */
interface Check {
  readonly line: RegExp;
  readonly quiet?: boolean;
  readonly check: (ctx: Context) => Promise<void>;
}

let sim: SimProcess;
let stopSim: () => Promise<void> = () => Promise.resolve();
let mb: ModbusEndpoint;
let uaUrl: string;
let controlPort: string;
let cleanup: () => void;
let inletBase: number;
const links: RawModbus[] = [];
/** Checks that go on while later lines run (a hold that clears itself), awaited by `quiet` ones. */
const background: Promise<void>[] = [];
let nextSeq = 100;

beforeAll(async () => {
  if (!real) return;
  const dir = tempDir('sluice-sim-readme-curl-');
  cleanup = dir.cleanup;
  const plant = examplePlant(readFileSync(README, 'utf8'));
  inletBase = plant.plcs['modbus-plc']?.devices['inlet-valve']?.base ?? -1;
  expect(inletBase, 'the example plant has inlet-valve on modbus-plc').toBeGreaterThanOrEqual(0);
  // The OPC UA client's certificate is made while the plant starts: seconds of key generation.
  const [started, certificate] = await Promise.allSettled([
    SimProcess.start(dir.dir, plant.plcs),
    prepareClientCertificate(),
  ]);
  // Stopped at the end whatever else failed.
  if (started.status === 'fulfilled') stopSim = () => started.value.stop();
  if (started.status === 'rejected') throw started.reason;
  if (certificate.status === 'rejected') throw certificate.reason;
  sim = started.value;
  mb = modbusEndpoint(sim.plcs.find((p) => p.name === 'modbus-plc')!.endpoint);
  uaUrl = opcuaEndpoint(sim.plcs.find((p) => p.name === 'opcua-plc')!.endpoint).endpointUrl;
  controlPort = new URL(sim.controlUrl).port;
}, 60_000);

afterAll(async () => {
  for (const link of links) link.socket.destroy();
  await Promise.allSettled(background);
  if (!real) return;
  await stopSim();
  await releaseClientPki();
  cleanup();
});

/** A Modbus connection of the test's, closed at the end whatever happens. */
async function link(): Promise<RawModbus> {
  const opened = await rawModbus(mb);
  links.push(opened);
  return opened;
}

function shell(line: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile('sh', ['-c', line], { timeout: 20_000 }, (error, stdout, stderr) => {
      const code = error === null ? 0 : typeof error.code === 'number' ? error.code : -1;
      resolve({ code, stdout, stderr });
    });
  });
}

async function view(device: string): Promise<DeviceSnapshot & { log: unknown[] }> {
  return (await sim.call('GET', `/devices/${device}`)) as DeviceSnapshot & { log: unknown[] };
}

async function writes(device: string): Promise<WriteLogEntry[]> {
  return ((await sim.call('GET', `/devices/${device}/writes`)) as { writes: WriteLogEntry[] })
    .writes;
}

async function plcView(plc: string): Promise<Record<string, unknown>> {
  return (await sim.call('GET', `/plcs/${plc}`)) as Record<string, unknown>;
}

/** The write of `seq` on inlet-valve once a scan has taken it (or discarded it). */
async function settled(seq: number, bound = 200): Promise<WriteLogEntry> {
  let entry: WriteLogEntry | undefined;
  await until(
    async () => {
      entry = (await writes('inlet-valve')).find((w) => w.seq === seq && w.outcome !== null);
      return entry !== undefined;
    },
    { attempts: bound, everyMs: 25 },
  );
  return entry!;
}

/** A stop command (a no-op on the closed valve: the valve stays where it is) with a new seq. */
function stopBlock(seq = nextSeq++): [number, number, number] {
  return [3, 0, seq];
}

/** The live controller clock of modbus-plc, read over Modbus (registers 900..903). */
async function plcClock(): Promise<{ clock: number; before: number; after: number }> {
  const conn = await link();
  const before = Date.now();
  const reply = await conn.read(900, 4);
  const after = Date.now();
  conn.socket.destroy();
  return { clock: registersToTime(reply.registers), before, after };
}

/** Connects to the Modbus port; the socket error's code, or null when it connected. */
function tcpConnect(): Promise<string | null> {
  return new Promise((resolve) => {
    const socket = connect({ host: mb.host, port: mb.port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(null);
    });
    socket.once('error', (error: NodeJS.ErrnoException) => {
      resolve(error.code ?? error.message);
    });
  });
}

const STATE_CODES = ['CLOSED', 'OPENING', 'OPEN', 'CLOSING', 'STOPPED', 'FAULT', 'LOCAL'];

const checks: Check[] = [
  {
    // The device view: what the PLC shows on the wire.
    line: /^curl -s localhost:5080\/devices\/inlet-valve$/,
    check: async ({ run }) => {
      const out = await run();
      const [stateCode] = (await (await link()).read(inletBase, 1)).registers;
      expect(out).toMatchObject({ id: 'inlet-valve', plc: 'modbus-plc', layout: 'standard' });
      expect(out.state).toBe(STATE_CODES[stateCode!]);
      expect(Array.isArray(out.log)).toBe(true);
    },
  },
  {
    // The next write is applied and counted, never answered; the one after it is answered.
    line: /faults\/drop -d '\{"on":"write","count":1\}'$/,
    check: async ({ run }) => {
      await run();
      const conn = await link();
      const seq = nextSeq++;
      let answered = false;
      void conn.write(inletBase + 10, stopBlock(seq)).then(
        () => (answered = true),
        () => undefined,
      );
      // Served after the write on the same connection: had the write been answered, its
      // reply would have come first.
      await conn.read(inletBase, 1);
      expect(answered, 'the dropped write was answered').toBe(false);
      expect((await settled(seq)).outcome).toBe('noop');
      const next = nextSeq++;
      await conn.write(inletBase + 10, stopBlock(next));
      expect((await settled(next)).outcome).toBe('noop');
      expect((await view('inlet-valve')).faults).toEqual([]);
    },
  },
  {
    // Two connections destroyed after their write was applied (counted, unanswered); the
    // third write is answered.
    line: /faults\/reset -d '\{"when":"after","count":2\}'$/,
    check: async ({ run }) => {
      await run();
      for (let i = 0; i < 2; i++) {
        const conn = await link();
        const seq = nextSeq++;
        await expect(conn.write(inletBase + 10, stopBlock(seq))).rejects.toThrow(
          'connection closed',
        );
        await conn.closed;
        expect((await settled(seq)).outcome).toBe('noop');
      }
      const seq = nextSeq++;
      await (await link()).write(inletBase + 10, stopBlock(seq));
      expect((await settled(seq)).outcome).toBe('noop');
      expect((await view('inlet-valve')).faults).toEqual([]);
    },
  },
  {
    // An OPC UA Read of outlet-valve answers BadDeviceFailure; a Write (on: read) goes through.
    line: /outlet-valve\/faults\/bad-status -d '\{"status":"BadDeviceFailure","on":"read"\}'$/,
    check: async ({ run }) => {
      await run();
      const ua = await connectOpcua(uaUrl);
      try {
        const read = await ua.session.read({ nodeId: nodeId('outlet-valve', 'State') });
        expect(read.statusCode.name).toBe('BadDeviceFailure');
        const seq = nextSeq++;
        const results = await uaCommand(ua.session, 'outlet-valve', 3, 0, seq);
        expect(results.map((r) => r.name)).toEqual(['Good', 'Good', 'Good']);
        expect((await writes('outlet-valve')).map((w) => w.seq)).toContain(seq);
      } finally {
        await ua.close();
      }
      await sim.call('DELETE', '/devices/outlet-valve/faults');
    },
  },
  {
    // The controller clock, read over Modbus: 2.5 s ahead; the drift as set.
    line: /plcs\/modbus-plc\/faults\/clock -d '\{"offsetMs":2500,"driftPpm":100\}'$/,
    check: async ({ run }) => {
      await run();
      const { clock, before, after } = await plcClock();
      expect(clock).toBeGreaterThanOrEqual(before + 2500 - 1);
      expect(clock).toBeLessThanOrEqual(after + 2500 + 1);
      expect((await plcView('modbus-plc')).clock).toEqual({ offsetMs: 2500, driftPpm: 100 });
    },
  },
  {
    // Back to the plant file's clock (offset 0).
    line: /^curl -s -X DELETE localhost:5080\/plcs\/modbus-plc\/faults\/clock$/,
    check: async ({ run }) => {
      await run();
      const { clock, before, after } = await plcClock();
      expect(clock).toBeGreaterThanOrEqual(before - 1);
      expect(clock).toBeLessThanOrEqual(after + 1);
    },
  },
  {
    // The switch read at the next scan: LOCAL on the wire, a remote command ignored.
    line: /devices\/inlet-valve\/local -d '\{"local":true\}'$/,
    check: async ({ run }) => {
      await run();
      const conn = await link();
      await until(async () => (await conn.read(inletBase, 1)).registers[0] === 6, {
        attempts: 200,
        everyMs: 10,
      });
      const seq = nextSeq++;
      await conn.write(inletBase + 10, stopBlock(seq));
      expect((await settled(seq)).outcome).toBe('ignored-local');
      await sim.device('inlet-valve').setLocal(false);
      await until(async () => (await conn.read(inletBase, 1)).registers[0] === 0, {
        attempts: 200,
        everyMs: 10,
      });
    },
  },
  {
    // Counters, command log and write log zero again.
    line: /devices\/inlet-valve\/counters\/reset$/,
    check: async ({ run }) => {
      expect((await writes('inlet-valve')).length).toBeGreaterThan(0);
      await run();
      const after = await view('inlet-valve');
      expect(await writes('inlet-valve')).toEqual([]);
      expect(after.log).toEqual([]);
      expect(Object.values(after.counters).every((n) => n === 0)).toBe(true);
    },
  },
  {
    // A write is counted and waits through scans; the hold clears itself 5 s after it was set
    // and the next scan takes the write. The 5 s run on while the next lines are checked.
    line: /devices\/inlet-valve\/faults\/hold -d '\{"ms":5000\}'$/,
    check: async ({ run }) => {
      const before = (await plcClock()).clock;
      await run();
      const after = (await plcClock()).clock;
      const seq = nextSeq++;
      await (await link()).write(inletBase + 10, stopBlock(seq));
      const received = (await writes('inlet-valve')).find((w) => w.seq === seq)!;
      expect(received.outcome).toBeNull();
      let snapshot = await view('inlet-valve');
      await until(
        async () => {
          snapshot = await view('inlet-valve');
          return snapshot.published.scanTime > received.receivedAt;
        },
        { attempts: 200, everyMs: 10 },
      );
      expect(snapshot.pendingWrites, 'a scan after the write left it waiting').toBe(1);
      background.push(
        (async () => {
          const taken = await settled(seq, 400);
          expect(taken.outcome).toBe('noop');
          expect(taken.settledAt).toBeGreaterThanOrEqual(before + 5000);
          expect(taken.settledAt).toBeLessThanOrEqual(after + 5000 + 2000);
        })(),
      );
    },
  },
  {
    // A write held on the link 3 s before it reaches the controller, answered after that.
    line: /faults\/latency -d '\{"ms":3000,"when":"before","on":"write"\}'$/,
    check: async ({ run }) => {
      await run();
      const conn = await link();
      const seq = nextSeq++;
      const sentAt = performance.now();
      const clockAtSend = registersToTime((await conn.read(900, 4)).registers);
      const reply = await conn.write(inletBase + 10, stopBlock(seq));
      expect(reply.at - sentAt).toBeGreaterThanOrEqual(3000);
      const entry = (await writes('inlet-valve')).find((w) => w.seq === seq)!;
      expect(entry.heldOnLinkMs).toBeGreaterThanOrEqual(3000);
      expect(entry.receivedAt).toBeGreaterThanOrEqual(clockAtSend + 3000);
      await sim.call('DELETE', '/devices/inlet-valve/faults/latency');
    },
  },
  {
    // Connections reset, connects reset while off, back after 2 s with the clock 15 s slow.
    line: /plcs\/modbus-plc\/power-cycle -d '\{"offMs":2000,"clockOffsetMs":-15000\}'$/,
    quiet: true,
    check: async ({ run }) => {
      const idle = await link();
      const started = performance.now();
      await run();
      await idle.closed;
      // Accepted and reset: before the test's side saw its connect complete, or after.
      const whileOff = await link().then(
        (conn) =>
          conn.read(inletBase, 1).then(
            () => 'answered',
            (error: unknown) => (error as Error).message,
          ),
        (error: unknown) => (error as NodeJS.ErrnoException).code,
      );
      expect(['connection closed', 'ECONNRESET']).toContain(whileOff);
      expect((await plcView('modbus-plc')).powered, 'that connect was while off').toBe(false);
      await until(
        async () => {
          try {
            const conn = await link();
            await conn.read(inletBase, 1);
            return true;
          } catch {
            return false;
          }
        },
        { attempts: 200, everyMs: 25 },
      );
      expect(performance.now() - started).toBeGreaterThanOrEqual(2000 - 5);
      const { clock, before, after } = await plcClock();
      expect(clock).toBeGreaterThanOrEqual(before - 15_000 - 1);
      expect(clock).toBeLessThanOrEqual(after - 15_000 + 1);
      expect(await plcView('modbus-plc')).toMatchObject({ powered: true, powerCycles: 1 });
      await sim.call('DELETE', '/plcs/modbus-plc/faults/clock');
    },
  },
  {
    // Connections reset, a connect refused (nothing listens) for 500 ms, then accepted.
    line: /plcs\/modbus-plc\/refuse-connections -d '\{"ms":500\}'$/,
    check: async ({ run }) => {
      const idle = await link();
      const started = performance.now();
      await run();
      await idle.closed;
      expect(await tcpConnect()).toBe('ECONNREFUSED');
      await until(async () => (await tcpConnect()) === null, { attempts: 200, everyMs: 10 });
      expect(performance.now() - started).toBeGreaterThanOrEqual(500 - 5);
      expect((await plcView('modbus-plc')).refusingConnections).toBe(false);
    },
  },
  {
    // Every write that carried seq 42: taken once, then ignored as the same seq.
    line: /^curl -s 'localhost:5080\/devices\/inlet-valve\/writes\?seq=42'$/,
    quiet: true,
    check: async ({ run }) => {
      const conn = await link();
      await conn.write(inletBase + 10, stopBlock(42));
      await settled(42);
      await conn.write(inletBase + 10, stopBlock(42));
      await until(async () => (await writes('inlet-valve')).every((w) => w.outcome !== null));
      const out = await run();
      const all = (await writes('inlet-valve')).filter((w) => w.seq === 42);
      expect(all.map((w) => w.outcome)).toEqual(['noop', 'ignored-same-seq']);
      expect(out).toMatchObject({ device: 'inlet-valve', seq: 42, count: 2, writes: all });
    },
  },
];

it.runIf(real)(
  "simulators/README.md's control API curl lines, run verbatim, each do what the README says",
  async () => {
    const lines = curlBlock(readFileSync(README, 'utf8'), '## Control API');
    const unused = new Set(checks);
    for (const line of lines) {
      expect(line, 'every line of the block is a curl command').toMatch(/^curl /);
      const matching = checks.filter((c) => c.line.test(line));
      expect(matching, `one check for the README line: ${line}`).toHaveLength(1);
      const { check, quiet } = matching[0]!;
      unused.delete(matching[0]!);
      if (quiet === true) await Promise.all(background.splice(0));
      expect(line.split('localhost:5080').length, `${line} names localhost:5080 once`).toBe(2);
      const command = line.replace('localhost:5080', `localhost:${controlPort}`);
      let ran = 0;
      await check({
        run: async () => {
          ran += 1;
          const result = await shell(command);
          expect(result.code, `${line}\n${result.stderr}`).toBe(0);
          const out = JSON.parse(result.stdout) as Record<string, unknown>;
          expect(out.code, `${line}: ${result.stdout}`).toBeUndefined();
          return out;
        },
      });
      expect(ran, `the check of ${line} ran it once`).toBe(1);
    }
    await Promise.all(background.splice(0));
    expect(
      [...unused].map((c) => c.line.source),
      'checks whose README line is gone',
    ).toEqual([]);
  },
  60_000,
);

/**
 * The README's list of error codes, `(CODE, CODE (why) status; …).`, as code → status: each
 * group's status is its last number.
 */
function documentedErrors(text: string): Map<string, number> {
  const list = /errors are `\{ "code": "\.\.\.", "message": "\.\.\." \}` \((.*?)\)\. /.exec(
    text.replace(/\s+/g, ' '),
  )?.[1];
  expect(list, 'simulators/README.md lists the control API error codes').toBeDefined();
  const codes = new Map<string, number>();
  for (const group of list!.split(';')) {
    const status = Number(/(\d{3})\s*$/.exec(group)?.[1]);
    for (const m of group.matchAll(/`([A-Z_]+)`/g)) codes.set(m[1]!, status);
  }
  return codes;
}

it.runIf(real)(
  "the control API's errors are those simulators/README.md lists, with their status",
  async () => {
    const documented = documentedErrors(readFileSync(README, 'utf8'));
    const base = `localhost:${controlPort}`;
    // One request that meets each error, as curl sends it; the answer's status and code.
    const requests = [
      `curl -s -w '%{http_code}' ${base}/devices/no-such-valve`,
      `curl -s -w '%{http_code}' ${base}/plcs/no-such-plc`,
      `curl -s -w '%{http_code}' -X PUT ${base}/devices/inlet-valve/faults/no-such-fault -d '{}'`,
      `curl -s -w '%{http_code}' -X PUT ${base}/devices/inlet-valve/faults/latency -d '{"ms":-1}'`,
      `curl -s -w '%{http_code}' -X POST ${base}/devices/inlet-valve/local -d '{}'`,
      `curl -s -w '%{http_code}' -X POST ${base}/devices/inlet-valve/local -d '{'`,
      `curl -s -w '%{http_code}' -X PUT ${base}/devices/inlet-valve/faults/bad-status -d '{}'`,
      `curl -s -w '%{http_code}' -X DELETE ${base}/devices`,
      `curl -s -w '%{http_code}' -H 'Host: plant.example' ${base}/devices`,
      `curl -s -w '%{http_code}' ${base}/no-such-route`,
      `head -c 70000 /dev/zero | tr '\\0' ' ' | curl -s -w '%{http_code}' -X POST ${base}/devices/inlet-valve/local --data-binary @-`,
    ];
    const answered = new Map<string, number>();
    for (const request of requests) {
      const result = await shell(request);
      expect(result.code, `${request}\n${result.stderr}`).toBe(0);
      const status = Number(result.stdout.slice(-3));
      const { code } = JSON.parse(result.stdout.slice(0, -3)) as { code: string };
      answered.set(code, status);
    }
    expect(Object.fromEntries(answered)).toEqual(Object.fromEntries(documented));
  },
);
