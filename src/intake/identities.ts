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

/** What a reload did with one identity's token file (IdentityRegistry.reloadTokenFiles). */
export type TokenFileReload =
  | {
      readonly identity: string;
      readonly file: string;
      /** Read and checked: in use (replaced: the token before it is refused from now on). */
      readonly outcome: 'replaced' | 'unchanged';
    }
  | {
      readonly identity: string;
      readonly file: string;
      /** Not usable: the token in use before stays accepted. */
      readonly outcome: 'kept';
      /** Why, naming the file; never the token. */
      readonly error: string;
    };

interface TokenEntry {
  readonly digest: Buffer;
  readonly identity: NamedIdentity;
  /** The token file it was read from; undefined for a configured tokenSha256. */
  readonly file: string | undefined;
}

/**
 * The identities of the configuration, found by bearer token (compared as SHA-256 digests in
 * constant time), by client certificate CN, or by name (the MQTT intake's identity). The
 * identities are fixed at start; the tokens of token files are replaced by a reload
 * (reloadTokenFiles).
 */
export class IdentityRegistry {
  private readonly byName = new Map<string, NamedIdentity>();
  /** Replaced whole by a reload, never changed in place: a request sees one set or the other. */
  private tokens: readonly TokenEntry[] = [];
  private readonly certificates = new Map<string, NamedIdentity>();
  /** Told after a reload that replaced a token (onTokensReplaced). */
  private readonly replacedListeners = new Set<() => void>();

  constructor(identities: SluiceConfig['identities']) {
    const tokens: TokenEntry[] = [];
    for (const [name, c] of Object.entries(identities)) {
      const identity: NamedIdentity = {
        name,
        scope: name,
        devices: c.devices.includes('*') ? 'all' : new Set(c.devices),
      };
      this.byName.set(name, identity);
      if (c.tokenSha256 !== undefined) {
        const entry = { digest: Buffer.from(c.tokenSha256, 'hex'), identity, file: undefined };
        throwOnClash(tokens, entry);
        tokens.push(entry);
      }
      if (c.tokenFile !== undefined) {
        const entry = { digest: readTokenFile(name, c.tokenFile), identity, file: c.tokenFile };
        throwOnClash(tokens, entry);
        tokens.push(entry);
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
    this.tokens = tokens;
  }

  /**
   * The reload (SIGHUP): the token files for which `reread` holds are read again, with the
   * start's checks, and their tokens replace those read before, all at once. A file that cannot
   * be used (unreadable, empty, a token no header can carry, another identity's token) keeps the
   * token read before: a bad file never leaves an identity's clients without the token they
   * hold. Synchronous: no request is judged halfway through.
   */
  reloadTokenFiles(reread: (file: string) => boolean): TokenFileReload[] {
    const next = [...this.tokens];
    const outcomes = new Map<number, TokenFileReload>();
    next.forEach((entry, i) => {
      const file = entry.file;
      if (file === undefined || !reread(file)) return;
      const identity = entry.identity.name;
      try {
        const digest = readTokenFile(identity, file);
        if (digest.equals(entry.digest)) {
          outcomes.set(i, { identity, file, outcome: 'unchanged' });
          return;
        }
        next[i] = { ...entry, digest };
        outcomes.set(i, { identity, file, outcome: 'replaced' });
      } catch (error) {
        outcomes.set(i, { identity, file, outcome: 'kept', error: messageOf(error) });
      }
    });
    // A new token that is another identity's (as before or as read now) is refused as the
    // start refuses it: its file keeps the token before. Undone one at a time until none
    // clashes; the tokens before did not clash, so this ends.
    for (
      let clash = findClash(next, this.tokens);
      clash !== null;
      clash = findClash(next, this.tokens)
    ) {
      const i = clash.index;
      const before = this.tokens[i];
      const outcome = outcomes.get(i);
      if (before === undefined || outcome === undefined) break;
      next[i] = before;
      outcomes.set(i, {
        identity: outcome.identity,
        file: outcome.file,
        outcome: 'kept',
        error: `identities.${outcome.identity}.tokenFile: ${outcome.file} holds the same token as identities.${clash.other}'s; a token must name one identity`,
      });
    }
    this.tokens = next;
    const result = [...outcomes.values()];
    if (result.some((r) => r.outcome === 'replaced')) {
      for (const listener of this.replacedListeners) listener();
    }
    return result;
  }

  /**
   * `listener` is called, synchronously, after each reload that replaced a token: what was
   * started with a token now refused (a status page session) ends there. Returns the
   * unsubscription.
   */
  onTokensReplaced(listener: () => void): () => void {
    this.replacedListeners.add(listener);
    return () => {
      this.replacedListeners.delete(listener);
    };
  }

  /**
   * The token whose SHA-256 is `digest` is one of the identity's now: false once a reload has
   * replaced it (a status page session started with it ends then).
   */
  holdsToken(identity: string, digest: Buffer): boolean {
    return this.tokens.some((t) => t.identity.name === identity && t.digest.equals(digest));
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

/**
 * A token file's token, as its digest: trimmed, not empty, and carriable by an Authorization
 * header. Errors name the field and the file, never the content.
 */
function readTokenFile(name: string, file: string): Buffer {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    throw new Error(`identities.${name}.tokenFile: ${file} cannot be read: ${messageOf(error)}`, {
      cause: error,
    });
  }
  const token = text.trim();
  if (token.length === 0) throw new Error(`identities.${name}.tokenFile: ${file} is empty`);
  if (!BEARER_TOKEN.test(token)) {
    throw new Error(
      `identities.${name}.tokenFile: ${file} holds a space, a control character or a non-ASCII character inside the token, which no Authorization header can carry`,
    );
  }
  return sha256(token);
}

/**
 * A token names one identity. Two with the same token (a digest copied, two token files
 * with the same content) would make every request with it act as the one listed last, with
 * that one's devices and keys, and the other identity unreachable: refused at start.
 */
function throwOnClash(tokens: readonly TokenEntry[], entry: TokenEntry): void {
  const other = tokens.find((t) => t.digest.equals(entry.digest));
  if (other !== undefined && other.identity !== entry.identity) {
    const what = entry.file === undefined ? 'tokenSha256' : 'tokenFile';
    throw new Error(
      `identities.${entry.identity.name}.${what}: the same token as identities.${other.identity.name}'s; a token must name one identity`,
    );
  }
}

/**
 * The first token of `tokens` changed from `before` (same order) that another identity's token
 * equals. Tokens unchanged did not clash before, so any clash has a changed one in it.
 */
function findClash(
  tokens: readonly TokenEntry[],
  before: readonly TokenEntry[],
): { index: number; other: string } | null {
  for (let i = 0; i < tokens.length; i++) {
    const entry = tokens[i];
    if (entry === undefined || entry === before[i]) continue;
    const other = tokens.find(
      (t) => t.identity !== entry.identity && t.digest.equals(entry.digest),
    );
    if (other !== undefined) return { index: i, other: other.identity.name };
  }
  return null;
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
