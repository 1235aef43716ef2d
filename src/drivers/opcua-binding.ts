import { X509Certificate } from 'node:crypto';
import { isIP } from 'node:net';
import { mappedIpv4 } from './mapped-ipv4.js';

/**
 * Whether a server certificate belongs to the endpoint it was presented at (OPC 10000-4, 6.1.3:
 * the host name and the application URI checks). The trust store alone does not say it: it is
 * shared by every PLC, and a CA in trusted/certs/ trusts every certificate it issued (an HMI's,
 * another PLC's). Without these checks, PLC B answering at PLC A's address (a replacement, an
 * address reassigned, twin lines running the same namespace) took PLC A's commands.
 * node-opcua-client makes neither check, and node-opcua-pki never answers
 * BadCertificateHostNameInvalid.
 */

/** A PLC's settings for the certificate of its server (plcs.<name>, docs/configuration.md). */
export interface ServerBinding {
  /** The PLC's name in the site file: the messages name its settings. */
  readonly plc: string;
  readonly endpointUrl: string;
  /**
   * `serverCertificateSha256`: the SHA-256 of the one certificate the PLC's server may present
   * (any spelling: upper or lower case, pairs separated by ":" or not). Set, it replaces the
   * trust store's decision and the host-name check by this exact match; the validity period and
   * the application URI are still checked.
   */
  readonly serverCertificateSha256?: string | undefined;
  /**
   * `acceptHostNameMismatch`: the certificate need not name the endpoint URL's host. Weakens
   * the binding: any certificate the store trusts then speaks for this address.
   */
  readonly acceptHostNameMismatch?: boolean | undefined;
}

/** The SHA-256 of a certificate as the settings and messages spell it: 64 lower-case hex digits. */
export function sha256Spelling(value: string): string {
  return value.replaceAll(':', '').toLowerCase();
}

/**
 * Why the first certificate of `chain` is not the one pinned (`serverCertificateSha256`), or null
 * when it is.
 */
export function pinMismatch(chain: Buffer | Buffer[], binding: ServerBinding): string | null {
  const pinned = sha256Spelling(binding.serverCertificateSha256 ?? '');
  const certificate = leaf(chain);
  if (certificate === null) {
    return `it cannot be read, so it cannot be compared with the certificate pinned for PLC ${binding.plc} (plcs.${binding.plc}.serverCertificateSha256)`;
  }
  const sha256 = sha256Spelling(certificate.fingerprint256);
  if (sha256 === pinned) return null;
  return `it is not the certificate pinned for PLC ${binding.plc} (plcs.${binding.plc}.serverCertificateSha256 ${pinned}; this one's SHA-256 is ${sha256}): another server answers at this address, or the PLC's certificate was replaced. If the PLC was given a new certificate, pin that one`;
}

/**
 * Why the first certificate of `chain` does not name the host of `binding`'s endpoint URL (a
 * subjectAltName dNSName, or iPAddress for an address), or null when it does. Host names compare
 * in any case and without a root dot; no wildcard is taken, nor the subject's CN (an OPC UA
 * application certificate names its hosts in subjectAltName: OPC 10000-6, 6.2.2). Addresses
 * compare by their octets (RFC 5280, 4.2.1.6), an IPv4 address and its IPv4-mapped IPv6 form
 * (::ffff:a.b.c.d, RFC 4291 2.5.5.2) as the one host they name: a connection to either reaches
 * the same IPv4 host, so a certificate naming one names the other.
 */
export function hostMismatch(chain: Buffer | Buffer[], binding: ServerBinding): string | null {
  const host = endpointHost(binding.endpointUrl);
  const certificate = leaf(chain);
  if (host === null)
    return `the endpoint URL ${binding.endpointUrl} names no host to check it against`;
  if (certificate === null) return `it cannot be read, so its host names cannot be checked`;
  const named =
    isIP(host) === 0
      ? certificate.checkHost(host, { subject: 'never', wildcards: false })
      : addressSpellings(host)
          .map((address) => certificate.checkIP(address))
          .find((found) => found !== undefined);
  if (named !== undefined) return null;
  const names = subjectAltNames(certificate);
  const hosts = [...names.dns, ...names.ip];
  return `it does not name ${host}, the host of the endpoint URL (it names ${hosts.length === 0 ? 'no host' : hosts.join(', ')}): another server may be answering at this address (a PLC replaced, an address reassigned). Give the PLC a certificate that names ${host}, connect to it by a name its certificate has, or pin its certificate (plcs.${binding.plc}.serverCertificateSha256)`;
}

/**
 * Why the first certificate of `chain` does not name `applicationUri` (the server's, from the
 * description of the endpoint connected to) in its subjectAltName URI, or null when it does:
 * the certificate was then made for another application than the server that presents it.
 * `applicationUri` undefined: the server did not describe the endpoint (refused too: nothing to
 * check the certificate against).
 */
export function applicationUriMismatch(
  chain: Buffer | Buffer[],
  applicationUri: string | undefined,
): string | null {
  const certificate = leaf(chain);
  if (certificate === null) return 'it cannot be read, so its application URI cannot be checked';
  if (applicationUri === undefined || applicationUri === '') {
    return 'the server did not describe the endpoint with its application URI, so the certificate cannot be checked against it';
  }
  const uris = subjectAltNames(certificate).uri;
  if (uris.includes(applicationUri)) return null;
  return `it was made for the application ${uris.length === 0 ? '(none named)' : uris.join(', ')}, not for ${applicationUri}, the application URI of the server presenting it (its endpoint description)`;
}

/** The host of an OPC UA endpoint URL (an IPv6 address without its brackets, no root dot). */
function endpointHost(endpointUrl: string): string | null {
  try {
    // opc.tcp: is not a special scheme: the host is kept as written, lower-cased.
    const host = new URL(endpointUrl).hostname.replace(/^\[(.*)\]$/, '$1').replace(/\.$/, '');
    return host === '' ? null : host;
  } catch {
    return null;
  }
}

/**
 * The spellings of IP address `address` whose octets a certificate's iPAddress may hold: the
 * address itself, and for an IPv4 address its IPv4-mapped IPv6 form, for an IPv4-mapped one its
 * IPv4 address (4 octets and 16, the same host).
 */
function addressSpellings(address: string): string[] {
  if (isIP(address) === 4) return [address, `::ffff:${address}`];
  const ipv4 = mappedIpv4(address);
  return ipv4 === null ? [address] : [address, ipv4];
}

/** The first certificate of a chain as the server sent it (its own), or null if unreadable. */
function leaf(chain: Buffer | Buffer[]): X509Certificate | null {
  const der = Array.isArray(chain) ? chain[0] : chain;
  if (der === undefined) return null;
  try {
    // A chain sent as one buffer (the certificates one after the other) reads as its first.
    return new X509Certificate(der);
  } catch {
    return null;
  }
}

/**
 * A certificate's subjectAltName entries by kind, as Node.js writes them ("DNS:plc-7, IP
 * Address:10.0.0.21, URI:urn:plc-7:server"; an entry holding a "," or a quote is written as a
 * JSON string).
 */
function subjectAltNames(certificate: X509Certificate): {
  dns: string[];
  ip: string[];
  uri: string[];
} {
  const names = { dns: [] as string[], ip: [] as string[], uri: [] as string[] };
  const text = certificate.subjectAltName ?? '';
  for (const m of text.matchAll(/(?:^|, )([^:,]+):("(?:[^"\\]|\\.)*"|[^,]*)/g)) {
    const raw = m[2] ?? '';
    let value = raw;
    if (raw.startsWith('"')) {
      try {
        value = JSON.parse(raw) as string;
      } catch {
        value = raw;
      }
    }
    if (m[1] === 'DNS') names.dns.push(value);
    else if (m[1] === 'IP Address') names.ip.push(value);
    else if (m[1] === 'URI') names.uri.push(value);
  }
  return names;
}
