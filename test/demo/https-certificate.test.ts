import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { generate } from 'selfsigned';
import { afterEach, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import {
  certificateNames,
  ensureDemoCertificate,
  KEPT_CERTIFICATE_MARGIN_MS,
  keptCertificateProblem,
  printedBase,
  printedCurl,
} from '../../src/demo/https-certificate.js';
import { startModbusPlant, writeTokenSite } from '../helpers/daemon-site.js';
import { tempDir } from '../helpers/fixtures.js';
import { hasCommand, realComponent } from '../helpers/real.js';

/**
 * The demo's HTTPS certificate and key, kept in .state/demo/tls from one `npm start` to the
 * next, are checked at every start (src/demo/https-certificate.ts): a pair that still serves is
 * used again as it is, and one that cannot (expired or about to, not valid yet, its key lost,
 * damaged or another's, not naming the host the printed URLs use) is made anew. The demo
 * start itself is in test/daemon/demo.test.ts; here the folder is a temporary one, the pairs
 * are real certificates, and the printed curl is run by a shell against the real daemon (and
 * sluice-sim) serving the pair the check left. Ground truth: the files, the certificate the
 * daemon presents to curl, and the simulator's write log.
 */

const DAY = 24 * 3_600_000;
const NAMES = certificateNames('127.0.0.1');

const dirs: (() => void)[] = [];
afterEach(() => {
  for (let cleanup = dirs.pop(); cleanup !== undefined; cleanup = dirs.pop()) cleanup();
});

function folder(prefix = 'sluice-demo-tls-'): string {
  const { dir, cleanup } = tempDir(prefix);
  dirs.push(cleanup);
  return dir;
}

/** Writes a self-signed pair into `dir` as the demo keeps it (cert.pem, key.pem). */
async function keptPair(
  dir: string,
  o: { from?: number; to?: number; names?: readonly string[] } = {},
): Promise<string> {
  const from = o.from ?? Date.now() - DAY;
  const pems = await generate([{ name: 'commonName', value: 'localhost' }], {
    keyType: 'ec',
    curve: 'P-256',
    notBeforeDate: new Date(from),
    notAfterDate: new Date(o.to ?? Date.now() + 300 * DAY),
    extensions: [
      {
        name: 'subjectAltName',
        altNames: (o.names ?? NAMES).map((name) =>
          /^[\d.]+$|:/.test(name) ? { type: 7, ip: name } : { type: 2, value: name },
        ),
      },
    ],
  });
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'cert.pem'), pems.cert);
  writeFileSync(join(dir, 'key.pem'), pems.private, { mode: 0o600 });
  return fingerprint(dir);
}

function fingerprint(dir: string): string {
  return new X509Certificate(readFileSync(join(dir, 'cert.pem'))).fingerprint256;
}

/** The pair in `dir` serves: valid a year, its own key, naming `names`. */
function servesNow(dir: string, names: readonly string[] = NAMES): void {
  const certificate = new X509Certificate(readFileSync(join(dir, 'cert.pem')));
  expect(Date.parse(certificate.validFrom)).toBeLessThanOrEqual(Date.now());
  expect(Date.parse(certificate.validTo)).toBeGreaterThan(Date.now() + 300 * DAY);
  expect(
    keptCertificateProblem(join(dir, 'cert.pem'), join(dir, 'key.pem'), {
      names,
      now: Date.now(),
      marginMs: KEPT_CERTIFICATE_MARGIN_MS,
    }),
  ).toBeNull();
}

it('says why a kept certificate and key cannot serve', async () => {
  const dir = folder();
  const cert = join(dir, 'cert.pem');
  const key = join(dir, 'key.pem');
  const now = Date.now();
  const wanted = { names: NAMES, now, marginMs: KEPT_CERTIFICATE_MARGIN_MS };
  const problem = (w: Partial<typeof wanted> = {}): string | null =>
    keptCertificateProblem(cert, key, { ...wanted, ...w });

  // Neither file: the first start, nothing to say.
  expect(problem()).toBeNull();
  await keptPair(dir, { to: now + 10 * DAY });
  expect(problem()).toBeNull();
  const validTo = new X509Certificate(readFileSync(cert)).validTo;
  const end = new Date(Date.parse(validTo)).toISOString();
  expect(problem({ now: Date.parse(validTo) })).toBe(`the certificate expired on ${end}`);
  expect(problem({ now: Date.parse(validTo) - 3_600_000 })).toBe(
    `the certificate expires on ${end}, within 24 hours`,
  );
  expect(problem({ now: now - 2 * DAY })).toMatch(/^the certificate is not valid before /);
  // SLUICE_HTTPS_HOST moved the printed URLs to another address than the ones it names.
  expect(problem({ names: certificateNames('::1') })).toBe('the certificate does not name ::1');
  expect(problem({ names: certificateNames('gateway.local') })).toBe(
    'the certificate does not name gateway.local',
  );
  // A wildcard is printed as 127.0.0.1, which the certificate names.
  expect(problem({ names: certificateNames('0.0.0.0') })).toBeNull();

  const ownKey = readFileSync(key);
  await keptPair(join(dir, 'other'));
  writeFileSync(key, readFileSync(join(dir, 'other', 'key.pem')));
  expect(problem()).toBe('the private key does not belong to the certificate');
  writeFileSync(key, ownKey.subarray(0, 40));
  expect(problem()).toBe('the private key file holds no readable key');
  rmSync(key);
  expect(problem()).toBe('the private key cannot be read (ENOENT)');
  mkdirSync(key);
  expect(problem()).toBe('the private key cannot be read (EISDIR)');
  rmSync(key, { recursive: true });
  writeFileSync(key, ownKey);
  writeFileSync(cert, 'not a certificate');
  expect(problem()).toBe('the certificate file holds no readable certificate');
  rmSync(cert);
  expect(problem()).toBe('a private key without its certificate');
});

it('keeps a pair that serves, and makes anew one that expired, expires within a day, has another key or does not name the printed host', async () => {
  const dir = folder();

  // The first start: neither file, both made, said as no problem.
  const first = await ensureDemoCertificate(dir, NAMES);
  expect(first).toMatchObject({ made: true, problem: null });
  servesNow(dir);

  // A start after it: the same certificate and key, untouched.
  const kept = fingerprint(dir);
  const key = readFileSync(join(dir, 'key.pem'), 'utf8');
  expect(await ensureDemoCertificate(dir, NAMES)).toMatchObject({ made: false, problem: null });
  expect(fingerprint(dir)).toBe(kept);
  expect(readFileSync(join(dir, 'key.pem'), 'utf8')).toBe(key);

  // Its key replaced by another's (a restored backup, a copied folder).
  await keptPair(join(dir, 'other'));
  writeFileSync(join(dir, 'key.pem'), readFileSync(join(dir, 'other', 'key.pem')));
  expect(await ensureDemoCertificate(dir, NAMES)).toMatchObject({
    made: true,
    problem: 'the private key does not belong to the certificate',
  });
  expect(fingerprint(dir)).not.toBe(kept);
  servesNow(dir);

  // Valid for another hour only: a demo left running would lose it.
  const ending = await keptPair(dir, { to: Date.now() + 3_600_000 });
  const soon = await ensureDemoCertificate(dir, NAMES);
  expect(soon.problem).toMatch(/^the certificate expires on .*, within 24 hours$/);
  expect(fingerprint(dir)).not.toBe(ending);
  servesNow(dir);

  // The demo moved to ::1 (SLUICE_HTTPS_HOST): the new certificate names it as well.
  const onLoopback = fingerprint(dir);
  const v6 = certificateNames('::1');
  expect(await ensureDemoCertificate(dir, v6)).toMatchObject({
    made: true,
    problem: 'the certificate does not name ::1',
  });
  expect(fingerprint(dir)).not.toBe(onLoopback);
  servesNow(dir, v6);
  // The new key is the user's alone, as the first one was.
  expect(statSync(join(dir, 'key.pem')).mode & 0o777).toBe(0o600);
});

const curl = realComponent('curl', hasCommand('curl'), 'apt-get install curl');

it.runIf(curl)(
  'an expired kept certificate is made anew, and the printed curl opens a valve through the daemon serving the new one',
  async () => {
    // A folder whose path has a space, as a clone under "My projects" has: the demo prints the
    // certificate's full path when `npm start` runs outside the clone's root (shownPath).
    const dir = folder('sluice demo-tls-');
    const plant = await startModbusPlant({ 'inlet-valve': { profile: 'valve', base: 0 } });
    try {
      const token = 'demo-cert-token';
      // The site's certificate and key are the demo's kept pair, in the folder curl runs in.
      const { configPath } = await writeTokenSite(dir, plant, { gatewayId: 'demo', token });
      const expired = await keptPair(dir, {
        from: Date.now() - 400 * DAY,
        to: Date.now() - 35 * DAY,
      });
      const config = loadConfig(configPath, { env: {} });
      const made = await ensureDemoCertificate(dir, certificateNames(config.https?.host));

      const { Daemon } = await import('../../src/daemon/daemon.js');
      const daemon = await Daemon.start(config, { logger: pino({ level: 'silent' }) });
      try {
        const https = daemon.https!;
        const command = printedCurl({
          cacert: join(dir, 'cert.pem'),
          base: printedBase(https.host, https.port),
          token,
          key: 'cert-renewed-1',
        }).join('\n');
        // Run as a user pastes it (its lines and backslashes), with the certificate the
        // daemon presented to curl written out beside the answer.
        const run = await new Promise<{ code: number; stdout: string; stderr: string }>(
          (resolve) => {
            execFile(
              'bash',
              ['-c', command.replace(/^ {2}curl /, `curl -w '\\n%{certs}' `)],
              { cwd: dir, timeout: 30_000 },
              (error, stdout, stderr) => {
                resolve({ code: error === null ? 0 : Number(error.code), stdout, stderr });
              },
            );
          },
        );
        expect(run.stderr).toBe('');
        expect(run.code).toBe(0);
        const [answer, presented] = [
          run.stdout.slice(0, run.stdout.indexOf('\n')),
          run.stdout.slice(run.stdout.indexOf('\n') + 1),
        ];
        expect(JSON.parse(answer)).toMatchObject({
          key: 'cert-renewed-1',
          device: 'inlet-valve',
          state: 'confirmed',
        });
        expect(new X509Certificate(presented).fingerprint256).toBe(fingerprint(dir));
        // The valve moved, once: the simulator's write log.
        expect(plant.device('inlet-valve').writeLog).toHaveLength(1);
        // A new certificate, and the check said why (the demo's banner and log say it).
        expect(fingerprint(dir)).not.toBe(expired);
        expect(made.problem).toMatch(/^the certificate expired on /);
      } finally {
        await daemon.stop();
      }
    } finally {
      await plant.stop();
    }
  },
  60_000,
);
