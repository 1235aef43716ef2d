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
   * non-zero exit throws unless `check` is false.
   */
  run(script: string, options?: { check?: boolean; timeoutMs?: number }): InContainer;
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

  const run = (script: string, options: { check?: boolean; timeoutMs?: number } = {}) => {
    const r = spawnSync('nsenter', ['-t', String(leader), '-a', 'bash', '-c', script], {
      encoding: 'utf8',
      timeout: options.timeoutMs ?? 90_000,
    });
    if (options.check !== false && r.status !== 0) {
      throw new Error(`in the container, "${script}" exited ${r.status}:\n${r.stdout}${r.stderr}`);
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
      if (leader > 0) run('systemctl poweroff', { check: false });
      const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
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
        () => {
          state = run('systemctl is-system-running --wait', {
            check: false,
            timeoutMs: Math.max(1000, bootEnd - Date.now()),
          }).stdout.trim();
          return state === 'running' || state === 'degraded' ? true : undefined;
        },
        120_000,
        'the container booted',
      );
    } catch (error) {
      const jobs = run('systemctl list-jobs --no-pager', { check: false }).stdout.trim();
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
