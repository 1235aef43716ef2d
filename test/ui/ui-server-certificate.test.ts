import { X509Certificate } from 'node:crypto';
import { existsSync, renameSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { generate } from 'selfsigned';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sha256 } from '../../src/intake/identities.js';
import type { Plant } from '../../simulators/plant.js';
import { startSluiced, type Running } from '../config/sluiced.js';
import { startModbusPlant } from '../helpers/daemon-site.js';
import { tempDir } from '../helpers/fixtures.js';
import { until } from '../helpers/mosquitto.js';
import { inventoryFor } from '../helpers/plant-inventory.js';
import { realComponent } from '../helpers/real.js';
import { loggedInPage } from './ui-logged-in-page.js';

/**
 * The status page's verdict on the daemon's own HTTPS server certificate, in Debian's Chromium
 * against the real sluiced process and sluice-sim. The page showed none, while /readyz,
 * `sluicectl health` and the systemd status line judged it: an operator looking at the page saw
 * nothing of a certificate nine days from its end, or past it. The test makes each certificate
 * (its dates are the ground truth), starts on one near its end, then renews it and, later,
 * puts an expired one in place, each by a reload (SIGHUP) as a certificate agent does; the
 * page, left open on its event stream, shows each verdict, in /readyz's words.
 */

const CHROMIUM_PATHS = ['/usr/bin/chromium', '/usr/bin/chromium-browser'];
const chromiumPath =
  process.env.SLUICE_CHROMIUM ?? CHROMIUM_PATHS.find((path) => existsSync(path)) ?? null;
const real = realComponent(
  'Chromium',
  chromiumPath !== null && existsSync(chromiumPath),
  'apt-get install chromium, or SLUICE_CHROMIUM=/path/to/chromium',
);

const TOKEN = 'cert-page-token-8Tz4';
const DAY = 86_400_000;

let dir: string;
let cleanup: () => void;
let plant: Plant;
let daemon: Running;
let port: number;
let browser: Browser;
let page: Page;
/** The certificate the daemon starts on, nine and a half days from its end. */
let first: { cert: string; key: string };
const problems: string[] = [];

/** A self-signed certificate for 127.0.0.1 valid from `notBefore` to `notAfter`. */
async function certificate(
  cn: string,
  notBefore: Date,
  notAfter: Date,
): Promise<{ cert: string; key: string }> {
  const made = await generate([{ name: 'commonName', value: cn }], {
    keyType: 'ec',
    curve: 'P-256',
    notBeforeDate: notBefore,
    notAfterDate: notAfter,
    extensions: [{ name: 'subjectAltName', altNames: [{ type: 7, ip: '127.0.0.1' }] }],
  });
  return { cert: made.cert, key: made.private };
}

/** Writes the pair as a renewal agent should: each file whole, beside it then renamed over it. */
function install(pair: { cert: string; key: string }): void {
  for (const [name, text] of [
    ['key.pem', pair.key],
    ['cert.pem', pair.cert],
  ] as const) {
    const path = join(dir, name);
    writeFileSync(`${path}.new`, text, { mode: 0o600 });
    renameSync(`${path}.new`, path);
  }
}

/** SIGHUP, and the reload's `reload done` line, which must say the HTTPS files were taken. */
async function reload(): Promise<void> {
  const from = daemon.lines.length;
  daemon.signal('SIGHUP');
  const done = await daemon.line(
    (l) => daemon.lines.lastIndexOf(l) >= from && l.includes('"msg":"reload done"'),
    15_000,
  );
  expect(JSON.parse(done)).toMatchObject({ https: 'reloaded' });
}

/** The page's HTTPS certificate field: its word, the word's tone, and the whole text. */
async function shown(): Promise<{ word: string; tone: string; text: string }> {
  const field = page.locator('#gateway div', {
    has: page.locator('dt', { hasText: 'HTTPS certificate' }),
  });
  const word = field.locator('dd .state');
  return {
    word: await word.innerText({ timeout: 2_000 }),
    tone: (await word.getAttribute('class', { timeout: 2_000 })) ?? '',
    text: await field.locator('dd').innerText({ timeout: 2_000 }),
  };
}

/** /readyz's `https` check, on a connection that does not judge the certificate itself. */
function readyzHttps(): Promise<{ ok: boolean; detail: string }> {
  return new Promise((resolve, reject) => {
    const req = request(
      { host: '127.0.0.1', port, path: '/readyz', rejectUnauthorized: false, agent: false },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () => {
          const checks = (JSON.parse(text) as { checks: Record<string, unknown> }).checks;
          resolve(checks.https as { ok: boolean; detail: string });
        });
      },
    );
    req.once('error', reject);
    req.end();
  });
}

beforeAll(async () => {
  if (!real || chromiumPath === null) return;
  ({ dir, cleanup } = tempDir('sluice-ui-cert-'));
  plant = await startModbusPlant({ v1: { profile: 'valve', base: 0 } });
  const inventory = inventoryFor(plant);
  const configPath = join(dir, 'sluice.yaml');
  writeFileSync(
    configPath,
    stringify({
      gatewayId: 'certpage',
      stateDir: 'state',
      https: { host: '127.0.0.1', port: 0, certFile: 'cert.pem', keyFile: 'key.pem' },
      identities: { ops: { tokenSha256: sha256(TOKEN).toString('hex'), devices: ['*'] } },
      ui: { roles: { ops: 'operator' } },
      plcs: inventory.plcs,
      devices: inventory.devices,
    }),
  );
  // Nine and a half days from its end at the start: the page says 9 days whatever the
  // seconds the start and the browser take.
  first = await certificate(
    'gateway-old',
    new Date(Date.now() - DAY),
    new Date(Date.now() + 9.5 * DAY),
  );
  install(first);
  daemon = startSluiced(['--config', configPath]);
  const started = await daemon.line((l) => l.includes('"msg":"sluiced started"'), 60_000);
  port = (JSON.parse(started) as { https: { port: number } }).https.port;
  // The browser trusts no certificate of the test's; what it shows of one is the daemon's word.
  ({ browser, page } = await loggedInPage({ origin: `https://127.0.0.1:${port}` }, chromiumPath, {
    token: TOKEN,
    prepare: (p) => {
      p.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
    },
  }));
  await until(
    async () => ((await page.locator('#stream').innerText()) === 'Live' ? true : undefined),
    10_000,
    'the page live',
  );
}, 120_000);

afterAll(async () => {
  if (!real) return;
  await browser.close();
  await daemon.stop();
  await plant.stop();
  cleanup();
}, 30_000);

describe.runIf(real)('the status page and the HTTPS server certificate', () => {
  it('shows the verdict /readyz gives, and the certificate a reload put in place', async () => {
    const oldEnd = new Date(Date.parse(new X509Certificate(first.cert).validTo)).toISOString();
    await expect
      .poll(async () => (await shown()).text, { timeout: 10_000 })
      .toContain('CN=gateway-old');
    const expiring = await shown();
    expect(expiring.word).toBe('EXPIRING');
    expect(expiring.tone).toContain('tone-warn');
    expect(expiring.text).toBe(
      `EXPIRING certificate CN=gateway-old expires on ${oldEnd} (in 9 days): replace it before then`,
    );
    expect((await readyzHttps()).detail).toBe(
      `listening; ${expiring.text.slice('EXPIRING '.length)}`,
    );

    // Renewed for 400 days and reloaded: the page, open all along, shows the new certificate.
    const renewed = await certificate(
      'gateway-renewed',
      new Date(Date.now() - DAY),
      new Date(Date.now() + 400 * DAY),
    );
    const renewedEnd = new Date(
      Date.parse(new X509Certificate(renewed.cert).validTo),
    ).toISOString();
    install(renewed);
    await reload();
    await expect
      .poll(async () => (await shown()).text, { timeout: 10_000 })
      .toBe(`VALID certificate CN=gateway-renewed valid until ${renewedEnd.slice(0, 10)}`);
    expect((await shown()).tone).toContain('tone-rest');
    expect(await readyzHttps()).toEqual({
      ok: true,
      detail: `listening; certificate CN=gateway-renewed valid until ${renewedEnd.slice(0, 10)}`,
    });

    // A certificate that ended an hour ago (a renewal agent that installed a stale file): every
    // client's handshake fails, and the page says so.
    const lapsed = await certificate(
      'gateway-lapsed',
      new Date(Date.now() - 30 * DAY),
      new Date(Date.now() - 3_600_000),
    );
    const lapsedEnd = new Date(Date.parse(new X509Certificate(lapsed.cert).validTo)).toISOString();
    install(lapsed);
    await reload();
    const detail = `its certificate (CN=gateway-lapsed) expired on ${lapsedEnd}: clients' TLS handshakes fail; replace https.certFile and https.keyFile, then reload sluiced (systemctl reload sluiced)`;
    await expect
      .poll(async () => (await shown()).text, { timeout: 10_000 })
      .toBe(`EXPIRED ${detail}`);
    expect((await shown()).tone).toContain('tone-fault');
    expect(await readyzHttps()).toEqual({ ok: false, detail: `listening, but ${detail}` });
    expect(problems).toEqual([]);
  }, 60_000);
});
