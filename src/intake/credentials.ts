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
      /** A token was presented and refused: RFC 6750 §3.1 `error="invalid_token"`. */
      readonly invalidToken: boolean;
    };

const BEARER = /^Bearer +([A-Za-z0-9\-._~+/]+=*) *$/i;

export function authenticate(
  authorization: string | undefined,
  socket: Socket,
  identities: IdentityRegistry,
  mutualTls: boolean,
): Authentication {
  // An explicit credential decides: a wrong token is refused even when a certificate would
  // have passed, so that a misconfigured client learns about it instead of acting as another.
  if (authorization !== undefined) {
    const match = BEARER.exec(authorization);
    const token = match?.[1];
    if (token === undefined) {
      return {
        ok: false,
        detail: 'the Authorization header is not a Bearer token',
        invalidToken: true,
      };
    }
    const identity = identities.byToken(token);
    if (identity === undefined) {
      return { ok: false, detail: 'the bearer token is not valid', invalidToken: true };
    }
    return { ok: true, identity, via: 'token' };
  }
  if (mutualTls && socket instanceof TLSSocket) return byCertificate(socket, identities);
  return { ok: false, detail: 'credentials are required: a bearer token', invalidToken: false };
}

function byCertificate(socket: TLSSocket, identities: IdentityRegistry): Authentication {
  const certificate = socket.getPeerCertificate();
  // An empty object means the client sent no certificate.
  if (Object.keys(certificate).length === 0) {
    return {
      ok: false,
      detail: 'credentials are required: a bearer token or a client certificate',
      invalidToken: false,
    };
  }
  if (!socket.authorized) {
    // requestCert with rejectUnauthorized: false lets the handshake finish so that the refusal
    // is a 401 with a reason (expired, unknown CA) rather than a bare TLS alert.
    const reason = String(socket.authorizationError);
    return {
      ok: false,
      detail: `the client certificate was not accepted: ${reason}`,
      invalidToken: false,
    };
  }
  const cn: unknown = (certificate.subject as Record<string, unknown> | undefined)?.CN;
  if (typeof cn !== 'string') {
    return {
      ok: false,
      detail: 'the client certificate has no single subject CN',
      invalidToken: false,
    };
  }
  const identity = identities.byCertificateCn(cn);
  if (identity === undefined) {
    return {
      ok: false,
      detail: 'the client certificate is not mapped to an identity',
      invalidToken: false,
    };
  }
  return { ok: true, identity, via: 'certificate' };
}
