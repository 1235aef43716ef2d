import { writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { afterAll, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { Daemon } from '../../src/daemon/daemon.js';
import type { ServiceNotifier } from '../../src/daemon/notify.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { tempDir } from '../helpers/fixtures.js';
import { issuerCommand } from '../helpers/new-command.js';
import { loopbackCertificate } from '../helpers/loopback-https.js';
import { until } from '../helpers/mosquitto.js';
import { recordingLogger } from '../helpers/recording-logger.js';

/**
 * A stop that begins while READY waits for the commands recovered from the journal: after
 * STOPPING=1, nothing should claim the start goes on (EXTEND_TIMEOUT_USEC with a "starting:"
 * status line), which overwrites systemd's status line and extends the stop timeout.
 */
/**
 * A stop that begins while READY waits for the commands recovered from the journal (here one,
 * for a PLC that does not answer): STOPPING=1 is sent, and no "starting" extension of the start
 * time may follow it. The wait went on extending the start every interval, with a status line
 * saying "starting: settling …", for the whole shutdown bound after STOPPING=1.
 *
 * The daemon's own composition (Daemon.start) on a real journal; the PLC is a closed loopback
 * port (a controller that is not there, which the simulator has no fault for); the service
 * manager's side records what the daemon sends it (a notifier double: what is checked is the
 * order of the notifications, which test/daemon/notify.test.ts checks on the real socket).
 */

const { dir, cleanup } = tempDir('sluice-stop-ready-');
afterAll(() => {
  cleanup();
});

async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  await new Promise<void>((r) =>
    server.close(() => {
      r();
    }),
  );
  return port;
}

it('a stop while READY waits for recovered commands: no start extension after STOPPING=1', async () => {
  await loopbackCertificate(dir);
  const port = await closedPort();
  const configPath = join(dir, 'sluice.yaml');
  writeFileSync(
    configPath,
    stringify({
      gatewayId: 'stopready',
      stateDir: 'state',
      https: { host: '127.0.0.1', port: 0, certFile: 'cert.pem', keyFile: 'key.pem' },
      identities: {},
      plcs: {
        mb: { protocol: 'modbus', host: '127.0.0.1', port, unitId: 1, requestTimeoutMs: 300 },
      },
      devices: { v1: { plc: 'mb', profile: 'valve', base: 0 } },
      admin: { enabled: false },
    }),
  );
  const config = loadConfig(configPath);
  const seed = SqliteJournal.open({ path: join(dir, 'state', 'journal.db') });
  const now = Date.now();
  // Two minutes to live: it stays open, taken up or not, for the whole test.
  seed.claim({
    ...issuerCommand('recovered-1', 'v1', now),
    scope: 'scada',
    fingerprint: 'recovered-1',
    ttlMs: 120_000,
    deadline: now + 120_000,
  });
  seed.close();

  const sent: string[] = [];
  const notifier: ServiceNotifier = {
    ready: (s) => sent.push(`READY=1 ${s}`),
    status: (s) => sent.push(`STATUS ${s}`),
    extendStart: (ms, s) => sent.push(`EXTEND_TIMEOUT_USEC=${ms * 1000} ${s}`),
    reloading: (s) => sent.push(`RELOADING=1 ${s}`),
    stopping: (s) => sent.push(`STOPPING=1 ${s}`),
    holdPings: () => () => undefined,
    close: () => sent.push('close'),
  };
  const { logger } = recordingLogger();
  const daemon = await Daemon.start(config, {
    logger,
    notifier,
    startProgressIntervalMs: 100,
    readyBoundMs: 20_000,
    shutdownBoundMs: 1_500,
  });
  // The wait extends the start (the recovered command cannot settle: its PLC is not there).
  await until(
    () => (sent.some((t) => t.startsWith('EXTEND_TIMEOUT_USEC=')) ? true : undefined),
    10_000,
    'a start extension while READY waits',
  );
  await daemon.stop();
  expect(sent.some((t) => t.startsWith('READY=1'))).toBe(false);
  const stoppingAt = sent.findIndex((t) => t.startsWith('STOPPING=1'));
  expect(stoppingAt).toBeGreaterThan(0);
  // daemon.stop() returned after the shutdown bound (the command could not settle), 15 looks
  // of the wait: none of them extended the start.
  const after = sent.slice(stoppingAt + 1);
  expect(after.filter((t) => t.startsWith('EXTEND_TIMEOUT_USEC='))).toEqual([]);
  expect(after.at(-1)).toBe('close');
}, 30_000);
