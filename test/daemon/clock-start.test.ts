import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig, type SluiceConfig } from '../../src/config/config.js';
import { Daemon } from '../../src/daemon/daemon.js';
import { sha256 } from '../../src/intake/identities.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import type { Plant } from '../../simulators/plant.js';
import { startModbusPlant } from '../helpers/daemon-site.js';
import { tempDir } from '../helpers/fixtures.js';
import { loopbackCertificate } from '../helpers/loopback-https.js';
import {
  mosquittoAvailable,
  startMosquitto,
  TestClient,
  until,
  type Mosquitto,
} from '../helpers/mosquitto.js';
import { inventoryFor } from '../helpers/plant-inventory.js';
import { ptpLabAvailable, startPtpLab, type PtpLab } from '../helpers/ptp.js';

/**
 * The gateway clock at the daemon's start (SPEC §6), on real parts: a ptp4l slave following a
 * grandmaster in network namespaces the test creates (both free-running: this machine's clock
 * is never adjusted), mosquitto, sluice-sim. Before its source has been checked the gateway
 * clock is UNKNOWN ("not checked yet"), which policy `reject` refuses: the commands the daemon
 * judges first — those it recovers from the journal, and those the broker held for it while
 * it was down (SPEC I3) — were refused CLOCK_SKEW on a clock that is locked, when pmc's first
 * answer came after them. Ground truth: the simulator's write counters and the journal.
 */

const real = ptpLabAvailable() && mosquittoAvailable();
const quiet = pino({ level: 'silent' });
let plant: Plant;
let lab: PtpLab;
let broker: Mosquitto;
let config: SluiceConfig;
let cleanup: () => void;

beforeAll(async () => {
  if (!real) return;
  const temp = tempDir('sluice-clock-start-');
  cleanup = temp.cleanup;
  lab = await startPtpLab();
  broker = await startMosquitto();
  plant = await startModbusPlant({
    'inlet-valve': { profile: 'valve', base: 0, travelMs: 200 },
    'outlet-valve': { profile: 'valve', base: 20, travelMs: 200 },
  });
  await loopbackCertificate(temp.dir);
  const inventory = inventoryFor(plant);
  const configPath = join(temp.dir, 'sluice.yaml');
  writeFileSync(
    configPath,
    stringify({
      gatewayId: 'clockstart',
      stateDir: 'state',
      https: { host: '127.0.0.1', port: 0, certFile: 'cert.pem', keyFile: 'key.pem' },
      mqtt: { url: broker.url, identity: 'ops', clientId: 'sluice-clock-start' },
      clock: {
        source: 'ptp',
        pollIntervalMs: 200,
        holdoverMs: 2_000,
        onUnsynced: 'reject',
        // Free-running ptp4l 3.1.1 follows in UNCALIBRATED (docs/clock.md).
        ptp: {
          udsPath: lab.slave.socket,
          domain: lab.domain,
          clientSocketDir: lab.dir,
          acceptUncalibrated: true,
          pmc: 'pmc',
          // Within the holdover: a poll and two runs of pmc (config.ts, holdoverProblem).
          timeoutMs: 900,
        },
      },
      identities: { ops: { tokenSha256: sha256('clock-start').toString('hex'), devices: ['*'] } },
      plcs: inventory.plcs,
      devices: inventory.devices,
    }),
  );
  config = loadConfig(configPath, { env: {} });
}, 60_000);

afterAll(async () => {
  if (!real) return;
  await plant.stop();
  await broker.close();
  await lab.close();
  cleanup();
}, 30_000);

describe.runIf(real)('the gateway clock at the start (SPEC §6)', () => {
  it('a recovered command and one the broker held are judged on a checked clock, and run', async () => {
    // A first life: the clock reaches LOCKED, and the intake's persistent session exists.
    const first = await Daemon.start(config, { logger: quiet });
    try {
      await until(
        () => {
          const checks = first.readiness().checks;
          return checks.clock?.detail.startsWith('LOCKED') === true && checks.mqtt?.ok === true
            ? true
            : undefined;
        },
        20_000,
        'gateway clock LOCKED and MQTT connected',
      );
    } finally {
      await first.stop();
    }

    // While the daemon is down: a command journaled and never written (its process died), and
    // one published to the broker, which keeps it for the intake's session. Both timestamped.
    const now = Date.now();
    mkdirSync(config.stateDir, { recursive: true });
    const seed = SqliteJournal.open({ path: join(config.stateDir, 'journal.db') });
    seed.claim({
      scope: 'ops',
      key: 'recovered-1',
      fingerprint: 'f',
      device: 'inlet-valve',
      action: 'open',
      position: null,
      issuedAt: now,
      issuedAtSource: 'issuer',
      ttlMs: 60_000,
      deadline: now + 60_000,
      intake: 'https',
      acceptedAt: now,
    });
    seed.close();
    const client = await TestClient.connect(broker.url);
    try {
      await client.subscribe('sluice/clockstart/result/#');
      await client.publish('sluice/clockstart/cmd/outlet-valve', {
        key: 'held-1',
        action: 'open',
        issuedAt: new Date(now).toISOString(),
        ttlMs: 60_000,
      });

      const daemon = await Daemon.start(config, { logger: quiet });
      try {
        const held = await client.waitFor(
          (m) => m.topic === 'sluice/clockstart/result/outlet-valve' && m.json().key === 'held-1',
          20_000,
          'result of the command the broker held',
        );
        expect(held.json()).toMatchObject({ state: 'confirmed', code: 'OK' });
        const recovered = await until(
          () => {
            const record = daemon.pipeline.get({ scope: 'ops', key: 'recovered-1' });
            return record?.state === 'confirmed' ||
              record?.state === 'rejected' ||
              record?.state === 'failed'
              ? record
              : undefined;
          },
          20_000,
          'the recovered command settled',
        );
        expect({ state: recovered.state, code: recovered.code }).toEqual({
          state: 'confirmed',
          code: 'OK',
        });
        expect(plant.device('inlet-valve').counters.writesReceived).toBe(1);
        expect(plant.device('outlet-valve').counters.writesReceived).toBe(1);
      } finally {
        await daemon.stop();
      }
    } finally {
      await client.end();
    }
  }, 90_000);
});
