import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { stringify } from 'yaml';
import { afterAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { Daemon } from '../../src/daemon/daemon.js';
import { sha256 } from '../../src/intake/identities.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { startModbusPlant } from '../helpers/daemon-site.js';
import { tempDir } from '../helpers/fixtures.js';
import { httpsRequest, loopbackCertificate, type HttpsAnswer } from '../helpers/loopback-https.js';
import { until } from '../helpers/mosquitto.js';
import { inventoryFor } from '../helpers/plant-inventory.js';
import { slowFdatasync } from '../helpers/slow-fdatasync.js';
import type { Plant } from '../../simulators/plant.js';

/**
 * A stop sent over HTTPS and claimed just before SIGTERM (the graceful stop, Daemon.stop) is
 * carried out within the shutdown bound (SPEC §2: a stop is dispatched at once; §9: in-flight
 * commands settle), as test/daemon/stop-at-sigterm.test.ts shows for MQTT: the real daemon on
 * an HTTPS-only gateway, a real HTTPS client, sluice-sim and the real journal. The stop preempts
 * the travelling open at its claim and waits in the valve's queue for the open's worker, which
 * waits for the stop's claim to be on disk. The graceful stop first lets the HTTPS requests in
 * flight be answered (up to the intake's drain bound, 5 s), then stops the pipeline:
 *
 * - a claim on disk within the drain bound: the client is answered 202, and the stop is written;
 * - a claim longer on its way to disk than the drain bound (a flash that takes seconds to
 *   flush): the client's connection is cut unanswered, and the pipeline is stopped while the
 *   stop still waits in the queue. Emptied with the queue, the stop was never written and the
 *   valve ran to OPEN; it is written now.
 *
 * Ground truth: the simulator's write log and the valve's position, what the client received,
 * and the journal read through a connection of its own.
 *
 * The one double: fs.fdatasync made slow (slow-fdatasync.ts), a gateway's worn flash that no
 * real part here produces, so that the stop's claim barrier lasts long enough for the test to
 * see the claim in the journal and stop the daemon inside it, and, in the second case, past the
 * drain bound.
 */

const TOKEN = 'stop-sigterm-token';
let plant: Plant | undefined;
const cleanups: (() => void)[] = [];

afterAll(async () => {
  await plant?.stop();
  for (const cleanup of cleanups) cleanup();
});

/** The client's answer to the stop, or the error its connection ended with. */
type Outcome = { answer: HttpsAnswer } | { error: string };

async function stopJustBeforeSigterm(
  name: string,
  fdatasyncMs: number,
): Promise<{
  outcome: Outcome;
  open: ReturnType<SqliteJournal['get']>;
  stop: ReturnType<SqliteJournal['get']>;
}> {
  const { dir, cleanup } = tempDir(`sluice-stop-sigterm-https-${name}-`);
  cleanups.push(cleanup);
  plant = await startModbusPlant({
    'inlet-valve': { profile: 'valve', base: 0, travelMs: 30_000 },
  });
  const ca = await loopbackCertificate(dir);
  const configPath = join(dir, 'sluice.yaml');
  writeFileSync(
    configPath,
    stringify({
      gatewayId: 'site',
      stateDir: 'state',
      https: { host: '127.0.0.1', port: 0, certFile: 'cert.pem', keyFile: 'key.pem' },
      identities: { scada: { tokenSha256: sha256(TOKEN).toString('hex'), devices: ['*'] } },
      admin: { enabled: false },
      ...inventoryFor(plant),
    }),
  );
  const daemon = await Daemon.start(loadConfig(configPath, { env: {} }), {
    logger: pino({ level: 'silent' }),
    shutdownBoundMs: 20_000,
  });
  const target = { port: daemon.https!.port, ca, token: TOKEN };
  const send = (key: string, action: string): Promise<HttpsAnswer> =>
    httpsRequest(
      target,
      'POST',
      '/v1/commands',
      { 'idempotency-key': key, prefer: 'respond-async' },
      { device: 'inlet-valve', action },
    );
  const valve = plant.device('inlet-valve');
  const journal = SqliteJournal.open({ path: join(dir, 'state', 'journal.db'), readonly: true });
  try {
    await until(
      () => (daemon.readiness().checks['device:inlet-valve']?.ok === true ? true : undefined),
      20_000,
      'the valve read',
    );
    expect((await send('open-1', 'open')).status).toBe(202);
    await until(() => (valve.snapshot().position >= 10 ? true : undefined), 20_000, '10 %');

    const disk = slowFdatasync(fdatasyncMs);
    let answered: Promise<Outcome>;
    let stopping: Promise<void>;
    try {
      answered = send('stop-1', 'stop').then(
        (answer) => ({ answer }),
        (error: unknown) => ({ error: String(error) }),
      );
      // Claimed (committed, its fdatasync still to come): SIGTERM now.
      await until(
        () => (journal.get({ scope: 'scada', key: 'stop-1' }) === undefined ? undefined : true),
        10_000,
        'the stop claimed',
      );
      stopping = daemon.stop();
    } finally {
      disk.restore();
    }
    const outcome = await answered;
    await stopping;
    return {
      outcome,
      open: journal.get({ scope: 'scada', key: 'open-1' }),
      stop: journal.get({ scope: 'scada', key: 'stop-1' }),
    };
  } finally {
    journal.close();
    await daemon.stop();
  }
}

function expectStopped(
  open: ReturnType<SqliteJournal['get']>,
  stop: ReturnType<SqliteJournal['get']>,
): void {
  expect({ state: stop?.state, code: stop?.code }).toEqual({ state: 'confirmed', code: 'OK' });
  expect({ state: open?.state, code: open?.code }).toEqual({
    state: 'failed',
    code: 'INTERRUPTED',
  });
  // Two writes: the open's, then the stop's; the valve rests where the stop caught it.
  const valve = plant!.device('inlet-valve');
  expect(valve.writeLog.map((w) => w.seq)).toEqual([open?.seq, stop?.seq]);
  const { state, position } = valve.snapshot();
  expect(state).toBe('STOPPED');
  expect(position).toBeLessThan(100);
}

describe('a stop sent over HTTPS and claimed just before SIGTERM', () => {
  it('on disk within the drain bound: answered 202, written within the shutdown bound', async () => {
    const { outcome, open, stop } = await stopJustBeforeSigterm('answered', 1_000);
    expect('answer' in outcome ? outcome.answer.status : outcome.error).toBe(202);
    expectStopped(open, stop);
    await plant?.stop();
    plant = undefined;
  }, 90_000);

  it('on disk only after the drain bound: the connection cut, the stop written all the same', async () => {
    const { outcome, open, stop } = await stopJustBeforeSigterm('cut', 7_000);
    expect('error' in outcome ? 'cut' : outcome.answer.status).toBe('cut');
    expectStopped(open, stop);
  }, 90_000);
});
