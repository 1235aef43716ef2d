import { X509Certificate } from 'node:crypto';
import { pino } from 'pino';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { systemClock, type Clock } from '../../src/core/clock.js';
import { loadConfig } from '../../src/config/config.js';
import { Daemon } from '../../src/daemon/daemon.js';
import type { Plant } from '../../simulators/plant.js';
import { startModbusPlant, writeDaemonSite } from '../helpers/daemon-site.js';
import { tempDir } from '../helpers/fixtures.js';
import { httpsRequest, loopbackCertificate } from '../helpers/loopback-https.js';
import { until } from '../helpers/mosquitto.js';

/**
 * /readyz while the HTTPS server certificate leaves its validity. The intake kept answering
 * `https: listening` with an expired certificate, whose every client handshake fails: only
 * `sluiced --check` showed the dates. The daemon runs on a clock whose wall time the test
 * moves to the certificate's last days and past its end (a real certificate cannot be made to
 * expire within a test); the test's own client checks the certificate on the real time, so
 * it can still read the answer.
 */

let plant: Plant;
let daemon: Daemon;
let cleanup: () => void;
let ca: string;
let validTo: number;
let offsetMs = 0;

beforeAll(async () => {
  let dir: string;
  ({ dir, cleanup } = tempDir('sluice-cert-expiry-'));
  plant = await startModbusPlant({ 'inlet-valve': { profile: 'valve', base: 0 } });
  const configPath = await writeDaemonSite(dir, plant, 'cert-expiry');
  // The site's certificate, replaced by one that names 127.0.0.1 for the test's client.
  ca = await loopbackCertificate(dir);
  validTo = Date.parse(new X509Certificate(ca).validTo);
  const clock: Clock = { ...systemClock, now: () => Date.now() + offsetMs };
  daemon = await Daemon.start(loadConfig(configPath, { env: {} }), {
    logger: pino({ level: 'silent' }),
    clock,
  });
}, 30_000);

afterAll(async () => {
  await daemon.stop();
  await plant.stop();
  cleanup();
});

async function httpsCheck(): Promise<{ status: number; ok: boolean; detail: string }> {
  const answer = await httpsRequest(
    { port: daemon.https!.port, ca, token: 'none' },
    'GET',
    '/readyz',
    {},
  );
  const checks = answer.json().checks as Record<string, { ok: boolean; detail: string }>;
  return { status: answer.status, ...checks.https! };
}

it('says when the server certificate expires, and is not ready once it has', async () => {
  const fresh = await until(
    async () => {
      const check = await httpsCheck();
      return check.status === 200 ? check : undefined;
    },
    15_000,
    'the daemon ready',
  );
  expect(fresh.ok).toBe(true);
  expect(fresh.detail).toMatch(/^listening; certificate CN=localhost valid until \d{4}-\d\d-\d\d$/);

  // Nine and a half days before its end: still ready, and says when (whole days left, so the
  // half day keeps the count at 9 whatever the milliseconds between setting the clock and the
  // check, or a step of the machine's own clock meanwhile).
  offsetMs = validTo - 9.5 * 24 * 3_600_000 - Date.now();
  const soon = await httpsCheck();
  expect(soon.ok).toBe(true);
  expect(soon.detail).toContain(`expires on ${new Date(validTo).toISOString()} (in 9 days)`);

  // An hour past its end: not ready, and why.
  offsetMs = validTo + 3_600_000 - Date.now();
  const expired = await httpsCheck();
  expect(expired.status).toBe(503);
  expect(expired.ok).toBe(false);
  expect(expired.detail).toBe(
    `listening, but its certificate (CN=localhost) expired on ${new Date(validTo).toISOString()}: clients' TLS handshakes fail; replace https.certFile and https.keyFile, then reload sluiced (systemctl reload sluiced)`,
  );
  expect(daemon.readiness().ready).toBe(false);

  // Before its start (a gateway clock set years back): not ready either.
  offsetMs = -20 * 365 * 24 * 3_600_000;
  const early = await httpsCheck();
  expect(early.ok).toBe(false);
  expect(early.detail).toMatch(/is not valid before .*is the gateway clock right\?/);

  offsetMs = 0;
  expect((await httpsCheck()).ok).toBe(true);
}, 30_000);
