import type { ChildProcess } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse, stringify } from 'yaml';
import { sha256 } from '../../src/intake/identities.js';
import type { Plant } from '../../simulators/plant.js';
import { fillFilesystem, mountTmpfs, unmount } from '../reliability/support.js';
import { startModbusPlant, writeDaemonSite } from './daemon-site.js';
import { tempDir } from './fixtures.js';
import { httpsRequest, type HttpsAnswer } from './loopback-https.js';
import { until } from './mosquitto.js';
import {
  bindNotifySocket,
  spawnNotifiedSluiced,
  type NotifiedSluiced,
  type NotifySocket,
} from './notify-socket.js';

/**
 * The bed of the tests of sluiced on a journal filesystem filled to some edge
 * (ready-full-disk, readiness-claim-room): sluice-sim with one Modbus valve, the real `sluiced`
 * process with NOTIFY_SOCKET bound by python3, its state folder on a real tmpfs of 8 MB, one
 * identity allowed every device. A first life makes the journal; the disk is then filled to
 * leave a chosen room, and the next life starts on it.
 */
export interface FullDiskSluiced {
  readonly plant: Plant;
  readonly valve: string;
  /** The state folder (the tmpfs): the journal is `journal.db` in it. */
  readonly stateDir: string;
  /** Starts sluiced, its output and datagrams under `name`. */
  start(name: string): Promise<{ socket: NotifySocket; out: string }>;
  /** Stops sluiced (SIGTERM) and closes its socket. */
  stop(): Promise<void>;
  /** What the running (or last) sluiced wrote. */
  output(): string;
  /** A first life: starts, waits for READY=1, stops. */
  firstLife(): Promise<void>;
  /** Fills the state folder's filesystem, leaving `bytes` free. */
  fillLeaving(bytes: number): void;
  /** Frees the space the fill took. */
  free(): void;
  /** An open for the valve under `key`, waited for (`Prefer: wait=10`), to the HTTPS port. */
  post(port: number, key: string): Promise<HttpsAnswer>;
  /** GET `path` with the identity's token. */
  get(port: number, path: string): Promise<HttpsAnswer>;
  /** Stops everything and removes the bed. */
  close(): Promise<void>;
}

/** The STATUS= text of one sd_notify datagram, if it has one. */
export const statusOf = (text: string): string | undefined =>
  /(?:^|\n)STATUS=(.*)$/s.exec(text)?.[1];

export async function fullDiskSluiced(name: string, token: string): Promise<FullDiskSluiced> {
  const valve = 'inlet-valve';
  const { dir, cleanup } = tempDir(`sluice-${name}-`);
  const plant = await startModbusPlant({ [valve]: { profile: 'valve', base: 0, travelMs: 50 } });
  const configPath = await writeDaemonSite(dir, plant, name.replaceAll('-', ''));
  const config = parse(readFileSync(configPath, 'utf8')) as Record<string, unknown>;
  config.identities = { ops: { tokenSha256: sha256(token).toString('hex'), devices: ['*'] } };
  config.admin = { enabled: false };
  writeFileSync(configPath, stringify(config));
  const ca = readFileSync(join(dir, 'cert.pem'), 'utf8');
  const stateDir = join(dir, 'state');
  mkdirSync(stateDir, { mode: 0o700 });
  mountTmpfs(stateDir, '8m');
  const filler = join(stateDir, 'filler');
  let socket: NotifySocket | null = null;
  let sluiced: NotifiedSluiced | null = null;
  let child: ChildProcess | null = null;

  const bed: FullDiskSluiced = {
    plant,
    valve,
    stateDir,
    async start(life) {
      const out = join(dir, `${life}.log`);
      socket = await bindNotifySocket(join(dir, `${life}.sock`), out);
      sluiced = spawnNotifiedSluiced(configPath, socket, {}, [], out);
      child = sluiced.child;
      return { socket, out };
    },
    async stop() {
      const running = child;
      if (running !== null && running.exitCode === null && running.signalCode === null) {
        const exited = new Promise((resolve) => running.once('exit', resolve));
        running.kill('SIGTERM');
        await exited;
      }
      child = null;
      socket?.close();
      socket = null;
    },
    output: () => sluiced?.output() ?? '',
    async firstLife() {
      const first = await bed.start('first');
      await until(
        () => first.socket.datagrams.find((d) => d.text.startsWith('READY=1')),
        45_000,
        `READY=1; output:\n${bed.output()}`,
      );
      await bed.stop();
    },
    fillLeaving(bytes) {
      const slack = join(stateDir, 'slack');
      writeFileSync(slack, Buffer.alloc(bytes, 1));
      fillFilesystem(filler);
      rmSync(slack);
    },
    free() {
      rmSync(filler, { force: true });
    },
    post: (port, key) =>
      httpsRequest(
        { port, ca, token },
        'POST',
        '/v1/commands',
        { 'idempotency-key': key, prefer: 'wait=10' },
        { device: valve, action: 'open', issuedAt: new Date().toISOString(), ttlMs: 60_000 },
      ),
    get: (port, path) => httpsRequest({ port, ca, token }, 'GET', path),
    async close() {
      await bed.stop();
      await plant.stop();
      unmount(stateDir);
      cleanup();
    },
  };
  return bed;
}
