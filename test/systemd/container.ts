import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { until } from '../helpers/mosquitto.js';

/** What a script run in the container gave: its exit code and its output. */
export interface InContainer {
  readonly status: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** A systemd booted in a container, for the install tests. */
export interface Container {
  /** The container's root as this machine sees it: files put here are the container's. */
  readonly root: string;
  /**
   * A script run by bash inside the container (all of its namespaces), as root there; a
   * non-zero exit throws unless `check` is false. Asynchronous: the simulated plant runs in the
   * test's own process and must answer the daemon in the container while the script runs.
   */
  run(script: string, options?: { check?: boolean; timeoutMs?: number }): Promise<InContainer>;
  /** Powers it off (killed after 15 s) and unmounts its root. */
  stop(): Promise<void>;
}

/**
 * Boots systemd in a container (systemd-nspawn over an overlay of this machine's root, its
 * writes to a tmpfs mounted under `dir`, sharing this machine's loopback, so the simulators the test
 * starts are there) and returns once the boot has finished. `prepare` puts files into its root
 * before the boot. No service of this machine is started in it (basic.target), and it runs in
 * the test's own scope (no machined or D-Bus here). A failed boot leaves nothing behind: the
 * container is stopped and the root unmounted before the error is thrown. `readOnly` maps
 * container paths to this machine's folders, bound read-only (systemd-nspawn --bind-ro): a
 * node_modules there costs nothing, where a copy of its 19,000 files took 3-5 s of each
 * boot. Needs root, systemd-nspawn and nsenter.
 */
export async function bootContainer(
  dir: string,
  name: string,
  prepare: (root: string) => void | Promise<void>,
  readOnly: Record<string, string> = {},
): Promise<Container> {
  const root = join(dir, 'root');
  // The container's writes go to a tmpfs: an install copies node_modules (some 17,000 files)
  // once or twice, and removing them from a disk took longer than the tests themselves; a
  // tmpfs is let go at once when unmounted.
  const layer = join(dir, 'layer');
  for (const d of [layer, root]) mkdirSync(d);
  const tmpfs = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=4g,mode=0755', 'tmpfs', layer]);
  if (tmpfs.status !== 0)
    throw new Error(`mount of the container's layer: ${String(tmpfs.stderr)}`);
  for (const d of ['upper', 'work']) mkdirSync(join(layer, d));
  const mount = spawnSync('mount', [
    '-t',
    'overlay',
    'overlay',
    '-o',
    `lowerdir=/,upperdir=${join(layer, 'upper')},workdir=${join(layer, 'work')}`,
    root,
  ]);
  if (mount.status !== 0) {
    spawnSync('umount', [layer]);
    throw new Error(`mount of the container's root: ${String(mount.stderr)}`);
  }
  let nspawn: ChildProcess | null = null;
  let leader = 0;

  const run = async (
    script: string,
    options: { check?: boolean; timeoutMs?: number } = {},
  ): Promise<InContainer> => {
    const timeoutMs = options.timeoutMs ?? 90_000;
    const r = await inContainer(leader, script, timeoutMs);
    if (options.check !== false && r.status !== 0) {
      const killed = r.timedOut ? ` (killed after ${timeoutMs} ms)` : '';
      throw new Error(
        `in the container, "${script}" exited ${r.status}${killed}:\n${r.stdout}${r.stderr}`,
      );
    }
    return { status: r.status, stdout: r.stdout, stderr: r.stderr };
  };

  const stop = async (): Promise<void> => {
    const child = nspawn;
    if (child !== null && child.exitCode === null && child.signalCode === null) {
      const exited = new Promise<void>((resolve) => {
        child.once('exit', () => {
          resolve();
        });
      });
      // The bound covers the poweroff command too: it is answered by the container it stops.
      const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
      if (leader > 0) await run('systemctl poweroff', { check: false, timeoutMs: 15_000 });
      await exited;
      clearTimeout(timer);
    }
    spawnSync('umount', ['--lazy', root]);
    spawnSync('umount', ['--lazy', layer]);
  };

  try {
    // A machine id of its own (systemd-nspawn refuses to share the host's journal).
    writeFileSync(join(root, 'etc/machine-id'), `${crypto.randomUUID().replaceAll('-', '')}\n`);
    await prepare(root);
    const logFile = join(dir, 'boot.log');
    nspawn = spawn(
      'systemd-nspawn',
      [
        '--directory',
        root,
        '--machine',
        `${name}-${process.pid}`,
        '--register=no',
        '--keep-unit',
        '--console=pipe',
        ...Object.entries(readOnly).map(([inside, from]) => `--bind-ro=${from}:${inside}`),
        '--boot',
        '--',
        '--unit=basic.target',
      ],
      { stdio: ['ignore', openSync(logFile, 'w'), openSync(logFile, 'a')] },
    );
    const nspawnPid = nspawn.pid!;
    // The container's PID 1, a child of systemd-nspawn once it runs systemd. While it sets the
    // container up, systemd-nspawn has a second, short-lived child (the one that creates the
    // namespaces and exits): taken for the leader, every nsenter into it fails once it is gone.
    leader = await until(
      () => {
        const r = spawnSync('pgrep', ['-P', String(nspawnPid)], { encoding: 'utf8' });
        for (const pid of r.stdout.trim().split('\n').map(Number)) {
          if (!(pid > 0)) continue;
          try {
            if (readFileSync(`/proc/${pid}/comm`, 'utf8').trim() === 'systemd') return pid;
          } catch {
            // gone meanwhile
          }
        }
        return undefined;
      },
      20_000,
      'the container started',
    );
    // A boot takes seconds alone; beside the rest of the suite on two cores it has taken over
    // a minute. The bound is generous: what the tests test is the install, not the boot's speed.
    // `--wait` returns when the boot has finished: one call, not a call every 20 ms (each an
    // nsenter and a systemctl, beside the boot on the same cores). It answers at once, without
    // waiting, while the container's systemd does not take connections yet: asked again then.
    let state = '';
    const bootEnd = Date.now() + 120_000;
    try {
      await until(
        async () => {
          state = (
            await run('systemctl is-system-running --wait', {
              check: false,
              timeoutMs: Math.max(1000, bootEnd - Date.now()),
            })
          ).stdout.trim();
          return state === 'running' || state === 'degraded' ? true : undefined;
        },
        120_000,
        'the container booted',
      );
    } catch (error) {
      const jobs = (await run('systemctl list-jobs --no-pager', { check: false })).stdout.trim();
      throw new Error(
        `${String(error)} (last state "${state}"; jobs: ${jobs}); systemd-nspawn said:\n${readFileSync(logFile, 'utf8')}`,
        { cause: error },
      );
    }
  } catch (error) {
    await stop();
    throw error;
  }
  return { root, run, stop };
}

/**
 * `bash -c script` in every namespace of the process `leader`, without blocking the event
 * loop (spawnSync did: the plant in the test's process then answered no Modbus read while a
 * command ran, and the daemon in the container saw its reads time out). As spawnSync did, it
 * ends once the output is closed, or on the timeout: then nsenter is killed (SIGTERM) and the
 * answer comes as soon as it has exited, without waiting for what it started in the container,
 * which may still hold the output open.
 */
function inContainer(
  leader: number,
  script: string,
  timeoutMs: number,
): Promise<InContainer & { timedOut: boolean }> {
  return new Promise((resolve) => {
    const child = spawn('nsenter', ['-t', String(leader), '-a', 'bash', '-c', script], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      stdout += chunk;
    });
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
      stderr += chunk;
    });
    let timedOut = false;
    let settled = false;
    const settle = (status: number | null): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      child.stdout.destroy();
      child.stderr.destroy();
      resolve({ status, stdout, stderr, timedOut });
    };
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGTERM');
      if (child.exitCode !== null || child.signalCode !== null) settle(child.exitCode);
      else
        child.once('exit', (code) => {
          settle(code);
        });
    }, timeoutMs);
    child.once('close', (code) => {
      settle(code);
    });
    // nsenter did not start (spawnSync gave no status then either).
    child.once('error', (error) => {
      stderr += String(error);
      settle(null);
    });
  });
}
