/**
 * An MQTT connection error as the log and /readyz say it. Node's TLS errors carry the peer's
 * whole certificate (`cert`: its raw DER bytes, its public key, its fingerprints): logged as
 * they are, every failed attempt on a broker whose certificate does not match wrote kilobytes of
 * key material per line, and the message ("certificate has expired", "Hostname/IP does not match
 * certificate's altnames: …") did not say whose certificate it was.
 */

/** OpenSSL's verification codes Node puts on a TLS error, and its own name check's. */
const CERTIFICATE_CODES: ReadonlySet<string> = new Set([
  'ERR_TLS_CERT_ALTNAME_INVALID',
  'HOSTNAME_MISMATCH',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'INVALID_CA',
  'PATH_LENGTH_EXCEEDED',
  'INVALID_PURPOSE',
]);

/** True for an error of the broker's certificate (its check against mqtt.caFile, its name). */
export function isBrokerCertificateError(error: Error): boolean {
  const code = (error as { code?: unknown }).code;
  return typeof code === 'string' && (code.startsWith('CERT_') || CERTIFICATE_CODES.has(code));
}

/** The reason said for `error`: a certificate's failure names the broker's certificate. */
export function connectionErrorReason(error: Error): string {
  return isBrokerCertificateError(error)
    ? `the broker's TLS certificate: ${error.message} (checked against mqtt.caFile, or the system's CAs without it)`
    : error.message;
}

/**
 * `error` for the log's `err`: its type, message, stack and code, and none of the certificate
 * (or any other property) a TLS error carries.
 */
export function loggedConnectionError(error: Error): Error {
  const logged = new Error(error.message);
  if (error.stack !== undefined) logged.stack = error.stack;
  const code = (error as { code?: unknown }).code;
  if (typeof code === 'string') Object.assign(logged, { code });
  return logged;
}
