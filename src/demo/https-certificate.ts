import { createPrivateKey, X509Certificate } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { shellWord } from '../shell-word.js';

/**
 * The demo's HTTPS certificate: self-signed, kept in .state/demo/tls (cert.pem, key.pem) from
 * one start to the next, and trusted by the printed curl as its own CA (`--cacert cert.pem`;
 * sluicectl takes the site's https.certFile, the same file). It was made at the first start and
 * used for ever after: a year later it had expired and the printed commands failed with a bare
 * TLS error, as they did once the demo moved to an address (SLUICE_HTTPS_HOST) the certificate
 * did not name, and a damaged key, or another's, made the start refuse the pair. A kept pair
 * is now checked at every start and made anew when it cannot serve.
 * The simulated OPC UA server's certificate gets the same treatment (simulators/opcua-server.ts);
 * the simulators share no code with src/, so the check is written out here for X.509 alone.
 */

/**
 * How long a kept certificate must still be valid at start: a demo left running overnight
 * would otherwise see its certificate expire under it, and the printed commands fail then.
 */
export const KEPT_CERTIFICATE_MARGIN_MS = 24 * 3_600_000;

/** How long a certificate the demo makes is valid. */
const VALIDITY_MS = 365 * 24 * 3_600_000;

/**
 * The host the printed URLs use for the daemon's HTTPS host: a wildcard (SLUICE_HTTPS_HOST=0.0.0.0,
 * to be reached from elsewhere) is no address to connect to, and a user on this machine reaches
 * it on loopback.
 */
export function printedHost(httpsHost: string): string {
  return httpsHost === '0.0.0.0' || httpsHost === '::' ? '127.0.0.1' : httpsHost;
}

/** The base URL the printed commands use for the daemon's HTTPS host and port. */
export function printedBase(httpsHost: string, port: number): string {
  const host = printedHost(httpsHost);
  return `https://${host.includes(':') ? `[${host}]` : host}:${String(port)}`;
}

/**
 * The printed curl that opens inlet-valve over HTTPS. It trusts the certificate file itself as
 * its CA (`cacert`, as the user's shell finds it, quoted as one word): self-signed, the certificate
 * is its own.
 */
export function printedCurl(o: {
  readonly cacert: string;
  readonly base: string;
  readonly token: string;
  readonly key: string;
}): string[] {
  return [
    // -sS: no progress meter when its output is piped (to jq, a file), errors still said.
    `  curl -sS --cacert ${shellWord(o.cacert)} -X POST ${o.base}/v1/commands \\`,
    `    -H "Authorization: Bearer ${o.token}" -H "Idempotency-Key: ${o.key}" \\`,
    `    -H "Content-Type: application/json" -d '{"device":"inlet-valve","action":"open"}'`,
  ];
}

/**
 * The names the certificate must carry: localhost and 127.0.0.1 (the README's and the docs'
 * commands use them), and the host the printed URLs use when it is another.
 */
export function certificateNames(httpsHost: string | undefined): string[] {
  const names = ['localhost', '127.0.0.1'];
  const printed = httpsHost === undefined ? undefined : printedHost(httpsHost);
  if (printed !== undefined && !names.includes(printed)) names.push(printed);
  return names;
}

/**
 * Why a certificate and key kept from an earlier start cannot serve this one, or null when they
 * can, or when there is neither (the first start makes both). Kept only as a pair that serves:
 * both readable, the key the certificate's own, valid now and for `marginMs` more, naming
 * every one of `names` (host names and IP addresses).
 */
export function keptCertificateProblem(
  certFile: string,
  keyFile: string,
  wanted: { readonly names: readonly string[]; readonly now: number; readonly marginMs: number },
): string | null {
  // A file's contents, or why it could not be read (its error code: ENOENT when missing).
  const read = (file: string): Buffer | string => {
    try {
      return readFileSync(file);
    } catch (error) {
      return (error as NodeJS.ErrnoException).code ?? String(error);
    }
  };
  const pem = read(certFile);
  const keyPem = read(keyFile);
  if (pem === 'ENOENT') return keyPem === 'ENOENT' ? null : 'a private key without its certificate';
  if (!Buffer.isBuffer(pem)) return `the certificate cannot be read (${pem})`;
  let certificate: X509Certificate;
  try {
    certificate = new X509Certificate(pem);
  } catch {
    return 'the certificate file holds no readable certificate';
  }
  const validFrom = Date.parse(certificate.validFrom);
  const validTo = Date.parse(certificate.validTo);
  if (wanted.now < validFrom) {
    return `the certificate is not valid before ${new Date(validFrom).toISOString()}`;
  }
  if (wanted.now >= validTo) {
    return `the certificate expired on ${new Date(validTo).toISOString()}`;
  }
  if (validTo - wanted.now < wanted.marginMs) {
    const hours = Math.round(wanted.marginMs / 3_600_000);
    return `the certificate expires on ${new Date(validTo).toISOString()}, within ${String(hours)} hours`;
  }
  // As a TLS client checks them: an IP address against the IP entries, a name against the DNS
  // ones (a CN alone, or a name in an IP entry, does not do).
  const unnamed = wanted.names.filter((name) =>
    isIP(name) === 0
      ? certificate.checkHost(name, { subject: 'never' }) === undefined
      : certificate.checkIP(name) === undefined,
  );
  if (unnamed.length > 0) return `the certificate does not name ${unnamed.join(', ')}`;
  if (!Buffer.isBuffer(keyPem)) return `the private key cannot be read (${keyPem})`;
  try {
    if (!certificate.checkPrivateKey(createPrivateKey(keyPem))) {
      return 'the private key does not belong to the certificate';
    }
  } catch {
    return 'the private key file holds no readable key';
  }
  return null;
}

export interface DemoCertificate {
  readonly certFile: string;
  readonly keyFile: string;
  /** Whether this start made the pair (the first start, or the kept one could not serve). */
  readonly made: boolean;
  /** Why the kept pair was not used; null when it was, or when there was none. */
  readonly problem: string | null;
}

/**
 * The demo's certificate and key in `tlsDir`: the kept pair when it serves, a new self-signed
 * pair (one year, EC P-256) naming `names` otherwise. The certificate is its own CA: the
 * printed commands trust the file itself, so there is nothing else to update.
 */
export async function ensureDemoCertificate(
  tlsDir: string,
  names: readonly string[],
  now = Date.now(),
): Promise<DemoCertificate> {
  const certFile = join(tlsDir, 'cert.pem');
  const keyFile = join(tlsDir, 'key.pem');
  const problem = keptCertificateProblem(certFile, keyFile, {
    names,
    now,
    marginMs: KEPT_CERTIFICATE_MARGIN_MS,
  });
  // No problem and a certificate: the kept pair serves (neither file: the first start).
  if (problem === null && existsSync(certFile)) {
    return { certFile, keyFile, made: false, problem: null };
  }
  mkdirSync(tlsDir, { recursive: true, mode: 0o700 });
  const { generate } = await import('selfsigned');
  const pems = await generate([{ name: 'commonName', value: 'localhost' }], {
    keyType: 'ec',
    curve: 'P-256',
    algorithm: 'sha256',
    notBeforeDate: new Date(now),
    notAfterDate: new Date(now + VALIDITY_MS),
    extensions: [
      {
        name: 'subjectAltName',
        altNames: names.map((name) =>
          isIP(name) === 0 ? { type: 2, value: name } : { type: 7, ip: name },
        ),
      },
    ],
  });
  // Whatever stood there goes (a directory in a file's place included); the key is written
  // first, so that a start killed in between leaves a key without its certificate, and the next
  // start makes the pair again.
  rmSync(certFile, { recursive: true, force: true });
  rmSync(keyFile, { recursive: true, force: true });
  writeFileSync(keyFile, pems.private, { mode: 0o600 });
  writeFileSync(certFile, pems.cert);
  return { certFile, keyFile, made: true, problem };
}
