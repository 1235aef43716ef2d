import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import type { Plant } from '../../simulators/plant.js';
import { SLUICED, cleanEnv } from '../config/sluiced.js';
import { startModbusPlant, writeTokenSite } from '../helpers/daemon-site.js';
import { tempDir } from '../helpers/fixtures.js';
import { httpsRequest, type HttpsAnswer } from '../helpers/loopback-https.js';
import { until } from '../helpers/mosquitto.js';
import { hasCommand, realComponent } from '../helpers/real.js';

/**
 * sluiced run in a terminal whose terminal hangs up (a closed window, a dropped ssh session):
 * the real process on a pseudo-terminal python3 makes, as its controlling terminal and its
 * stdin, stdout and stderr, the daemon the session leader as a login shell is. Closing the
 * terminal's master side hangs it up as the kernel does it: SIGHUP to the session leader, and
 * every later write to the terminal fails with EIO. The daemon keeps serving (SIGHUP reloads the
 * TLS files), a command after the hang-up is journaled, written once and confirmed (the
 * simulator's write log and the journal), it does not spin a core, and SIGTERM still stops it
 * cleanly. It used to crash at the first write to stderr after the hang-up (an unhandled EIO;
 * NODE_DEBUG=http here writes a line there for each connection, as a Node warning or a library's
 * console output would), and to end killed by a signal at every exit after one (Node 20's
 * terminal restore aborts on a hung-up terminal).
 */

const python = realComponent('python3', hasCommand('python3'), 'apt-get install python3');

// Runs argv on a new pseudo-terminal (pty.fork: a new session, the terminal its controlling
// one and its stdin, stdout and stderr). One JSON line per event: {"pid"}, {"out"} for what the
// terminal shows, {"hungup"} once `hangup` read on stdin closed the master side, {"exit"} with
// the exit code (negative: killed by that signal).
const TERMINAL = `
import json, os, pty, select, sys
pid, master = pty.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
def say(event):
    sys.stdout.write(json.dumps(event) + "\\n")
    sys.stdout.flush()
say({"pid": pid})
while True:
    watched = [sys.stdin] + ([master] if master is not None else [])
    ready = select.select(watched, [], [], 0.1)[0]
    if master is not None and master in ready:
        try:
            data = os.read(master, 65536)
        except OSError:
            data = b""
        if data:
            say({"out": data.decode("utf8", "replace")})
        else:
            os.close(master)
            master = None
    if sys.stdin in ready:
        line = sys.stdin.readline()
        if line == "":
            break
        if line.strip() == "hangup" and master is not None:
            os.close(master)
            master = None
            say({"hungup": True})
    done, status = os.waitpid(pid, os.WNOHANG)
    if done == pid:
        say({"exit": os.waitstatus_to_exitcode(status)})
        break
`;

const TOKEN = 'terminal-token';
/** The unit of /proc/PID/stat's CPU times. */
const TICKS_PER_SECOND = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }));

let dir: string;
let cleanup: () => void;
let plant: Plant;
let cert: string;
let terminal: ChildProcess;
/** The daemon's process id, once the terminal has started it. */
let pid = 0;
let port: number;
let shown = '';
let hungUp = false;
let exitCode: number | undefined;

/** The CPU time the daemon has used so far, in seconds (utime + stime of /proc/PID/stat). */
function cpuSeconds(): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(fields[11]) + Number(fields[12])) / TICKS_PER_SECOND;
}

/** The CPU the daemon uses over the next two seconds, in seconds. */
async function cpuOverTwoSeconds(): Promise<number> {
  const before = cpuSeconds();
  await new Promise((resolve) => setTimeout(resolve, 2_000));
  return cpuSeconds() - before;
}

function command(key: string, action: string): Promise<HttpsAnswer> {
  return httpsRequest(
    { port, ca: cert, token: TOKEN },
    'POST',
    '/v1/commands',
    { 'idempotency-key': key, prefer: 'wait=10' },
    { device: 'v1', action },
  );
}

const alive = (): boolean => exitCode === undefined;

beforeAll(async () => {
  if (!python) return;
  ({ dir, cleanup } = tempDir('sluice-terminal-hangup-'));
  plant = await startModbusPlant({ v1: { profile: 'valve', base: 0, travelMs: 200 } });
  let configPath: string;
  ({ configPath, cert } = await writeTokenSite(dir, plant, { gatewayId: 'tty', token: TOKEN }));
  terminal = spawn(
    'python3',
    ['-u', '-c', TERMINAL, process.execPath, ...SLUICED, '--config', configPath],
    { env: { ...cleanEnv(), NODE_DEBUG: 'http' }, stdio: ['pipe', 'pipe', 'inherit'] },
  );
  createInterface({ input: terminal.stdout! }).on('line', (line) => {
    const event = JSON.parse(line) as { pid?: number; out?: string; hungup?: true; exit?: number };
    if (event.pid !== undefined) pid = event.pid;
    if (event.out !== undefined) shown += event.out;
    if (event.hungup === true) hungUp = true;
    if (event.exit !== undefined) exitCode = event.exit;
  });
  // On a terminal the log is pino-pretty's: the start line's fields below it, colours removed.
  // eslint-disable-next-line no-control-regex
  const plain = (): string => shown.replace(/\x1b\[[0-9;]*m/g, '');
  await until(
    () => (plain().includes('sluiced ready') ? true : alive() ? undefined : false),
    60_000,
    'sluiced ready on the terminal',
  );
  expect(plain()).toContain('sluiced ready');
  const started = plain().slice(plain().indexOf('INFO: sluiced started'));
  port = Number(/"port": (\d+)/.exec(started)?.[1]);
  expect(port).toBeGreaterThan(0);
}, 90_000);

afterAll(async () => {
  if (!python) return;
  if (alive() && pid !== 0) process.kill(pid, 'SIGKILL');
  terminal.stdin?.end();
  await plant.stop();
  cleanup();
}, 30_000);

describe.runIf(python)('sluiced on a terminal that hangs up', () => {
  it('keeps serving: a command after the hang-up is journaled, written once and confirmed; no core spun', async () => {
    terminal.stdin!.write('hangup\n');
    await until(() => (hungUp ? true : undefined), 5_000, 'the terminal hung up');
    // The hang-up's SIGHUP reloads the TLS files; nothing spins after it.
    expect(await cpuOverTwoSeconds()).toBeLessThan(0.5);

    const answer = await command('after-hangup', 'open');
    expect(answer.status).toBe(200);
    const seq = (answer.json() as { seq: number }).seq;
    expect(plant.device('v1').writeLog.filter((w) => w.seq === seq)).toHaveLength(1);
    const journal = SqliteJournal.open({ path: join(dir, 'state', 'journal.db'), readonly: true });
    try {
      expect(journal.findByKey('after-hangup').map((r) => r.state)).toEqual(['confirmed']);
    } finally {
      journal.close();
    }
    expect(await cpuOverTwoSeconds()).toBeLessThan(0.5);
    expect(alive()).toBe(true);
  }, 60_000);

  it('stops cleanly at SIGTERM after the hang-up: exit 0, not killed by a signal', async () => {
    expect(alive()).toBe(true);
    process.kill(pid, 'SIGTERM');
    await until(() => (alive() ? undefined : true), 20_000, 'sluiced to exit');
    expect(exitCode).toBe(0);
  }, 30_000);
});
