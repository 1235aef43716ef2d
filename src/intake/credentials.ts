import type { Socket } from 'node:net';
import { TLSSocket } from 'node:tls';
import type { IdentityRegistry, NamedIdentity } from './identities.js';

/**
 * Who is calling the HTTPS intake: a bearer token (RFC 6750) or, with mutual TLS, the subject
 * CN of a client certificate that the configured CA verified. Tokens are never logged or
 * echoed; failures say what was wrong, not what was sent.
 */
export type Authentication =
  | { readonly ok: true; readonly identity: NamedIdentity; readonly via: 'token' | 'certificate' }
  | {
      readonly ok: false;
      readonly detail: string;
      /**
       * RFC 6750 §3.1's error code for the challenge: `invalid_token` when a token was presented
       * and refused, `invalid_request` when the request carries more than one credential, null
       * when it carries none.
       */
      readonly error: 'invalid_token' | 'invalid_request' | null;
    };

/**
 * RFC 6750's b64token allows only `A-Z a-z 0-9 - . _ ~ + /` and trailing `=`; any visible ASCII
 * character is taken here. A token is only ever compared as a digest, so nothing is gained by
 * the narrower syntax, and with it a token file holding `!` or `:` (which the configuration
 * takes) could never authenticate: every request was "not a Bearer token". A token that no
 * header can carry (a space inside, a control or non-ASCII character) is refused when the
 * identities are loaded (identities.ts).
 */
const BEARER = /^Bearer +([\x21-\x7e]+) *$/i;
export const BEARER_TOKEN = /^[\x21-\x7e]+$/;

/**
 * `authorization` is every Authorization header of the request, one entry each (Node's
 * `headersDistinct`), or a single value.
 */
export function authenticate(
  authorization: string | readonly string[] | undefined,
  socket: Socket,
  identities: IdentityRegistry,
  mutualTls: boolean,
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
    return authenticate(authorization[0], socket, identities, mutualTls);
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
  if (mutualTls && socket instanceof TLSSocket) return byCertificate(socket, identities);
  return { ok: false, detail: 'credentials are required: a bearer token', error: null };
}

function byCertificate(socket: TLSSocket, identities: IdentityRegistry): Authentication {
  const certificate = socket.getPeerCertificate();
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
  return { ok: true, identity, via: 'certificate' };
}
