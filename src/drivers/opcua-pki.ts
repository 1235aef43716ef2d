import { X509Certificate } from 'node:crypto';
import { readFileSync, readdirSync, rmSync, statSync, type Dirent } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { OPCUACertificateManager, StatusCodes, type StatusCode } from 'node-opcua';
import type { Logger } from '../core/logger.js';
import { hostMismatch, pinMismatch, type ServerBinding } from './opcua-binding.js';

/**
 * The gateway's OPC UA client PKI: its own certificate and private key, and the trusted and
 * rejected server certificates, in one folder under the state directory, shared by every
 * endpoint of the process.
 */
export class OpcuaClientPki {
  readonly manager: OPCUACertificateManager;
  readonly applicationUri = `urn:${hostname()}:sluice`;
  readonly dir: string;
  private readonly log: Logger;
  /** The store's checks, one at a time (`decide`). */
  private checks: Promise<unknown> = Promise.resolve();
  /** The folders' certificates as the store last read them (`follow`); null: not read yet. */
  private seen: string | null = null;
  /**
   * The folders the trust of a server certificate depends on (TRUST_FOLDERS) at the last look
   * (`pollTrust`): their files' names, sizes, times; null: none yet.
   */
  private trustStamp: string | null = null;
  /**
   * What that look saw of the folders themselves and of the files it listed, to tell at the
   * next look whether anything may have changed without listing the folders again
   * (`trustUnchanged`); null: list them.
   */
  private trustLook: TrustLook | null = null;
  /** trusted/certs/'s certificates then (each file and its thumbprint). */
  private trustedNow: readonly TrustedFile[] = [];
  /** The revocation lists' files then (trusted/crl/, issuers/crl/), one stamp line each. */
  private crlsNow: readonly string[] = [];
  /** Bumped whenever one of TRUST_FOLDERS is found changed. */
  private trustRevision = 0;
  private readonly trustListeners = new Set<() => void>();
  private trustTimer: NodeJS.Timeout | null = null;

  constructor(options: {
    readonly dir: string;
    /**
     * Trust a server certificate never seen before. Only for the demo against the bundled
     * simulators: in a plant, an operator moves the server's certificate from `rejected/` to
     * `trusted/` instead.
     */
    readonly acceptUnknownCertificates: boolean;
    readonly logger: Logger;
  }) {
    // node-opcua-pki serialises changes to the store with lock directories (the store's
    // `mutex.lock`, and one per certificate being created, `own/certs/*.mutex.lock`) that a
    // killed process leaves behind; the next process then waits minutes for them to look
    // stale, or for ever: a gateway killed while creating its certificate would not reach any
    // OPC UA PLC after its restart. This process is the folder's only user (one daemon per
    // state directory), so locks found before the store is first used are stale.
    for (const lock of staleLocks(options.dir)) {
      rmSync(lock, { recursive: true, force: true });
      options.logger.warn({ lock }, 'removed a stale OPC UA PKI lock left by a killed process');
    }
    this.dir = options.dir;
    this.log = options.logger;
    this.manager = new OPCUACertificateManager({
      rootFolder: options.dir,
      automaticallyAcceptUnknownCertificate: options.acceptUnknownCertificates,
    });
  }

  /**
   * The revision of the trust folders (TRUST_FOLDERS): bumped whenever their files are not what
   * they were at the last look, and `watchTrust`'s listeners told. Cheap (the folders listed,
   * their files' sizes and times; certificates read only after a change), so that it is looked at
   * before every request of every session and every TRUST_POLL_MS: a certificate an operator
   * removes from trusted/certs/, or revokes with a revocation list put in trusted/crl/ or
   * issuers/crl/, must stop the gateway talking to that server at once, not at its next
   * connection. node-opcua-pki's own folder watchers are not relied on: where the machine's
   * inotify instances are used up they fail without a word (see `follow`), and even where they
   * run, a revocation list written over in place (a CA's newer list under the same name) is not
   * read again (node-opcua-pki 6.22 ignores a change to a file of a CRL folder).
   *
   * The folders are listed again only when one of them, or one of the files listed last, is not
   * what it was (`trustUnchanged`): a file added to a folder, removed or renamed changes the
   * folder's own times, and a file written over in place its own. Listed at every look, the four
   * folders cost each read and write of every session four directory reads (a look took 0.2 ms
   * on a loaded two-core machine, most of it the listings), some twenty times per command (its
   * readbacks) and once a second per idle device; looked at this way, a stat of each folder and
   * of each file.
   */
  pollTrust(): number {
    if (this.trustLook !== null && trustUnchanged(this.trustLook)) return this.trustRevision;
    // Before the folders are listed: what changes while they are, the next look sees.
    const lookedAt = Date.now();
    const folders = TRUST_FOLDERS.map((f) => pathStamp(join(this.dir, f)));
    const listed = TRUST_FOLDERS.map((f) => folderPaths(join(this.dir, f), !f.endsWith('certs')));
    const stamp = listed.map((paths) => paths.map((p) => p.line).join('\n')).join('\n\n');
    this.trustLook = trustLook([...folders, ...listed.flat()], lookedAt);
    if (stamp !== this.trustStamp) {
      const first = this.trustStamp === null;
      this.trustStamp = stamp;
      this.trustedNow = folderCertificates(join(this.dir, 'trusted', 'certs'));
      this.crlsNow = TRUST_FOLDERS.filter((f) => f.endsWith('crl'))
        .flatMap((f) => folderStamp(join(this.dir, f), true).split('\n'))
        .filter((line) => line !== '');
      if (!first) {
        this.trustRevision++;
        for (const listener of this.trustListeners) listener();
      }
    }
    return this.trustRevision;
  }

  /** trusted/certs/'s certificates at the last `pollTrust`. */
  trustedCertificates(): readonly TrustedFile[] {
    return this.trustedNow;
  }

  /** The revocation lists' files at the last `pollTrust`, one stamp line each (`crlFile`). */
  revocationLists(): readonly string[] {
    return this.crlsNow;
  }

  /**
   * Calls `listener` whenever a trust folder (TRUST_FOLDERS) is found changed, looked at every TRUST_POLL_MS while
   * anyone listens (and at every `pollTrust`). Returns the function that stops it.
   */
  watchTrust(listener: () => void): () => void {
    this.trustListeners.add(listener);
    this.pollTrust();
    this.trustTimer ??= setInterval(() => this.pollTrust(), TRUST_POLL_MS).unref();
    return () => {
      this.trustListeners.delete(listener);
      if (this.trustListeners.size === 0 && this.trustTimer !== null) {
        clearInterval(this.trustTimer);
        this.trustTimer = null;
      }
    };
  }

  /**
   * The store as one endpoint's client sees it: the same store, whose check of a server
   * certificate also refuses one outside its validity period before the store is asked —
   * node-opcua-pki asks about trust first, and when it accepts unknown certificates it trusts
   * an expired one, and connects — and tells `refused` what it refused and why, so that the
   * endpoint can say it in words an operator can act on.
   *
   * With `binding` (the endpoint's PLC), the certificate must also belong to the endpoint
   * (opcua-binding.ts): pinned (serverCertificateSha256), it must be that very certificate, and
   * the store is not asked; otherwise it must name the endpoint URL's host (unless the PLC
   * accepts a mismatch), checked before the store so that a certificate for another host is
   * neither trusted on the way (acceptUnknownCertificates) nor offered in rejected/ for an
   * operator to trust. Its application URI is checked by the endpoint, which has the server's
   * endpoint description (OpcuaEndpoint.applicationUriRefusal).
   */
  viewFor(
    now: () => number,
    refused: (refusal: CertificateRefusal) => void,
    binding?: ServerBinding,
  ): OPCUACertificateManager {
    const manager = this.manager;
    const decide = (chain: Buffer | Buffer[]): Promise<Verdict> => this.decide(chain);
    const check = async (chain: Buffer | Buffer[]): Promise<StatusCode> => {
      const der = Array.isArray(chain) ? chain[0] : chain;
      const certificate = der === undefined ? null : readCertificate(der);
      if (certificate !== null) {
        const at = now();
        if (at < certificate.validFrom || at > certificate.validTo) {
          refused({ status: StatusCodes.BadCertificateTimeInvalid, certificate, at });
          return StatusCodes.BadCertificateTimeInvalid;
        }
      }
      if (binding?.serverCertificateSha256 !== undefined) {
        const mismatch = pinMismatch(chain, binding);
        if (mismatch === null) return StatusCodes.Good;
        const status = StatusCodes.BadCertificateUntrusted;
        refused({ status, certificate, at: now(), binding: mismatch });
        return status;
      }
      if (binding !== undefined && binding.acceptHostNameMismatch !== true) {
        const mismatch = hostMismatch(chain, binding);
        if (mismatch !== null) {
          const status = StatusCodes.BadCertificateHostNameInvalid;
          refused({ status, certificate, at: now(), binding: mismatch });
          return status;
        }
      }
      // Bounded: a check that does not finish (a disk that stops answering under the PKI
      // folder, a verification that hangs) must not hold the request or the connection attempt
      // waiting on it for ever. The certificate is then not trusted (fail closed): nothing is sent
      // to the server until a check completes. The check itself goes on; its late verdict is
      // not used, and the checks behind it in the store's queue wait for it (and time out too).
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<null>((resolve) => {
        timer = setTimeout(() => {
          resolve(null);
        }, TRUST_CHECK_TIMEOUT_MS);
      });
      const verdict = await Promise.race([decide(chain), late]).finally(() => {
        clearTimeout(timer);
      });
      if (verdict === null) {
        const status = StatusCodes.BadSecurityChecksFailed;
        const unchecked = `the check did not finish within ${TRUST_CHECK_TIMEOUT_MS} ms (the PKI folder ${this.dir} not answering, or the verification hung)`;
        refused({ status, certificate, at: now(), unchecked });
        return status;
      }
      const { status, kept } = verdict;
      if (!status.isGood()) refused({ status, certificate, at: now(), kept });
      return status;
    };
    return new Proxy(manager, {
      get: (target, property) => {
        if (property === 'checkCertificate') return check;
        const value: unknown = Reflect.get(target, property, target);
        // Bound to the store itself: its methods use private fields a proxy does not have.
        return typeof value === 'function'
          ? (value as (...a: unknown[]) => unknown).bind(target)
          : value;
      },
    });
  }

  /**
   * The store's verdict on a server certificate, and the refused copies of it that trusted/certs/
   * also holds and that could not be removed (see `follow`). Checks run one at a time (one per
   * connection attempt, at the backoff's pace), so that none is answered from a store half read.
   */
  private decide(chain: Buffer | Buffer[]): Promise<Verdict> {
    const run = this.checks.then(async () => {
      const der = Array.isArray(chain) ? chain[0] : chain;
      const thumbprint = der === undefined ? undefined : readCertificate(der)?.thumbprint;
      const kept = await this.follow(thumbprint);
      return { status: await this.manager.checkCertificate(chain), kept };
    });
    this.checks = run.catch(() => undefined);
    return run;
  }

  /**
   * Brings the store in line with its folders before a check, and returns the refused copies of
   * the certificate being checked (`thumbprint`) that trusted/certs/ also holds and that could
   * not be removed.
   *
   * The folders are what an operator acts on: trusting a certificate is moving it from
   * `rejected/` to `trusted/certs/`, revoking it is removing it from there. node-opcua-pki keeps
   * its own index of them, which it learns of changes to only from inotify watchers; where the
   * machine's inotify instances are used up (128 per user by default, shared by all of the
   * user's processes) its watchers fail without a word, and nothing the operator did is seen
   * (measured with `fs.inotify.max_user_instances=0`: a certificate moved to trusted/ stayed
   * refused, and one removed from there stayed trusted, until sluiced restarted). The folders'
   * certificates are read at each check, and the store is read again whenever they are not what
   * it read last.
   *
   * A certificate found in both folders is rejected by node-opcua-pki ("in the reject and trusted
   * list at the same time is considered rejected"), so a copy left in rejected/ kept the PLC
   * refused, with a message telling the operator to move a certificate already in trusted/. Such
   * a copy is the gateway's own record of a refusal: the operator copied the certificate instead
   * of moving it, or a connection attempt put it back while the operator was moving it. The
   * operator's trust wins: a file in rejected/ holding the very certificate (the same SHA-1
   * thumbprint) that a file in trusted/certs/ holds is removed. Nothing is ever trusted that
   * trusted/certs/ does not hold.
   */
  private async follow(thumbprint: string | undefined): Promise<string[]> {
    const trusted = folderCertificates(join(this.dir, 'trusted', 'certs'));
    let rejected = folderCertificates(join(this.dir, 'rejected'));
    const kept: string[] = [];
    if (thumbprint !== undefined && trusted.some((c) => c.thumbprint === thumbprint)) {
      for (const copy of rejected.filter((c) => c.thumbprint === thumbprint)) {
        try {
          rmSync(copy.file, { force: true });
          this.log.warn(
            { removed: copy.file, thumbprint },
            'removed a refused copy of an OPC UA server certificate that trusted/certs/ holds: the operator trusted it',
          );
        } catch (error) {
          kept.push(copy.file);
          this.log.error(
            { file: copy.file, thumbprint, err: error },
            'cannot remove a refused copy of an OPC UA server certificate that trusted/certs/ holds: it stays refused',
          );
        }
      }
      rejected = folderCertificates(join(this.dir, 'rejected'));
    }
    // The issuers' certificates and the revocation lists too: a CA's newer list, or a CA removed,
    // must be what the check below decides on.
    const others = TRUST_FOLDERS.filter((f) => f !== join('trusted', 'certs')).map((f) =>
      folderStamp(join(this.dir, f), !f.endsWith('certs')),
    );
    const folders = JSON.stringify([trusted, rejected, others]);
    if (folders !== this.seen) {
      if (this.seen !== null) {
        this.log.info(
          { trusted: trusted.length, rejected: rejected.length },
          'the OPC UA PKI folders changed since the certificate store read them: read again',
        );
      }
      await this.manager.reloadCertificates();
      this.seen = folders;
    }
    return kept;
  }
}

/** The store's verdict on a server certificate (OpcuaClientPki.decide). */
interface Verdict {
  readonly status: StatusCode;
  /** Refused copies of the certificate that trusted/certs/ also holds, which could not be removed. */
  readonly kept: readonly string[];
}

/**
 * The longest a check of a server certificate (OpcuaClientPki.viewFor) may take, its wait behind
 * other checks included: normally milliseconds (the folders read again after a change, a chain
 * verified); a request waits for it before it is sent.
 */
const TRUST_CHECK_TIMEOUT_MS = 5000;

/** How often the trust folders are looked at while no request does it (OpcuaClientPki.pollTrust). */
const TRUST_POLL_MS = 1000;

/**
 * The PKI folders a server certificate's trust depends on (node-opcua-pki's layout): the trusted
 * certificates and CAs, the issuers' (CA) certificates that complete a chain, and the revocation
 * lists of trusted CAs and of issuers.
 */
const TRUST_FOLDERS = [
  join('trusted', 'certs'),
  join('trusted', 'crl'),
  join('issuers', 'certs'),
  join('issuers', 'crl'),
] as const;

/**
 * How long before a look at the trust folders a change to a folder or file must have been
 * made for the look to stand on its times (`trustUnchanged`). File systems stamp times at their
 * granularity (the kernel's tick, a jiffy of up to 10 ms; FAT's 2 s): a second change made in
 * the same tick as the one a look saw leaves the times as they were. While a look's folders or
 * files changed within this of it, every look lists the folders again.
 */
const TRUST_TIMES_GRANULARITY_MS = 2000;

/** A path as the file system describes it (a folderStamp line), and when it last changed. */
interface PathStamp {
  readonly path: string;
  readonly line: string;
  /** Its latest change, content (mtime) or entry (ctime), wall time; null: not there. */
  readonly changedMs: number | null;
}

/** What a look at the trust folders saw of the folders and of the files it listed (pollTrust). */
interface TrustLook {
  readonly paths: readonly PathStamp[];
}

function pathStamp(path: string): PathStamp {
  try {
    const s = statSync(path);
    return {
      path,
      line: `${path}|${s.size}|${s.mtimeMs}|${s.ctimeMs}|${s.ino}`,
      changedMs: Math.max(s.mtimeMs, s.ctimeMs),
    };
  } catch {
    return { path, line: `${path}|gone`, changedMs: null };
  }
}

/**
 * A look that can stand on its times, or null when one of its paths changed too shortly before
 * it (TRUST_TIMES_GRANULARITY_MS): the folders are then listed at every look until one can.
 * The wall clock compares with the file system's times, which the kernel stamps with it.
 */
function trustLook(paths: readonly PathStamp[], lookedAt: number): TrustLook | null {
  const recent = paths.some(
    (p) => p.changedMs !== null && p.changedMs >= lookedAt - TRUST_TIMES_GRANULARITY_MS,
  );
  return recent ? null : { paths };
}

/** Whether every folder and file of the look is as it was: nothing added, removed or written. */
function trustUnchanged(look: TrustLook): boolean {
  return look.paths.every((p) => pathStamp(p.path).line === p.line);
}

/** A certificate file of a PKI folder and the SHA-1 thumbprint of its first certificate. */
export interface TrustedFile {
  readonly file: string;
  readonly thumbprint: string | null;
}

/**
 * A PKI folder's certificate files (`crl`: every file, as node-opcua-pki reads a CRL folder) as
 * the file system describes them (name, size, change time, inode), one line each: any file added,
 * removed, renamed or written over changes it.
 */
function folderStamp(folder: string, crl = false): string {
  return folderPaths(folder, crl)
    .map((p) => p.line)
    .join('\n');
}

/** A PKI folder's certificate files (`crl`: every file) as folderStamp describes them. */
function folderPaths(folder: string, crl = false): PathStamp[] {
  return (crl ? folderFiles(folder) : certificateFiles(folder)).sort().map(pathStamp);
}

/** The certificates of a PKI folder: each file and the SHA-1 thumbprint of its first one. */
function folderCertificates(folder: string): TrustedFile[] {
  return certificateFiles(folder)
    .sort()
    .map((file) => ({ file, thumbprint: thumbprintOf(file) }));
}

/** The certificate files of a PKI folder (none if it is missing). */
function certificateFiles(folder: string): string[] {
  return folderFiles(folder).filter((file) => /\.(pem|der|crt|cer)$/i.test(file));
}

/** The files of a PKI folder (none if it is missing). */
function folderFiles(folder: string): string[] {
  try {
    return readdirSync(folder).map((name) => join(folder, name));
  } catch {
    return [];
  }
}

/** The file a folderStamp line is about. */
export function crlFile(line: string): string {
  return line.slice(0, line.indexOf('|'));
}

/** The SHA-1 thumbprint of the certificate in a PEM or DER file (null: not one). */
function thumbprintOf(file: string): string | null {
  try {
    const x509 = new X509Certificate(readFileSync(file));
    return x509.fingerprint.replaceAll(':', '').toLowerCase();
  } catch {
    return null;
  }
}

/** A server certificate as an operator would name it. */
export interface CertificateFacts {
  readonly subject: string;
  readonly thumbprint: string;
  readonly validFrom: number;
  readonly validTo: number;
}

/** A server certificate the client's check refused, with the status it refused it with. */
export interface CertificateRefusal {
  readonly status: StatusCode;
  readonly certificate: CertificateFacts | null;
  /** Gateway wall-clock time of the check. */
  readonly at: number;
  /** Refused copies of it that trusted/certs/ also holds, which could not be removed. */
  readonly kept?: readonly string[];
  /** Why the check could not decide (it did not finish): not trusted until one does. */
  readonly unchecked?: string;
  /**
   * Why the certificate does not belong to the endpoint (opcua-binding.ts): not the pinned one,
   * another host's, another application's.
   */
  readonly binding?: string;
}

/** The first certificate of a chain as the server sent it: its own. */
export function readLeaf(chain: Buffer | Buffer[]): CertificateFacts | null {
  const der = Array.isArray(chain) ? chain[0] : chain;
  return der === undefined ? null : readCertificate(der);
}

function readCertificate(der: Buffer): CertificateFacts | null {
  try {
    const x509 = new X509Certificate(der);
    return {
      subject: x509.subject.replaceAll('\n', ', '),
      thumbprint: x509.fingerprint.replaceAll(':', '').toLowerCase(),
      validFrom: Date.parse(x509.validFrom),
      validTo: Date.parse(x509.validTo),
    };
  } catch {
    // Not parseable here: the store's own check decides, and says why.
    return null;
  }
}

/** What an operator reads when the server's certificate was refused, and what to do. */
export function describeRefusal(
  refusal: CertificateRefusal,
  endpointUrl: string,
  pkiDir: string,
): string {
  const c = refusal.certificate;
  const which = certificateName(c, endpointUrl);
  const iso = (t: number): string => new Date(t).toISOString();
  if (refusal.unchecked !== undefined) {
    return `${which} could not be checked: ${refusal.unchecked}; it is not trusted until a check completes (${refusal.status.name})`;
  }
  if (refusal.binding !== undefined) {
    return `${which} is refused: ${refusal.binding} (${refusal.status.name})`;
  }
  if (refusal.status.value === StatusCodes.BadCertificateTimeInvalid.value && c !== null) {
    const when =
      refusal.at > c.validTo
        ? `it expired on ${iso(c.validTo)}`
        : `it is not valid before ${iso(c.validFrom)}`;
    return `${which} is refused: ${when} (the gateway's clock reads ${iso(refusal.at)}). Renew the PLC's certificate, or set the PLC's or the gateway's clock right (${refusal.status.name})`;
  }
  if (refusal.status.value === StatusCodes.BadCertificateUntrusted.value) {
    const kept = refusal.kept ?? [];
    if (kept.length > 0) {
      return `${which} is not trusted: ${join(pkiDir, 'trusted', 'certs')} holds it, but so does ${kept.map((f) => `'${f}'`).join(', ')}, which the gateway could not remove; remove it to trust the certificate (${refusal.status.name})`;
    }
    return `${which} is not trusted: it was put in ${join(pkiDir, 'rejected')}; to trust it, move it to ${join(pkiDir, 'trusted', 'certs')} (${refusal.status.name})`;
  }
  if (refusal.status.value === StatusCodes.BadCertificateRevoked.value) {
    return `${which} is revoked: a certificate revocation list of its CA in ${join(pkiDir, 'trusted', 'crl')} or ${join(pkiDir, 'issuers', 'crl')} lists it. The PLC needs a new certificate from its CA (${refusal.status.name})`;
  }
  if (
    refusal.status.value === StatusCodes.BadCertificateRevocationUnknown.value ||
    refusal.status.value === StatusCodes.BadCertificateIssuerRevocationUnknown.value
  ) {
    return `${which} is refused: it is issued by a CA whose certificate revocation list the gateway does not have; put the CA's current list in ${join(pkiDir, 'trusted', 'crl')} (a trusted CA) or ${join(pkiDir, 'issuers', 'crl')} (${refusal.status.name})`;
  }
  return `${which} is refused: ${refusal.status.name} (${refusal.status.description})`;
}

/** A server's certificate as an operator would find it. */
export function certificateName(c: CertificateFacts | null, endpointUrl: string): string {
  return c === null
    ? `the server certificate of ${endpointUrl}`
    : `the server certificate of ${endpointUrl} (${c.subject}; SHA-1 ${c.thumbprint})`;
}

/** Lock files and directories (`*.lock`) in a PKI store, three levels deep at most. */
function staleLocks(dir: string, depth = 0): string[] {
  let entries: Dirent[];
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch {
    return [];
  }
  return entries.flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.name.endsWith('.lock')) return [path];
    return entry.isDirectory() && depth < 3 ? staleLocks(path, depth + 1) : [];
  });
}
