import { X509Certificate } from 'node:crypto';

/**
 * The HTTPS server certificate's validity, as the operator needs to see it while the daemon
 * runs: a certificate that expired (or is not valid yet) fails every client's TLS handshake,
 * while the intake itself listens as if nothing were wrong. `sluiced --check` shows the dates
 * before a start (check-summary.ts); /readyz, `sluicectl health`, the systemd status line and the
 * status page show them after, and after a reload (SIGHUP) the certificate it put in place. Each
 * shows certificateVerdict's answer, so that no two of them can judge the same certificate
 * differently.
 */

/** How long before its end a certificate's detail says when it expires. */
const EXPIRY_NOTICE_MS = 30 * 24 * 3_600_000;

export interface ServerCertificate {
  /** Its CN, or its whole subject when it has none. */
  readonly name: string;
  readonly validFrom: number;
  readonly validTo: number;
}

export interface CertificateVerdict {
  readonly ok: boolean;
  /**
   * The verdict in a word: `expiring` is still `ok` (clients accept it), within
   * EXPIRY_NOTICE_MS of its end; the status page colours it as a warning.
   */
  readonly state: 'valid' | 'expiring' | 'expired' | 'not yet valid';
  readonly detail: string;
}

/** The first certificate of a PEM chain (the server's own); null when it cannot be read. */
export function serverCertificate(pem: Buffer | string): ServerCertificate | null {
  let certificate: X509Certificate;
  try {
    certificate = new X509Certificate(pem);
  } catch {
    return null;
  }
  const validFrom = Date.parse(certificate.validFrom);
  const validTo = Date.parse(certificate.validTo);
  if (Number.isNaN(validFrom) || Number.isNaN(validTo)) return null;
  return { name: certificateName(certificate), validFrom, validTo };
}

/** A certificate's CN, or its whole subject when it has none. */
export function certificateName(certificate: X509Certificate): string {
  return (
    certificate.subject
      .split('\n')
      .find((part) => part.startsWith('CN='))
      ?.slice(3) ?? certificate.subject.replace(/\n/g, ', ')
  );
}

/** Whether clients can accept the certificate at `now` (wall-clock ms), said for an operator. */
export function certificateVerdict(
  certificate: ServerCertificate,
  now: number,
): CertificateVerdict {
  const { name, validFrom, validTo } = certificate;
  const iso = (ms: number): string => new Date(ms).toISOString();
  if (now > validTo) {
    return {
      ok: false,
      state: 'expired',
      detail: `its certificate (CN=${name}) expired on ${iso(validTo)}: clients' TLS handshakes fail; replace https.certFile and https.keyFile, then reload sluiced (systemctl reload sluiced)`,
    };
  }
  if (now < validFrom) {
    return {
      ok: false,
      state: 'not yet valid',
      detail: `its certificate (CN=${name}) is not valid before ${iso(validFrom)}: clients' TLS handshakes fail (is the gateway clock right?)`,
    };
  }
  return validTo - now <= EXPIRY_NOTICE_MS
    ? {
        ok: true,
        state: 'expiring',
        detail: `certificate CN=${name} expires on ${iso(validTo)} (in ${timeLeft(validTo - now)}): replace it before then`,
      }
    : {
        ok: true,
        state: 'valid',
        detail: `certificate CN=${name} valid until ${iso(validTo).slice(0, 10)}`,
      };
}

/**
 * The time left before expiry, rounded down, in the largest unit that is at least one: whole
 * days said "in 0 days" of a certificate with hours left, and "in 1 days".
 */
function timeLeft(ms: number): string {
  const count = (n: number, unit: string): string => `${String(n)} ${unit}${n === 1 ? '' : 's'}`;
  const hour = 3_600_000;
  if (ms >= 24 * hour) return count(Math.floor(ms / (24 * hour)), 'day');
  if (ms >= hour) return count(Math.floor(ms / hour), 'hour');
  return count(Math.max(1, Math.floor(ms / 60_000)), 'minute');
}
