import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { describe, it } from 'vitest';
import type { Plant } from '../../simulators/plant.js';
import { SLUICED, cleanEnv } from '../config/sluiced.js';
import { startModbusPlant, writeTokenSite } from '../helpers/daemon-site.js';
import { tempDir } from '../helpers/fixtures.js';
import { httpsRequest } from '../helpers/loopback-https.js';
import { until } from '../helpers/mosquitto.js';
import { hasCommand, realComponent } from '../helpers/real.js';

/**
 * sluiced stopped (SIGTERM) while it counts the journal's rows for /metrics
 * (sluice_journal_rows): the count's statement walks the tables, 2.4 s on a journal of 1,000,000
 * commands out of the page cache (src/journal/row-counts.ts). It ran on a worker thread, which
 * nothing interrupts inside SQLite's C code and which Node joins before the process exits: the
 * stop waited for the count. It now runs in a process of its own, killed at the stop.
 *
 * The real sluiced process against sluice-sim, a scrape of /metrics starting the count. A count
 * that lasts seconds needs a journal of a million rows out of the page cache, which a test cannot
 * make (the file is in the cache once written): the counting process is held instead, stopped
 * (SIGSTOP) by a watcher as soon as it runs — what the stop meets is the same, a count not over.
 * The watcher, a python3 loop, finds it among the daemon's children by its program (the count's
 * statement on its command line). The proof is the counting process gone (killed, not left
 * behind held), after the daemon's exit was seen; on the worker thread there is no such process.
 */

const python = realComponent('python3', hasCommand('python3'), 'apt-get install python3');

// Prints the pid of the first child of the process given whose command line holds the count's
// statement, once it has stopped it; polls /proc in a loop (a count takes milliseconds here).
const WATCHER = `
import os, signal, sys, time
parent = sys.argv[1]
print('watching', flush=True)
end = time.time() + 10
while time.time() < end:
    try:
        with open('/proc/%s/task/%s/children' % (parent, parent)) as f:
            kids = f.read().split()
    except OSError:
        break
    for kid in kids:
        try:
            with open('/proc/%s/cmdline' % kid, 'rb') as f:
                line = f.read()
        except OSError:
            continue
        if b'SELECT count(*)' in line:
            os.kill(int(kid), signal.SIGSTOP)
            print(kid, flush=True)
            sys.exit(0)
print('none', flush=True)
`;

const TOKEN = 'row-count-token';

/** Whether process `pid` is gone: no /proc entry, or a zombie (ended, not yet reaped). */
function gone(pid: number): boolean {
  if (!existsSync(`/proc/${pid}`)) return true;
  try {
    return readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.startsWith('Z') ?? true;
  } catch {
    return true;
  }
}

describe.runIf(python)('sluiced stopped while it counts the journal’s rows', () => {
  it('kills the counting process: the stop does not wait for the count', async ({
    expect,
    onTestFinished,
  }) => {
    const { dir, cleanup } = tempDir('sluice-stop-row-count-');
    onTestFinished(cleanup);
    const plant: Plant = await startModbusPlant({
      v1: { profile: 'valve', base: 0, travelMs: 200 },
    });
    onTestFinished(() => plant.stop());
    const { configPath, cert } = await writeTokenSite(dir, plant, {
      gatewayId: 'rowcount',
      token: TOKEN,
    });
    const daemon: ChildProcess = spawn(process.execPath, [...SLUICED, '--config', configPath], {
      env: cleanEnv(),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let exited: { code: number | null; signal: string | null } | null = null;
    daemon.once('exit', (code, signal) => {
      exited = { code, signal };
    });
    onTestFinished(() => {
      if (exited === null) daemon.kill('SIGKILL');
    });
    let log = '';
    daemon.stderr?.on('data', (c: Buffer) => (log += c.toString('utf8')));
    let port = 0;
    let ready = false;
    createInterface({ input: daemon.stdout! }).on('line', (line) => {
      log += `${line}\n`;
      const entry = JSON.parse(line) as { msg?: string; port?: number; https?: { port?: number } };
      if (entry.msg === 'sluiced ready') ready = true;
      const p = entry.https?.port ?? (entry.msg === 'sluiced started' ? entry.port : undefined);
      if (typeof p === 'number' && port === 0) port = p;
    });
    await until(
      () => (ready ? true : exited === null ? undefined : false),
      60_000,
      'sluiced ready',
    );
    expect(ready, log).toBe(true);
    expect(port, log).toBeGreaterThan(0);

    const pid = daemon.pid;
    if (pid === undefined) throw new Error('sluiced has no process id');
    const watcher = spawn('python3', ['-u', '-c', WATCHER, String(pid)], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    onTestFinished(() => {
      watcher.kill();
    });
    const lines = createInterface({ input: watcher.stdout })[Symbol.asyncIterator]();
    const line = async (): Promise<string> => {
      const next = await lines.next();
      return next.done === true ? 'ended' : next.value;
    };
    expect(await line()).toBe('watching');
    const found = line();
    // The first scrape starts the count (and waits for it up to 5 s, then answers without it).
    const scrape = httpsRequest({ port, ca: cert, token: TOKEN }, 'GET', '/metrics').catch(
      () => null,
    );
    const held = await found;
    expect(held, 'a counting process among the daemon’s children').toMatch(/^\d+$/);
    const counter = Number(held);
    onTestFinished(() => {
      if (!gone(counter)) process.kill(counter, 'SIGKILL');
    });
    expect(gone(counter)).toBe(false);

    // The stop, with the count held where it is.
    daemon.kill('SIGTERM');
    await until(() => (exited === null ? undefined : true), 30_000, 'sluiced to exit');
    expect(exited, log).toEqual({ code: 0, signal: null });
    // Killed by the daemon's stop, not left behind held (it cannot end by itself, stopped).
    await until(() => (gone(counter) ? true : undefined), 10_000, 'the counting process gone');
    await scrape;
  }, 90_000);
});
