import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from './fixtures.js';
import { hasCommand, isRoot, realComponent } from './real.js';

/**
 * A real PTP network for tests: two network namespaces joined by a veth pair, a ptp4l
 * grandmaster in one and a ptp4l slave in the other, layer-2 transport (-2), software
 * timestamping (-S), each with its own config file and UDS socket in a temporary directory.
 *
 * This machine's clock is never adjusted: both run with `--free_running 1`, with which ptp4l's
 * clock_create() sets its clock to CLOCK_INVALID, so it makes no clock_adjtime() or
 * clock_settime() call at all. (Without it even a grandmaster, which has no master to follow,
 * writes the system clock's frequency and leap flags back at start-up.) Both use software
 * timestamps of the one system clock, so the slave's offset is two reads of one clock: a few
 * microseconds. A free-running ptp4l 3.1.1 never reports a locked servo: its port stays
 * UNCALIBRATED while it follows the grandmaster, never SLAVE.
 *
 * Everything is undone by `close()` in reverse order of creation (processes, namespaces, the
 * directory), also when the set-up fails halfway.
 */

export function ptpLabAvailable(): boolean {
  return (
    realComponent('root (for network namespaces)', isRoot, 'run the tests as root') &&
    realComponent(
      'linuxptp (ptp4l, pmc)',
      hasCommand('ptp4l') && hasCommand('pmc'),
      'apt-get install linuxptp',
    ) &&
    realComponent('ip netns (iproute2)', canCreateNetns(), 'apt-get install iproute2, as root')
  );
}

function canCreateNetns(): boolean {
  if (!isRoot || !hasCommand('ip')) return false;
  const probe = `sluice-probe-${randomBytes(3).toString('hex')}`;
  try {
    execFileSync('ip', ['netns', 'add', probe], { stdio: 'ignore' });
    execFileSync('ip', ['netns', 'del', probe], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

export interface PtpLabOptions {
  readonly domain?: number;
  /** log2 seconds (default -3: 125 ms). */
  readonly logSyncInterval?: number;
  /** log2 seconds (default -2: 250 ms). */
  readonly logAnnounceInterval?: number;
  /** Announce intervals without an Announce before the master is given up (default 2). */
  readonly announceReceiptTimeout?: number;
  /** The slave is slave-only (default true): it never becomes a master itself. */
  readonly slaveOnly?: boolean;
}

export interface PtpNode {
  /** The full argv spawned (`ip netns exec <ns> ptp4l ...`). */
  readonly argv: readonly string[];
  readonly socket: string;
  readonly namespace: string;
  readonly iface: string;
  pid(): number | null;
  running(): boolean;
  log(): string;
  start(): Promise<void>;
  /** SIGKILL, as a crash: the socket file stays behind (ptp4l replaces it at its next start). */
  kill(): Promise<void>;
}

export interface PtpLab {
  readonly dir: string;
  readonly domain: number;
  readonly grandmaster: PtpNode;
  readonly slave: PtpNode;
  /** Network namespaces created for this lab (gone after close()). */
  readonly namespaces: readonly string[];
  logs(): string;
  close(): Promise<void>;
}

const STOP_GRACE_MS = 2000;
const START_TIMEOUT_MS = 5000;

function ip(...args: string[]): void {
  execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

function waitExit(child: ChildProcess, ms: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      child.off('exit', onExit);
      resolve(false);
    }, ms);
    const onExit = (): void => {
      clearTimeout(timer);
      resolve(true);
    };
    child.once('exit', onExit);
  });
}

function config(lines: Record<string, string | number>): string {
  return ['[global]', ...Object.entries(lines).map(([k, v]) => `${k} ${v}`), ''].join('\n');
}

export async function startPtpLab(options: PtpLabOptions = {}): Promise<PtpLab> {
  const undo: (() => Promise<void> | void)[] = [];
  // Should the test process exit without close() (process.exit(), a run cut short), the same
  // clean-up, synchronously, on the way out. (A SIGKILLed process runs nothing, of course.)
  const atExit: (() => void)[] = [];
  const onExit = (): void => {
    for (const step of atExit.splice(0).reverse()) {
      try {
        step();
      } catch {
        // Best effort on the way out.
      }
    }
  };
  process.once('exit', onExit);
  const close = async (): Promise<void> => {
    process.off('exit', onExit);
    atExit.length = 0;
    const errors: unknown[] = [];
    for (const step of undo.splice(0).reverse()) {
      try {
        await step();
      } catch (error) {
        errors.push(error);
      }
    }
    if (errors.length > 0) throw new AggregateError(errors, 'PTP lab clean-up failed');
  };

  try {
    const { dir, cleanup } = tempDir('sluice-ptp-');
    undo.push(cleanup);
    atExit.push(cleanup);
    const tag = randomBytes(3).toString('hex');
    const domain = options.domain ?? 0;
    const timing = {
      domainNumber: domain,
      logSyncInterval: options.logSyncInterval ?? -3,
      logAnnounceInterval: options.logAnnounceInterval ?? -2,
      announceReceiptTimeout: options.announceReceiptTimeout ?? 2,
      logMinDelayReqInterval: options.logSyncInterval ?? -3,
    };

    const gmNs = `sluice-ptp-gm-${tag}`;
    const slNs = `sluice-ptp-sl-${tag}`;
    // veth names: at most 15 bytes.
    const gmIf = `sptp${tag}g`;
    const slIf = `sptp${tag}s`;
    for (const ns of [gmNs, slNs]) {
      ip('netns', 'add', ns);
      const del = (): void => {
        ip('netns', 'del', ns);
      };
      undo.push(del);
      atExit.push(del);
    }
    ip('link', 'add', gmIf, 'type', 'veth', 'peer', 'name', slIf);
    // Moved into the namespaces below: deleting a namespace deletes its end, and the pair.
    ip('link', 'set', gmIf, 'netns', gmNs);
    ip('link', 'set', slIf, 'netns', slNs);
    ip('-n', gmNs, 'link', 'set', gmIf, 'up');
    ip('-n', slNs, 'link', 'set', slIf, 'up');

    const gmConf = join(dir, 'grandmaster.cfg');
    const gmSocket = join(dir, 'grandmaster.sock');
    writeFileSync(
      gmConf,
      config({ ...timing, priority1: 10, free_running: 1, uds_address: gmSocket }),
    );
    const slConf = join(dir, 'slave.cfg');
    const slSocket = join(dir, 'slave.sock');
    writeFileSync(
      slConf,
      config({
        ...timing,
        slaveOnly: options.slaveOnly === false ? 0 : 1,
        free_running: 1,
        uds_address: slSocket,
      }),
    );

    const node = (name: string, namespace: string, iface: string, argv: string[]): PtpNode => {
      let child: ChildProcess | null = null;
      let output = '';
      const kill = async (signal: NodeJS.Signals): Promise<void> => {
        const proc = child;
        if (proc === null) return;
        if (proc.exitCode === null && proc.signalCode === null) {
          proc.kill(signal);
          if (!(await waitExit(proc, STOP_GRACE_MS))) {
            proc.kill('SIGKILL');
            await waitExit(proc, STOP_GRACE_MS);
          }
        }
        child = null;
      };
      const self: PtpNode = {
        argv,
        socket: argv[argv.indexOf('--uds_address') + 1] ?? '',
        namespace,
        iface,
        pid: () => child?.pid ?? null,
        running: () => child !== null && child.exitCode === null && child.signalCode === null,
        log: () => output,
        start: async () => {
          if (self.running()) return;
          const [file, ...args] = argv;
          const from = output.length;
          const proc = spawn(file ?? 'ip', args, { stdio: ['ignore', 'pipe', 'pipe'] });
          child = proc;
          const collect = (chunk: Buffer): void => {
            output += chunk.toString();
          };
          proc.stdout.on('data', collect);
          proc.stderr.on('data', collect);
          const end = Date.now() + START_TIMEOUT_MS;
          // ptp4l binds its socket once its ports are open: ready to be asked.
          while (!output.slice(from).includes('port 0: INITIALIZING to LISTENING')) {
            if (!self.running()) throw new Error(`${name} ptp4l exited at start:\n${output}`);
            if (Date.now() > end) throw new Error(`${name} ptp4l did not start:\n${output}`);
            await new Promise((r) => setTimeout(r, 20));
          }
          if (!existsSync(self.socket)) throw new Error(`${name}: no socket ${self.socket}`);
        },
        kill: () => kill('SIGKILL'),
      };
      undo.push(() => kill('SIGTERM'));
      atExit.push(() => {
        child?.kill('SIGKILL');
      });
      return self;
    };

    // free_running is also in the config files; on the command line so that `ps` shows it and
    // the test can check it on the running process.
    const common = ['-2', '-S', '--free_running', '1', '-m', '-q'];
    const grandmaster = node('grandmaster', gmNs, gmIf, [
      ...['ip', 'netns', 'exec', gmNs, 'ptp4l', '-f', gmConf, '-i', gmIf],
      ...common,
      ...['--uds_address', gmSocket],
    ]);
    const slave = node('slave', slNs, slIf, [
      ...['ip', 'netns', 'exec', slNs, 'ptp4l', '-f', slConf, '-i', slIf],
      ...common,
      ...['--uds_address', slSocket],
    ]);
    await grandmaster.start();
    await slave.start();

    return {
      dir,
      domain,
      grandmaster,
      slave,
      namespaces: [gmNs, slNs],
      logs: () =>
        `--- grandmaster\n${grandmaster.log()}\n--- slave\n${slave.log()}\n--- config\n${readFileSync(slConf, 'utf8')}`,
      close,
    };
  } catch (error) {
    await close().catch(() => undefined);
    throw error;
  }
}

/** Network namespaces that exist now (`ip netns list`). */
export function networkNamespaces(): string[] {
  return execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })
    .split('\n')
    .map((line) => line.split(' ')[0] ?? '')
    .filter((name) => name !== '');
}

/** The argv of a running process, from /proc (the ptp4l behind `ip netns exec`, which execs). */
export function processArgv(pid: number): string[] {
  return readFileSync(`/proc/${pid}/cmdline`, 'utf8')
    .split('\0')
    .filter((a) => a !== '');
}
