import type { Socket } from 'node:net';
import { TLSSocket, type DetailedPeerCertificate } from 'node:tls';
import type { IdentityRegistry, NamedIdentity } from './identities.js';

/**
 * Who is calling the HTTPS intake: a bearer token (RFC 6750) or, with mutual TLS, the subject
 * CN of a client certificate that the configured CA verified and that is within its validity at
 * the request. Tokens are never logged or echoed; failures say what was wrong, not what was sent.
 */
export type Authentication =
  | { readonly ok: true; readonly identity: NamedIdentity; readonly via: 'token' }
  | {
      readonly ok: true;
      readonly identity: NamedIdentity;
      readonly via: 'certificate';
      /**
       * The end of the credential (epoch ms): the earliest notAfter of the client certificate
       * and its chain. Whatever the request starts on it (a status page session) ends then too.
       */
      readonly notAfter: number;
    }
  | {
      readonly ok: false;
      readonly detail: string;
      /**
       * RFC 6750 §3.1's error code for the challenge: `invalid_token` when a token was presented
       * and refused, `invalid_request` when the request carries more than one credential, null
       * when it carries none.
       */
      readonly error: 'invalid_token' | 'invalid_request' | null;
      /**
       * Set when a certificate the handshake verified is outside its validity now (or its
       * issuer is): the client holds a session or connection made while it was valid.
       */
      readonly lapsed?: LapsedCertificate;
    };

export interface LapsedCertificate {
  /** The client certificate's subject CN, when it has one. */
  readonly cn: string | undefined;
  /** The end of the validity of the certificate that lapsed (the client's or an issuer's). */
  readonly validTo: string;
  /** The TLS session was resumed from a ticket, not verified by this connection's handshake. */
  readonly resumed: boolean;
}

/**
 * RFC 6750's b64token allows only `A-Z a-z 0-9 - . _ ~ + /` and trailing `=`; any visible ASCII
 * character is taken here. A token is only ever compared as a digest, so nothing is gained by
 * the narrower syntax, and with it a token file holding `!` or `:` (which the configuration
 * takes) could never authenticate: every request was "not a Bearer token". A token that no
 * header can carry (a space inside, a control or non-ASCII character) is refused when the
 * identities are loaded (identities.ts).
 */
const BEARER = /^Bearer +([\x21-\x7e]+) *$/i;

/**
 * `authorization` is every Authorization header of the request, one entry each (Node's
 * `headersDistinct`), or a single value; `now` is the gateway's wall clock (epoch ms), against
 * which a client certificate's validity is checked.
 */
export function authenticate(
  authorization: string | readonly string[] | undefined,
  socket: Socket,
  identities: IdentityRegistry,
  mutualTls: boolean,
  now: number,
): Authentication {
  // Node keeps only the first of repeated Authorization headers: a request with two tokens
  // would act as whichever came first, while a proxy or an audit log in front of the gateway
  // may have read the other one. Which identity commands a valve must not be ambiguous.
  if (typeof authorization !== 'string' && authorization !== undefined) {
    if (authorization.length > 1) {
      return {
        ok: false,
        detail: `the request has ${String(authorization.length)} Authorization headers; send exactly one`,
        error: 'invalid_request',
      };
    }
    return authenticate(authorization[0], socket, identities, mutualTls, now);
  }
  // An explicit credential decides: a wrong token is refused even when a certificate would
  // have passed, so that a misconfigured client learns about it instead of acting as another.
  if (authorization !== undefined) {
    const match = BEARER.exec(authorization);
    const token = match?.[1];
    if (token === undefined) {
      return {
        ok: false,
        detail: 'the Authorization header is not a Bearer token',
        error: 'invalid_token',
      };
    }
    const identity = identities.byToken(token);
    if (identity === undefined) {
      return { ok: false, detail: 'the bearer token is not valid', error: 'invalid_token' };
    }
    return { ok: true, identity, via: 'token' };
  }
  if (mutualTls && socket instanceof TLSSocket) return byCertificate(socket, identities, now);
  return { ok: false, detail: 'credentials are required: a bearer token', error: null };
}

function byCertificate(
  socket: TLSSocket,
  identities: IdentityRegistry,
  now: number,
): Authentication {
  const certificate = socket.getPeerCertificate(true);
  // An empty object means the client sent no certificate.
  if (Object.keys(certificate).length === 0) {
    return {
      ok: false,
      detail: 'credentials are required: a bearer token or a client certificate',
      error: null,
    };
  }
  if (!socket.authorized) {
    // requestCert with rejectUnauthorized: false lets the handshake finish so that the refusal
    // is a 401 with a reason (expired, unknown CA) rather than a bare TLS alert.
    const reason = String(socket.authorizationError);
    return {
      ok: false,
      detail: `the client certificate was not accepted: ${reason}`,
      error: null,
    };
  }
  const cn: unknown = (certificate.subject as Record<string, unknown> | undefined)?.CN;
  const lapsed = outsideValidity(certificate, now);
  if (lapsed !== null) {
    return {
      ok: false,
      detail: lapsed.detail,
      error: null,
      lapsed: {
        cn: typeof cn === 'string' ? cn : undefined,
        validTo: lapsed.validTo,
        resumed: socket.isSessionReused(),
      },
    };
  }
  if (typeof cn !== 'string') {
    return {
      ok: false,
      detail: 'the client certificate has no single subject CN',
      error: null,
    };
  }
  const identity = identities.byCertificateCn(cn);
  if (identity === undefined) {
    return {
      ok: false,
      detail: 'the client certificate is not mapped to an identity',
      error: null,
    };
  }
  return { ok: true, identity, via: 'certificate', notAfter: chainEnd(certificate) };
}

/** The earliest notAfter (epoch ms) of the certificate and its chain: when it stops passing. */
function chainEnd(certificate: DetailedPeerCertificate): number {
  const seen = new Set<string>();
  let end = Infinity;
  let current: DetailedPeerCertificate | undefined = certificate;
  while (current !== undefined && !seen.has(current.fingerprint256)) {
    seen.add(current.fingerprint256);
    // Parsed already by outsideValidity, which refuses a date that does not parse.
    end = Math.min(end, Date.parse(current.valid_to));
    current = (current as { issuerCertificate?: DetailedPeerCertificate }).issuerCertificate;
  }
  return end;
}

/**
 * Whether the client certificate, or a certificate of its chain, is outside its validity at
 * `now`. `socket.authorized` is OpenSSL's verdict from the full handshake, and it outlives the
 * certificate: a TLS 1.3 session resumed from a ticket (valid for Node's session timeout, 300 s)
 * is not verified again and carries that verdict, and so does a connection kept alive for as
 * long as its client keeps using it. A client could go on acting as an identity after its
 * certificate expired. Checked at every request, this covers both; turning resumption off would
 * leave the kept-alive connection (and cost every client a full handshake per connection).
 */
function outsideValidity(
  certificate: DetailedPeerCertificate,
  now: number,
): { detail: string; validTo: string } | null {
  const seen = new Set<string>();
  let current: DetailedPeerCertificate | undefined = certificate;
  for (let depth = 0; current !== undefined; depth++) {
    // A self-signed root is its own issuer; the fingerprint ends the walk.
    if (seen.has(current.fingerprint256)) break;
    seen.add(current.fingerprint256);
    const whose =
      depth === 0
        ? 'the client certificate'
        : `the client certificate's issuer (CN=${String(subjectCn(current))})`;
    const from = Date.parse(current.valid_from);
    const to = Date.parse(current.valid_to);
    // As OpenSSL judges it at the handshake (X509_cmp_time on whole seconds): valid from
    // notBefore, expired from notAfter on; so a full handshake and a resumed session agree.
    const again =
      'it was verified when this TLS session was made, and is checked at every request: present a valid certificate';
    // A date Node gives that does not parse proves nothing: refused, as OpenSSL would.
    if (Number.isNaN(from) || Number.isNaN(to)) {
      return {
        detail: `${whose} has validity dates that cannot be read (${current.valid_from} – ${current.valid_to})`,
        validTo: current.valid_to,
      };
    }
    if (now >= to) {
      return {
        detail: `${whose} expired at ${new Date(to).toISOString()}; ${again}`,
        validTo: new Date(to).toISOString(),
      };
    }
    if (now < from) {
      return {
        detail: `${whose} is not valid before ${new Date(from).toISOString()}; ${again}`,
        validTo: new Date(to).toISOString(),
      };
    }
    // Absent past the last certificate Node could find, although @types/node types it as
    // always present.
    current = (current as { issuerCertificate?: DetailedPeerCertificate }).issuerCertificate;
  }
  return null;
}

function subjectCn(certificate: DetailedPeerCertificate): unknown {
  return (certificate.subject as Record<string, unknown> | undefined)?.CN;
}
