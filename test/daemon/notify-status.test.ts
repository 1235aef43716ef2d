import type { ChildProcess } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import BetterSqlite3 from 'better-sqlite3';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sha256 } from '../../src/intake/identities.js';
import type { Plant } from '../../simulators/plant.js';
import { startModbusPlant } from '../helpers/daemon-site.js';
import { tempDir } from '../helpers/fixtures.js';
import { httpsRequest, loopbackCertificate } from '../helpers/loopback-https.js';
import { mosquittoAvailable, startMosquitto, until, type Mosquitto } from '../helpers/mosquitto.js';
import { inventoryFor } from '../helpers/plant-inventory.js';
import { hasCommand, realComponent } from '../helpers/real.js';
import {
  bindNotifySocket,
  spawnNotifiedSluiced,
  type Datagram,
  type NotifiedSluiced,
  type NotifySocket,
} from '../helpers/notify-socket.js';
import { fillFilesystem, mountTmpfs, tmpfsAvailable, unmount } from '../reliability/support.js';

/**
 * The STATUS= line `systemctl status` shows follows the MQTT intake after READY. READY does not
 * wait for the broker (docs/spec-notes.md, Operation: "`systemctl status` and `/readyz` say
 * whether MQTT is connected"), and the only line was the one sent with READY: "MQTT connecting"
 * for as long as the daemon ran once the broker had connected, "MQTT connected" while it was
 * down. The line also began "ready:" while /readyz answered 503 (a broker down, a journal that
 * cannot be written): it now says "not ready" and why, from the same checks (readiness.ts).
 * The real `sluiced` process with NOTIFY_SOCKET bound by python3 (as in notify.test.ts), real
 * Mosquitto stopped and started again, sluice-sim, the state folder on a real tmpfs filled to
 * ENOSPC.
 */

const real =
  mosquittoAvailable() &&
  realComponent('python3', hasCommand('python3'), 'apt-get install python3');
/** The journal on a tmpfs of its own, filled under the running daemon (root only). */
const mountable = real && tmpfsAvailable();

const CLIENT_ID = 'sluice-notify-status';

describe.runIf(real)('the STATUS= line after READY', () => {
  let plant: Plant;
  let broker: Mosquitto;
  let cleanup: () => void;
  let socket: NotifySocket;
  let sluiced: NotifiedSluiced;
  let daemon: ChildProcess;
  let datagrams: Datagram[] = [];
  let stateDir: string;
  let ca: string;

  beforeAll(async () => {
    let dir: string;
    ({ dir, cleanup } = tempDir('sluice-notify-status-'));
    plant = await startModbusPlant({ 'inlet-valve': { profile: 'valve', base: 0 } });
    broker = await startMosquitto();
    ca = await loopbackCertificate(dir);
    stateDir = join(dir, 'state');
    mkdirSync(stateDir, { mode: 0o700 });
    if (mountable) mountTmpfs(stateDir, '16m');
    const inventory = inventoryFor(plant);
    const configPath = join(dir, 'sluice.yaml');
    writeFileSync(
      configPath,
      stringify({
        gatewayId: 'notify-status',
        stateDir: 'state',
        https: { host: '127.0.0.1', port: 0, certFile: 'cert.pem', keyFile: 'key.pem' },
        mqtt: { url: broker.url, identity: 'scada', clientId: CLIENT_ID },
        identities: { scada: { tokenSha256: sha256('t').toString('hex'), devices: ['*'] } },
        plcs: inventory.plcs,
        devices: inventory.devices,
        admin: { enabled: false },
      }),
    );
    socket = await bindNotifySocket(join(dir, 'notify.sock'));
    datagrams = socket.datagrams;
    sluiced = spawnNotifiedSluiced(configPath, socket);
    daemon = sluiced.child;
  }, 60_000);

  afterAll(async () => {
    if (daemon.exitCode === null && daemon.signalCode === null) {
      const exited = new Promise((resolve) => daemon.once('exit', resolve));
      daemon.kill('SIGTERM');
      await exited;
    }
    socket.close();
    await broker.close();
    await plant.stop();
    if (mountable) unmount(stateDir);
    cleanup();
  });

  /** The STATUS= text of the last datagram that carried one. */
  const lastStatus = (): string | undefined => {
    for (let i = datagrams.length - 1; i >= 0; i--) {
      const status = /(?:^|\n)STATUS=(.*)$/s.exec(datagrams[i]!.text);
      if (status !== null) return status[1];
    }
    return undefined;
  };
  const statusMatching = (pattern: RegExp, what: string): Promise<string> =>
    until(
      () => {
        const status = lastStatus();
        return status !== undefined && pattern.test(status) ? status : undefined;
      },
      20_000,
      `${what}; datagrams: ${JSON.stringify(datagrams.map((d) => d.text))}; daemon output:\n${sluiced.output()}`,
    );

  it('says whether MQTT is connected, as the broker goes away and comes back', async () => {
    await until(
      () => datagrams.find((d) => d.text.startsWith('READY=1')),
      45_000,
      `READY=1; daemon output:\n${sluiced.output()}`,
    );
    // READY=1 comes once recovery is done; the line says "ready" once every device has been
    // read as well (as /readyz): a line with MQTT connected may come before that, "not ready
    // (inlet-valve not read yet)" — wait for the one that calls the gateway ready.
    const connected = await statusMatching(
      /^ready: .*MQTT connected/,
      'the status line: ready, MQTT connected',
    );
    expect(connected).toMatch(/^ready: HTTPS on 127\.0\.0\.1:\d+, MQTT connected; 0 recovered/);
    // Ground truth: the broker took the daemon's connection.
    expect(broker.connectionsOf(CLIENT_ID)).toBeGreaterThanOrEqual(1);

    await broker.stop();
    expect(broker.running()).toBe(false);
    const down = await statusMatching(/MQTT not connected/, 'the status line: MQTT not connected');
    // /readyz fails while the broker is away: the line does not call the gateway ready.
    expect(down).toMatch(/^not ready: HTTPS on 127\.0\.0\.1:\d+, MQTT not connected \(.+\); 0 /);

    await broker.restart();
    await statusMatching(
      /^ready: .*MQTT connected/,
      'the status line: ready, MQTT connected again',
    );
    expect(broker.connectionsOf(CLIENT_ID)).toBeGreaterThanOrEqual(1);
    // A line when what it says changes, not one per second.
    const statuses = datagrams.filter((d) => d.text.startsWith('STATUS='));
    expect(statuses.length).toBeLessThanOrEqual(6);
  }, 90_000);

  it.runIf(mountable)(
    'says "not ready" and why while the journal cannot be written, and "ready" once it can',
    async () => {
      await statusMatching(/^ready: .*MQTT connected/, 'the status line: ready');
      const target = {
        port: Number(/HTTPS on 127\.0\.0\.1:(\d+)/.exec(lastStatus()!)![1]),
        ca,
        token: 't',
      };
      const post = (key: string, waitS = 10) =>
        httpsRequest(
          target,
          'POST',
          '/v1/commands',
          { 'idempotency-key': key, prefer: `wait=${waitS}` },
          {
            device: 'inlet-valve',
            action: 'open',
            ttlMs: 60_000,
          },
        );
      const writes = plant.device('inlet-valve').counters.writesReceived;
      // An empty WAL (a second connection may checkpoint it), so that the next claim needs new
      // space on the filesystem; then the filesystem is filled.
      const db = new BetterSqlite3(join(stateDir, 'journal.db'));
      db.pragma('wal_checkpoint(TRUNCATE)');
      db.close();
      const filler = join(stateDir, 'filler');
      fillFilesystem(filler);
      try {
        const sent = performance.now();
        const refused = await post('on-a-full-disk', 30);
        // Ground truth: the claim was refused (I5) and nothing reached the controller.
        expect(refused.status, refused.body).toBe(503);
        // At once: the claim's batch was lost at its COMMIT, so the command can never settle,
        // and its device's worker, finding it gone, wakes the request. It used to wait out
        // its `Prefer: wait` (30 s here) before the 503.
        expect(performance.now() - sent).toBeLessThan(15_000);
        const notReady = await statusMatching(
          /^not ready \(journal unavailable/,
          'the status line: not ready, the journal',
        );
        // The journal proved with a write, while it is known to fail: its state now, not the
        // lost batch's words.
        expect(notReady).toMatch(
          /^not ready \(journal unavailable \(check\): SQLITE_FULL: the filesystem of .+ is full; commands are refused until space is freed there, then taken again without a restart\): HTTPS on 127\.0\.0\.1:\d+, MQTT connected; /,
        );
        expect(plant.device('inlet-valve').counters.writesReceived).toBe(writes);
      } finally {
        rmSync(filler, { force: true });
      }
      // The journal can be written again: the next command goes through, and the line says so.
      const accepted = await post('after-space-is-freed');
      expect(accepted.status, accepted.body).toBe(200);
      await statusMatching(/^ready: HTTPS/, 'the status line: ready again');
      expect(plant.device('inlet-valve').counters.writesReceived).toBe(writes + 1);
    },
    60_000,
  );
});
