import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { SluiceConfig } from '../config/config.js';
import type { Identity } from '../core/pipeline.js';

/**
 * What a bearer token may hold: any visible ASCII character, as the Authorization header's
 * Bearer credential is read (credentials.ts). A token file holding anything else could never
 * authenticate, and is refused when the identities are loaded.
 */
const BEARER_TOKEN = /^[\x21-\x7e]+$/;

/** A client identity: keys are scoped to it, and it may command only its devices. */
export interface NamedIdentity extends Identity {
  readonly name: string;
}

export function sha256(text: string): Buffer {
  return createHash('sha256').update(text, 'utf8').digest();
}

/**
 * The identities of the configuration, found by bearer token (compared as SHA-256 digests in
 * constant time), by client certificate CN, or by name (the MQTT intake's identity).
 */
export class IdentityRegistry {
  private readonly byName = new Map<string, NamedIdentity>();
  private readonly tokens: { digest: Buffer; identity: NamedIdentity }[] = [];
  private readonly certificates = new Map<string, NamedIdentity>();

  constructor(identities: SluiceConfig['identities']) {
    for (const [name, c] of Object.entries(identities)) {
      const identity: NamedIdentity = {
        name,
        scope: name,
        devices: c.devices.includes('*') ? 'all' : new Set(c.devices),
      };
      this.byName.set(name, identity);
      if (c.tokenSha256 !== undefined) {
        this.addToken(Buffer.from(c.tokenSha256, 'hex'), identity, `${name}.tokenSha256`);
      }
      if (c.tokenFile !== undefined) {
        const token = readFileSync(c.tokenFile, 'utf8').trim();
        if (token.length === 0)
          throw new Error(`identities.${name}.tokenFile: ${c.tokenFile} is empty`);
        if (!BEARER_TOKEN.test(token)) {
          throw new Error(
            `identities.${name}.tokenFile: ${c.tokenFile} holds a space, a control character or a non-ASCII character inside the token, which no Authorization header can carry`,
          );
        }
        this.addToken(sha256(token), identity, `${name}.tokenFile`);
      }
      if (c.certificateCn !== undefined) {
        const other = this.certificates.get(c.certificateCn);
        if (other !== undefined && other !== identity) {
          throw new Error(
            `identities.${name}.certificateCn: "${c.certificateCn}" is also identities.${other.name}'s; a certificate must name one identity`,
          );
        }
        this.certificates.set(c.certificateCn, identity);
      }
    }
  }

  /**
   * A token names one identity. Two with the same token (a digest copied, two token files
   * with the same content) would make every request with it act as the one listed last, with
   * that one's devices and keys, and the other identity unreachable: refused at start.
   */
  private addToken(digest: Buffer, identity: NamedIdentity, what: string): void {
    const other = this.tokens.find((t) => t.digest.equals(digest));
    if (other !== undefined && other.identity !== identity) {
      throw new Error(
        `identities.${what}: the same token as identities.${other.identity.name}'s; a token must name one identity`,
      );
    }
    this.tokens.push({ digest, identity });
  }

  get(name: string): NamedIdentity | undefined {
    return this.byName.get(name);
  }

  byToken(token: string): NamedIdentity | undefined {
    const digest = sha256(token);
    let found: NamedIdentity | undefined;
    // Every digest is compared, so the time taken says nothing about which one matched.
    for (const t of this.tokens) {
      if (timingSafeEqual(t.digest, digest)) found = t.identity;
    }
    return found;
  }

  byCertificateCn(cn: string): NamedIdentity | undefined {
    return this.certificates.get(cn);
  }

  mayCommand(identity: Identity, device: string): boolean {
    return identity.devices === 'all' || identity.devices.has(device);
  }
}
