import { X509Certificate } from 'node:crypto';
import { readFileSync, readdirSync, rmSync, statSync, type Dirent } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import {
  AttributeIds,
  DataType,
  MessageSecurityMode,
  OPCUACertificateManager,
  OPCUAClient,
  SecurityPolicy,
  ServiceFault,
  StatusCodes,
  WriteRequest,
  WriteResponse,
  type ClientSession,
  type DataValue,
  type StatusCode,
  type WriteValueOptions,
} from 'node-opcua';
import { Backoff } from '../backoff.js';
import { MAX_TIMER_MS, timer, type Clock } from '../core/clock.js';
import {
  DeviceRefusedError,
  DeviceUnreachableError,
  WriteNotSentError,
  type ClockSample,
  type CommandWrite,
  type DeviceDriver,
  type DeviceHealth,
  type Readback,
} from '../core/driver.js';
import type { Logger } from '../core/logger.js';
import type { DeviceProfile } from '../core/profile.js';
import { HealthCounter, commandCode, describeError, withTimeout } from './common.js';

export type OpcuaSecurityMode = 'None' | 'Sign' | 'SignAndEncrypt';
export type OpcuaSecurityPolicy =
  'None' | 'Basic256Sha256' | 'Aes128_Sha256_RsaOaep' | 'Aes256_Sha256_RsaPss';

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
   */
  viewFor(
    now: () => number,
    refused: (refusal: CertificateRefusal) => void,
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
interface TrustedFile {
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
function crlFile(line: string): string {
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
interface CertificateFacts {
  readonly subject: string;
  readonly thumbprint: string;
  readonly validFrom: number;
  readonly validTo: number;
}

/** A server certificate the client's check refused, with the status it refused it with. */
interface CertificateRefusal {
  readonly status: StatusCode;
  readonly certificate: CertificateFacts | null;
  /** Gateway wall-clock time of the check. */
  readonly at: number;
  /** Refused copies of it that trusted/certs/ also holds, which could not be removed. */
  readonly kept?: readonly string[];
  /** Why the check could not decide (it did not finish): not trusted until one does. */
  readonly unchecked?: string;
}

/** The first certificate of a chain as the server sent it: its own. */
function readLeaf(chain: Buffer | Buffer[]): CertificateFacts | null {
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
function describeRefusal(refusal: CertificateRefusal, endpointUrl: string, pkiDir: string): string {
  const c = refusal.certificate;
  const which = certificateName(c, endpointUrl);
  const iso = (t: number): string => new Date(t).toISOString();
  if (refusal.unchecked !== undefined) {
    return `${which} could not be checked: ${refusal.unchecked}; it is not trusted until a check completes (${refusal.status.name})`;
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
function certificateName(c: CertificateFacts | null, endpointUrl: string): string {
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

export interface OpcuaEndpointOptions {
  readonly name: string;
  readonly endpointUrl: string;
  /** Namespace of the controller's device nodes; its index is looked up after connecting. */
  readonly namespaceUri: string;
  readonly securityMode: OpcuaSecurityMode;
  readonly securityPolicy: OpcuaSecurityPolicy;
  readonly pki: OpcuaClientPki;
  readonly requestTimeoutMs?: number;
  readonly clock: Clock;
  readonly logger: Logger;
}

const SERVER_CURRENT_TIME = 'ns=0;i=2258';
/** Server_NamespaceArray (OPC 10000-5, 6.3.1): the namespace URIs, at their indexes. */
const NAMESPACE_ARRAY = 'ns=0;i=2255';

/**
 * A variable to read: one of the controller's namespace (a device object's variable), whose
 * NodeId is made with the namespace index of the session it is sent on; or a NodeId of the
 * server's own namespace 0, the same on every server.
 */
export type NodeAddress = { readonly object: string; readonly name: string } | `ns=0;${string}`;

/** A StatusCode's severity: its two top bits (Part 4, 7.39): 0 Good, 1 Uncertain, 2 and 3 Bad. */
function severity(status: StatusCode): 'good' | 'uncertain' | 'bad' {
  const bits = status.value >>> 30;
  return bits === 0 ? 'good' : bits === 1 ? 'uncertain' : 'bad';
}

/**
 * Bad statuses that do not say the write was not carried out: a server answers the first ones
 * when it could not learn what became of a write it passed on to its field device (a gateway in
 * front of a fieldbus, a device that did not answer in time), and the resource ones ("an
 * operating system resource is not available", "not enough memory to complete the operation")
 * do not say at which point the resource ran out. The device may have taken it. Other Bad
 * statuses say the value was not written.
 */
const UNKNOWN_OUTCOME = new Set<number>([
  StatusCodes.BadTimeout.value,
  StatusCodes.BadCommunicationError.value,
  StatusCodes.BadWaitingForResponse.value,
  StatusCodes.BadRequestTimeout.value,
  StatusCodes.BadResourceUnavailable.value,
  StatusCodes.BadOutOfMemory.value,
]);

/**
 * Statuses that say the server is busy and did not process the request: "the Server does not
 * have the resources to process the request at this time" (BadServerTooBusy, and the transport's
 * BadTcpServerTooBusy, "cannot process the request because it is too busy"). A write so answered
 * was not applied; it is sent again, the same write, while its command's deadline allows
 * (DeviceRefusedError `busy`: src/core/busy-write.ts), as a Modbus write answered 0x06 is.
 */
const BUSY = new Set<number>([
  StatusCodes.BadServerTooBusy.value,
  StatusCodes.BadTcpServerTooBusy.value,
]);

/**
 * The Write Service's own service results (OPC 10000-4 Table 54): the request was not processed
 * (too many operations for the server's limits, or none), so nothing was written; sending the
 * same request again would be refused the same way. Any other ServiceFault to a write leaves
 * its outcome unknown, except BUSY.
 */
const WRITE_NOT_PROCESSED = new Set<number>([
  StatusCodes.BadTooManyOperations.value,
  StatusCodes.BadNothingToDo.value,
]);

interface WriteFault {
  /**
   * `refused`: not applied; `busy`: not applied, the server busy (sent again); `unknown`: the
   * controller may have taken it.
   */
  readonly kind: 'refused' | 'busy' | 'unknown';
  readonly message: string;
}

/**
 * The service result of a request the server answered with a ServiceFault (OPC 10000-4 §5.3:
 * "the Service itself failed"), which node-opcua hands over as an error carrying the fault.
 */
class ServiceResultError extends Error {
  constructor(
    readonly status: StatusCode,
    cause: Error,
  ) {
    super(`the server answered the Write with a ServiceFault: ${status.name}`, { cause });
  }
}

/**
 * What the statuses of the trigger's Write say of the command (null: taken). A Good status with
 * a subcode (GoodCompletesAsynchronously, GoodClamped) is a write the server took; an Uncertain
 * one, or a Bad one of UNKNOWN_OUTCOME, does not say whether it took it, which only a readback
 * can tell; a BUSY one is a write not processed, to be sent again; any other Bad status is a
 * refusal.
 */
function triggerOutcome(results: readonly StatusCode[]): WriteFault | null {
  const refused = results.find(
    (s) => severity(s) === 'bad' && !UNKNOWN_OUTCOME.has(s.value) && !BUSY.has(s.value),
  );
  if (refused !== undefined) return { kind: 'refused', message: refused.name };
  const unknown = results.find((s) => severity(s) !== 'good' && !BUSY.has(s.value));
  if (unknown !== undefined) {
    return {
      kind: 'unknown',
      message: `${unknown.name}: the controller may have taken it (outcome unknown)`,
    };
  }
  const busy = results.find((s) => BUSY.has(s.value));
  return busy === undefined
    ? null
    : { kind: 'busy', message: `${busy.name}: the server did not process it; nothing was applied` };
}

/**
 * The code and setpoint must be in place, as written, before the trigger goes out: anything
 * but plain Good (a clamped setpoint, a write still completing, an unknown outcome) and the
 * trigger is not sent, so the controller takes nothing.
 */
function preparationOutcome(results: readonly StatusCode[]): WriteFault | null {
  const statuses = results.filter((s) => s.value !== StatusCodes.Good.value);
  const status = statuses.find((s) => !BUSY.has(s.value)) ?? statuses[0];
  return status === undefined
    ? null
    : {
        // Only busy answers: the whole write is sent again, code and setpoint first.
        kind: BUSY.has(status.value) ? 'busy' : 'refused',
        message: `${status.name} to the code and setpoint; the trigger (the sequence number) was not sent, the controller takes nothing`,
      };
}

/**
 * No session to send a request on (not connected yet, reconnecting, closed): thrown before
 * anything is handed to node-opcua, so nothing of the request left the process. A write
 * rejected so is never sent (OpcuaDeviceDriver.write: WriteNotSentError `no-connection`).
 */
class NotConnectedError extends DeviceUnreachableError {}

/** The server's NamespaceArray lacks the controller's namespace (OpcuaEndpoint.readNamespaceIndex). */
class NamespaceMissingError extends Error {}

/**
 * The session's one-shot transaction (ClientSessionImpl, node-opcua 2.182.2, pinned): sends the
 * request at once on the session's secure channel, or fails at once when the channel is not
 * open; never holds it, never sends it again. An internal member, not documented API.
 */
interface OneShotSession {
  isChannelValid(): boolean;
  _performMessageTransaction(
    request: WriteRequest,
    callback: (err: Error | null, response?: unknown) => void,
  ): void;
}

/**
 * Sends a Write request once. ClientSession.write sends a request again by itself: one the
 * server answered BadSessionIdInvalid (it lost the session: timed out on its side, restarted
 * its session layer), once it has made a new session, and one handed to it while it repairs
 * the session or reconnects, once that is done (ClientSessionImpl #reprocessRequest,
 * #_recreate_session_and_reperform_transaction, flushPendingTransactions). The repair retries
 * every 2 s for as long as the server refuses a new session, so that write would reach the
 * controller seconds or minutes after the driver gave up on it (its request timeout), past
 * its deadline (I3), and after the core may have proven it not applied and sent it again
 * (I1). A command's request must reach the controller when the driver sends it, or never.
 */
function writeOnce(session: ClientSession, values: WriteValueOptions[]): Promise<StatusCode[]> {
  const oneShot = session as unknown as OneShotSession;
  return new Promise((resolve, reject) => {
    oneShot._performMessageTransaction(new WriteRequest({ nodesToWrite: values }), (err, r) => {
      if (err !== null) {
        // A ServiceFault: node-opcua puts it on the error (`response`), or passes a response
        // whose service result is Bad.
        const fault = (err as { response?: unknown }).response ?? r;
        const status =
          fault instanceof ServiceFault || fault instanceof WriteResponse
            ? fault.responseHeader.serviceResult
            : undefined;
        reject(
          status !== undefined && status.isNot(StatusCodes.Good)
            ? new ServiceResultError(status, err)
            : err,
        );
      } else if (!(r instanceof WriteResponse) || (r.results ?? []).length !== values.length) {
        reject(new Error('the server answered the Write with something else than its results'));
      } else {
        resolve(r.results ?? []);
      }
    });
  });
}

const MODES: Record<OpcuaSecurityMode, MessageSecurityMode> = {
  None: MessageSecurityMode.None,
  Sign: MessageSecurityMode.Sign,
  SignAndEncrypt: MessageSecurityMode.SignAndEncrypt,
};
const POLICIES: Record<OpcuaSecurityPolicy, SecurityPolicy> = {
  None: SecurityPolicy.None,
  Basic256Sha256: SecurityPolicy.Basic256Sha256,
  Aes128_Sha256_RsaOaep: SecurityPolicy.Aes128_Sha256_RsaOaep,
  Aes256_Sha256_RsaPss: SecurityPolicy.Aes256_Sha256_RsaPss,
};

/**
 * The open session's server certificate, and the trusted certificates it was last found trusted
 * against (OpcuaEndpoint.settleTrust).
 */
interface SessionTrust {
  readonly client: OPCUAClient;
  /** Its chain as the server sent it, the server's own first. */
  readonly certificate: Buffer | Buffer[];
  /** The server's own certificate, read (null: not readable here; the store decided on it). */
  readonly facts: CertificateFacts | null;
  /** The store's check of a certificate, with what it refused, if it did. */
  readonly verify: (certificate: Buffer | Buffer[]) => Promise<{
    readonly status: StatusCode | Error;
    readonly refusal: CertificateRefusal | null;
  }>;
  /** OpcuaClientPki.pollTrust's revision at the last check that trusted it. */
  revision: number;
  /** trusted/certs/'s certificates then. */
  trustedBy: readonly TrustedFile[];
  /** The revocation lists' files then (OpcuaClientPki.revocationLists). */
  crlsBy: readonly string[];
}

/**
 * One long-lived OPC UA client and session per endpoint: repeated sessions exhaust servers
 * (node-opcua #446). node-opcua reconnects with its connection strategy (backoff) and keeps the
 * session alive; a read that spans a reconnection is discarded as stale, since its values may
 * come from before the link dropped.
 */
export class OpcuaEndpoint {
  readonly name: string;
  readonly health = new HealthCounter();
  private readonly o: OpcuaEndpointOptions;
  private readonly requestTimeoutMs: number;
  private readonly log: Logger;
  private client: OPCUAClient | null = null;
  private session: ClientSession | null = null;
  /**
   * The index of the controller's namespace (OpcuaEndpointOptions.namespaceUri) in the
   * NamespaceArray of the server the session is open with, read when the session was opened
   * and again after every reconnection or new session: null until it has been, and nothing is
   * sent meanwhile. A server may order its namespaces differently after a restart (another
   * namespace registered before the controller's: a firmware update, another start order), and
   * a NodeId made with the old index names another namespace's node, or none.
   */
  private namespaceIndex: number | null = null;
  /** The index the last session used (namespaceIndex), to say when a new one differs. */
  private lastNamespaceIndex: number | null = null;
  private starting: Promise<void> | null = null;
  /** Bumped at every connection loss: a request that began in an older epoch is stale. */
  private epoch = 0;
  private linkUp = false;
  private closed = false;
  /** Between failed attempts to open a session (connect, certificate, namespace). */
  private readonly backoff = new Backoff({ minMs: 500, maxMs: 15_000 });
  /** The open session's server certificate (null: no session, or one without security). */
  private trust: SessionTrust | null = null;
  /** The check of it under way after trusted/certs/ changed (settleTrust). */
  private review: Promise<void> | null = null;
  private unwatchTrust: (() => void) | null = null;
  /** Cancels the timer set for the end of the session's server certificate's validity. */
  private cancelValidity: (() => void) | null = null;

  constructor(options: OpcuaEndpointOptions) {
    this.o = options;
    this.name = options.name;
    this.requestTimeoutMs = options.requestTimeoutMs ?? 2000;
    this.log = options.logger.child({ plc: options.name });
  }

  /** Starts connecting in the background; requests fail fast until the session is up. */
  start(): void {
    // Monotonic (SPEC §6: durations): a gateway clock stepped back an hour after a failed
    // attempt would otherwise hold every next one for that hour.
    if (this.closed) return;
    this.unwatchTrust ??= this.o.pki.watchTrust(() => {
      void this.settleTrust();
    });
    if (this.backoff.remaining(this.o.clock.elapsed()) > 0) return;
    this.starting ??= this.connect().catch((error: unknown) => {
      this.health.error(`${this.name}: ${describeError(error)}`);
      this.log.warn({ err: error }, 'opc ua connection failed');
      this.starting = null;
    });
  }

  /**
   * For a read: while a session is being opened, waits for it, up to the request timeout, as
   * a Modbus read waits for its connection. Reads failed at once meanwhile and the monitor's
   * next came a monitor period later: at every start each device of an OPC UA PLC was first
   * read about a second after its session opened (readiness, the demo's "all answering").
   * Nothing to wait for — the session up, node-opcua re-establishing a lost link, a backoff
   * after a failed attempt — returns at once. Writes do not wait: a write that finds no
   * session is never sent (WriteNotSentError), and its command says so.
   */
  async sessionOpening(signal?: AbortSignal): Promise<void> {
    if (this.closed || (this.session !== null && this.linkUp)) return;
    this.start();
    const starting = this.starting;
    if (starting === null || this.session !== null || signal?.aborted === true) return;
    let timer: NodeJS.Timeout | undefined;
    let onAbort: (() => void) | undefined;
    await Promise.race([
      starting,
      new Promise<void>((resolve) => {
        timer = setTimeout(resolve, this.requestTimeoutMs);
        onAbort = resolve;
        signal?.addEventListener('abort', onAbort, { once: true });
      }),
    ]);
    clearTimeout(timer);
    if (onAbort !== undefined) signal?.removeEventListener('abort', onAbort);
  }

  /**
   * The NodeId of a device variable on the current session. Call it just before the request
   * that carries it is sent, in the same turn of the event loop: the namespace index may change
   * at any reconnection.
   */
  nodeId(object: string, name: string): string {
    if (this.namespaceIndex === null) {
      this.start();
      throw new NotConnectedError(
        `${this.name}: not connected to ${this.o.endpointUrl} (${this.health.snapshot().lastError ?? 'connecting'})`,
      );
    }
    return `ns=${this.namespaceIndex};s=${object}.${name}`;
  }

  async read(
    nodes: readonly NodeAddress[],
    signal?: AbortSignal,
  ): Promise<{ values: DataValue[]; requestedAt: number; receivedAt: number }> {
    await this.settleTrust();
    const session = this.ready(signal);
    // Made now, after the wait for the trust check, on the session's namespace index as it is.
    const nodeIds = nodes.map((n) => (typeof n === 'string' ? n : this.nodeId(n.object, n.name)));
    const epoch = this.epoch;
    const requestedAt = this.o.clock.now();
    let values: DataValue[];
    try {
      // maxAge 0: the server must read the device now, not answer from a cache.
      values = await withTimeout(
        session.read(
          nodeIds.map((nodeId) => ({ nodeId, attributeId: AttributeIds.Value })),
          0,
        ),
        this.requestTimeoutMs,
        `${this.name}: read timed out after ${this.requestTimeoutMs} ms`,
      );
    } catch (error) {
      throw this.failure(error, 'read');
    }
    const receivedAt = this.o.clock.now();
    if (epoch !== this.epoch || !this.linkUp) {
      throw new DeviceUnreachableError(
        `${this.name}: connection was re-established during the read`,
      );
    }
    const bad = values.find((v) => !v.statusCode.isGood());
    if (bad !== undefined) {
      const message = `${this.name}: read: ${bad.statusCode.name}`;
      this.health.error(message);
      throw new DeviceRefusedError(message);
    }
    this.health.ok(receivedAt);
    return { values, requestedAt, receivedAt };
  }

  /**
   * Sends one Write request. `trigger`: the request that makes the controller take the command
   * (its sequence number), whose statuses are read for what they say of the command's fate
   * (triggerOutcome); any other request must be answered plain Good, or the trigger is not sent
   * after it (DeviceRefusedError).
   */
  async write(values: WriteValueOptions[], trigger: boolean, signal?: AbortSignal): Promise<void> {
    // A server certificate expired since the caller's check (settleTrust) gets nothing either.
    this.checkValidity();
    const session = this.ready(signal);
    // The caller settled the trust just before (OpcuaDeviceDriver.write), and checked the
    // command's deadline after; trusted/certs/ changed since then (a moment ago) is not waited
    // for here, where the deadline would not be checked again: not sent.
    if (this.trust !== null && this.trust.revision !== this.o.pki.pollTrust()) {
      void this.settleTrust();
      throw new NotConnectedError(
        `${this.name}: trusted/certs/ changed: the server certificate of ${this.o.endpointUrl} is being checked again`,
      );
    }
    // The one-shot send fails at once, sending nothing, on a channel that is not open (a
    // connection lost that node-opcua has not reported yet): said here, it is a write not sent.
    if (!(session as unknown as OneShotSession).isChannelValid()) {
      throw new NotConnectedError(
        `${this.name}: not connected to ${this.o.endpointUrl} (channel closed)`,
      );
    }
    let results: StatusCode[];
    let outcome: WriteFault | null;
    try {
      results = await withTimeout(
        writeOnce(session, values),
        this.requestTimeoutMs,
        `${this.name}: write timed out after ${this.requestTimeoutMs} ms`,
      );
      outcome = trigger ? triggerOutcome(results) : preparationOutcome(results);
    } catch (error) {
      // The server answered, but for the request as a whole (a ServiceFault): busy, or a Write
      // it did not process, is certain not applied; anything else leaves the outcome unknown.
      if (!(error instanceof ServiceResultError)) throw this.failure(error, 'write');
      const status = error.status;
      const notSent = trigger ? '' : '; the trigger (the sequence number) was not sent';
      if (BUSY.has(status.value)) {
        outcome = {
          kind: 'busy',
          message: `${status.name} (service result): the server did not process it; nothing was applied${notSent}`,
        };
      } else if (WRITE_NOT_PROCESSED.has(status.value)) {
        outcome = {
          kind: 'refused',
          message: `${status.name} (service result): the server did not process it${notSent}`,
        };
      } else {
        throw this.failure(error, 'write');
      }
    }
    if (outcome === null) return;
    const message = `${this.name}: write: ${outcome.message}`;
    this.health.error(message);
    throw outcome.kind === 'unknown'
      ? new DeviceUnreachableError(message)
      : new DeviceRefusedError(message, { busy: outcome.kind === 'busy' });
  }

  /**
   * Resolves once the open session's server certificate has been checked against the trusted
   * certificates as they are now; one no longer trusted has its session closed (`revoke`), so
   * that the request the caller is about to send is refused as not sent. So is one whose validity
   * period the gateway's clock has left (`checkValidity`). Without a change to trusted/certs/
   * since the last check, at once. Never rejects.
   */
  async settleTrust(): Promise<void> {
    this.checkValidity();
    for (;;) {
      const t = this.trust;
      if (t === null || t.revision === this.o.pki.pollTrust()) return;
      this.review ??= this.reviewTrust(t).finally(() => {
        this.review = null;
      });
      await this.review;
    }
  }

  private async reviewTrust(t: SessionTrust): Promise<void> {
    const revision = this.o.pki.pollTrust();
    const trustedBy = this.o.pki.trustedCertificates();
    const crlsBy = this.o.pki.revocationLists();
    const { status, refusal } = await t.verify(t.certificate);
    if (this.trust !== t) return;
    if (!(status instanceof Error) && status.isGood()) {
      t.revision = revision;
      t.trustedBy = trustedBy;
      t.crlsBy = crlsBy;
      return;
    }
    this.revoke(t, status, refusal);
  }

  /**
   * The session's server certificate is no longer trusted (an operator removed it, or its CA,
   * from trusted/certs/): a compromised or replaced PLC must not receive one more write. The
   * session and its secure channel are closed now rather than at the next connection; a request
   * on its way fails with its outcome unknown (the core's rules for a lost connection), and the
   * next connection attempt is refused by the store's check, as any untrusted certificate is.
   */
  private revoke(
    t: SessionTrust,
    status: StatusCode | Error,
    refusal: CertificateRefusal | null,
  ): void {
    const facts = t.facts;
    const now = this.o.pki.trustedCertificates();
    const removed = t.trustedBy.filter(
      (f) => !now.some((n) => n.file === f.file && n.thumbprint === f.thumbprint),
    );
    // The files that held this very certificate, else (trusted through a CA) whatever went.
    const own = removed.filter((f) => f.thumbprint !== null && f.thumbprint === facts?.thumbprint);
    const named = (own.length > 0 ? own : removed).map((f) => f.file);
    // A revocation list put in trusted/crl/ or issuers/crl/, or written over, since the last check.
    const lists = this.o.pki
      .revocationLists()
      .filter((line) => !t.crlsBy.includes(line))
      .map(crlFile);
    const why =
      status instanceof Error
        ? `its check failed: ${describeError(status)}`
        : refusal !== null && refusal.status.value !== StatusCodes.BadCertificateUntrusted.value
          ? describeRefusal(refusal, this.o.endpointUrl, this.o.pki.dir)
          : status.name;
    const gone =
      named.length > 0
        ? `: ${named.map((f) => `'${f}'`).join(', ')} removed from trusted/certs/`
        : lists.length > 0
          ? `: revocation list ${lists.map((f) => `'${f}'`).join(', ')} changed`
          : '';
    const reason =
      refusal?.unchecked !== undefined
        ? `${why}; the session with it was closed, and no request goes to it until a check completes`
        : `${certificateName(facts, this.o.endpointUrl)} is no longer trusted${gone}; the session with it was closed, and no request goes to it until an operator trusts it again (${why})`;
    this.log.error(
      {
        endpointUrl: this.o.endpointUrl,
        thumbprint: facts?.thumbprint ?? null,
        subject: facts?.subject ?? null,
        removed: named,
        revocationLists: lists,
        status: status instanceof Error ? describeError(status) : status.name,
        reason,
      },
      'opc ua server certificate no longer trusted: session closed',
    );
    this.drop(t.client, reason);
  }

  /**
   * Closes the session (`expire`) if the gateway's clock is outside its server certificate's
   * validity period, as the store's check refuses such a certificate at connection
   * (BadCertificateTimeInvalid): a PLC must not keep receiving writes on a session opened while
   * its certificate was valid. Looked at before every request, so that a wall clock stepped past
   * the certificate's notAfter is caught too, and at notAfter itself (`watchValidity`).
   */
  private checkValidity(): void {
    const t = this.trust;
    if (t === null || t.facts === null) return;
    const at = this.o.clock.now();
    if (at < t.facts.validFrom || at > t.facts.validTo) this.expire(t, t.facts, at);
  }

  /**
   * Sets a timer for just past the session's server certificate's notAfter, so that an idle
   * session is closed when it expires, without a request to notice it. The timer runs on the
   * monotonic clock and is bounded (MAX_TIMER_MS, about 24.8 days, as every timer must be):
   * when it fires before the wall clock says notAfter (the bound, or the clock stepped back) it
   * is set again.
   */
  private watchValidity(): void {
    this.cancelValidity?.();
    this.cancelValidity = null;
    this.checkValidity();
    const t = this.trust;
    // A date Node could not parse (NaN) would make the timer fire at once, again and again.
    if (t === null || t.facts === null || !Number.isFinite(t.facts.validTo)) return;
    const ms = Math.min(Math.max(t.facts.validTo - this.o.clock.now() + 1, 1), MAX_TIMER_MS);
    this.cancelValidity = timer(this.o.clock, ms, () => {
      this.cancelValidity = null;
      if (this.trust === t) this.watchValidity();
    });
  }

  /**
   * The session's server certificate has expired (or is not yet valid, the gateway's clock
   * stepped back): the session is closed as for a revocation (`revoke`), and the next connection
   * is refused by the store's check with the certificate's dates.
   */
  private expire(t: SessionTrust, facts: CertificateFacts, at: number): void {
    const iso = (ms: number): string => new Date(ms).toISOString();
    const when =
      at > facts.validTo
        ? `expired on ${iso(facts.validTo)}`
        : `is not valid before ${iso(facts.validFrom)}`;
    const reason = `${certificateName(facts, this.o.endpointUrl)} ${when} (the gateway's clock reads ${iso(at)}); the session with it was closed, and no request goes to it until the PLC's certificate is renewed, or the PLC's or the gateway's clock set right (BadCertificateTimeInvalid)`;
    this.log.error(
      {
        endpointUrl: this.o.endpointUrl,
        thumbprint: facts.thumbprint,
        subject: facts.subject,
        removed: [],
        revocationLists: [],
        status: StatusCodes.BadCertificateTimeInvalid.name,
        notBefore: iso(facts.validFrom),
        notAfter: iso(facts.validTo),
        at: iso(at),
      },
      'opc ua server certificate no longer trusted: session closed',
    );
    this.drop(t.client, reason);
  }

  async close(): Promise<void> {
    this.closed = true;
    this.unwatchTrust?.();
    this.unwatchTrust = null;
    this.cancelValidity?.();
    this.cancelValidity = null;
    const client = this.client;
    const session = this.session;
    this.session = null;
    this.client = null;
    this.namespaceIndex = null;
    this.trust = null;
    this.linkUp = false;
    try {
      if (session !== null) await withTimeout(session.close(), 2000, 'session close timed out');
    } catch (error) {
      this.log.debug({ err: error }, 'session close failed');
    }
    try {
      if (client !== null) await withTimeout(client.disconnect(), 2000, 'disconnect timed out');
    } catch (error) {
      this.log.debug({ err: error }, 'disconnect failed');
    }
  }

  private ready(signal?: AbortSignal): ClientSession {
    if (signal?.aborted === true) throw new DeviceUnreachableError(`${this.name}: aborted`);
    if (this.closed) throw new NotConnectedError(`${this.name}: endpoint closed`);
    if (this.session === null || !this.linkUp) {
      this.start();
      throw new NotConnectedError(
        `${this.name}: not connected to ${this.o.endpointUrl} (${this.health.snapshot().lastError ?? 'connecting'})`,
      );
    }
    // The server lost the session (BadSessionIdInvalid: timed out on its side, its session
    // layer restarted) and node-opcua is making a new one on the same channel, every 2 s for as
    // long as the server refuses. It holds every request handed to the session meanwhile and
    // sends them all once it has one: a read the driver gave up on at its timeout would still
    // reach the server then, one per monitor period and readback, in a burst (measured: 26
    // Reads for 2 answered). Nothing is sent until the session is back.
    if (this.session.isReconnecting) {
      throw new NotConnectedError(
        `${this.name}: no session with ${this.o.endpointUrl}: the server lost it, a new one is being made`,
      );
    }
    if (this.namespaceIndex === null) {
      throw new NotConnectedError(
        `${this.name}: no session with ${this.o.endpointUrl} yet: its namespace index is being read again after a new session`,
      );
    }
    return this.session;
  }

  /**
   * The index of the controller's namespace on `session`, read from the server now (maxAge 0).
   * Not session.readNamespaceArray(): it answers from a copy node-opcua keeps on the session
   * object, which node-opcua 2.182 clears only when it makes a new session, not when it
   * reactivates the old one after a reconnection; the server's own answer is what counts.
   * Throws when the server has no such namespace (NamespaceMissingError), or did not answer.
   */
  private async readNamespaceIndex(session: ClientSession): Promise<number> {
    const value = await withTimeout(
      session.read({ nodeId: NAMESPACE_ARRAY, attributeId: AttributeIds.Value }, 0),
      this.requestTimeoutMs,
      `${this.name}: reading the NamespaceArray timed out after ${this.requestTimeoutMs} ms`,
    );
    if (!value.statusCode.isGood()) {
      throw new Error(`${this.name}: NamespaceArray: ${value.statusCode.name}`);
    }
    const namespaces: unknown = value.value.value;
    if (!Array.isArray(namespaces) || !namespaces.every((n) => typeof n === 'string')) {
      throw new Error(`${this.name}: the server's NamespaceArray is not a list of URIs`);
    }
    const index = namespaces.indexOf(this.o.namespaceUri);
    if (index < 0) {
      throw new NamespaceMissingError(
        `${this.o.endpointUrl} has no namespace ${this.o.namespaceUri} (it has ${namespaces.join(', ')}): nothing is read from or written to it`,
      );
    }
    return index;
  }

  /**
   * After a reconnection (`connection_reestablished`) or a new session node-opcua made for one
   * the server lost (`session_restored`): reads the namespace index again before the link is
   * used. A changed index is used from now on, and said; a server that no longer has the
   * controller's namespace, or that does not answer, has its client given up (`abandon`): the
   * endpoint starts over at its backoff's pace, and its next session is refused with the reason
   * while the namespace is missing. False when the link is no longer this one (`epoch`).
   */
  private async renewNamespace(
    client: OPCUAClient,
    session: ClientSession,
    epoch: number,
  ): Promise<boolean> {
    let index: number;
    try {
      index = await this.readNamespaceIndex(session);
    } catch (error) {
      if (this.client !== client || this.epoch !== epoch) return false;
      this.abandon(
        client,
        error instanceof NamespaceMissingError
          ? `${error.message} (found on a new session: the server restarted or changed)`
          : `namespace index not read again after the new session: ${describeError(error)}`,
      );
      return false;
    }
    if (this.client !== client || this.epoch !== epoch || this.session !== session) return false;
    this.adoptNamespace(index);
    return true;
  }

  /** Uses `index` for the controller's namespace from now on, saying so when it changed. */
  private adoptNamespace(index: number): void {
    if (this.lastNamespaceIndex !== null && index !== this.lastNamespaceIndex) {
      this.log.warn(
        {
          endpointUrl: this.o.endpointUrl,
          namespaceUri: this.o.namespaceUri,
          was: this.lastNamespaceIndex,
          now: index,
        },
        'opc ua namespace index changed on the new session; the new one is used',
      );
    }
    this.namespaceIndex = index;
    this.lastNamespaceIndex = index;
  }

  private failure(error: unknown, what: string): DeviceUnreachableError {
    const message = `${this.name}: ${what}: ${describeError(error)}`;
    this.health.error(message);
    return error instanceof DeviceUnreachableError
      ? error
      : new DeviceUnreachableError(message, { cause: error });
  }

  /**
   * Gives `client` up (its reconnection included) and lets the next request start a new one
   * after the backoff. Nothing is in flight on it: requests are refused while its link is down.
   */
  private abandon(client: OPCUAClient, reason: string): void {
    if (this.drop(client, reason)) {
      this.log.warn(
        { reason },
        'opc ua reconnection given up; a new connection follows the backoff',
      );
    }
  }

  /**
   * Gives `client` up now: refuses every request from here on (nothing more is sent on it),
   * closes its session and channel in the background, and lets the next request start a new
   * one after the backoff. False if it is no longer the endpoint's.
   */
  private drop(client: OPCUAClient, reason: string): boolean {
    if (this.client !== client || this.closed) return false;
    const session = this.session;
    this.client = null;
    this.session = null;
    this.namespaceIndex = null;
    this.trust = null;
    this.cancelValidity?.();
    this.cancelValidity = null;
    this.starting = null;
    this.epoch++;
    this.linkUp = false;
    this.health.disconnected();
    this.health.error(`${this.name}: ${reason}`);
    this.backoff.failed(this.o.clock.elapsed());
    void (async () => {
      if (session !== null) {
        await withTimeout(session.close(), 2000, 'session close').catch(() => undefined);
      }
      await withTimeout(client.disconnect(), 2000, 'disconnect').catch(() => undefined);
    })();
    return true;
  }

  private async connect(): Promise<void> {
    // trusted/certs/ as the store's check below sees it: a change after it is checked again.
    const trustRevision = this.o.pki.pollTrust();
    const trustedBy = this.o.pki.trustedCertificates();
    const crlsBy = this.o.pki.revocationLists();
    // What the certificate check refused during this attempt, if anything.
    const check: { refused: CertificateRefusal | null } = { refused: null };
    const store = this.o.pki.viewFor(
      () => this.o.clock.now(),
      (refusal) => {
        check.refused = refusal;
      },
    );
    const client = OPCUAClient.create({
      applicationName: 'Sluice',
      // One client certificate serves every endpoint, so one application URI (it is in the
      // certificate, and servers check that they match).
      applicationUri: this.o.pki.applicationUri,
      clientName: `sluice-${this.name}`,
      endpointMustExist: false,
      securityMode: MODES[this.o.securityMode],
      securityPolicy: POLICIES[this.o.securityPolicy],
      clientCertificateManager: store,
      keepSessionAlive: true,
      requestedSessionTimeout: 60_000,
      // Reconnect forever with exponential backoff: a PLC that reboots comes back by itself.
      connectionStrategy: {
        initialDelay: 250,
        maxDelay: 10_000,
        maxRetry: -1,
        randomisationFactor: 0.2,
      },
    });
    this.client = client;
    // Only the endpoint's current client speaks for its link: one given up (abandon, a failed
    // attempt) may still emit while it closes, and must not take down its successor's.
    const current = (): boolean => this.client === client;
    client.on('connection_lost', () => {
      if (!current()) return;
      this.epoch++;
      this.linkUp = false;
      this.namespaceIndex = null;
      this.health.disconnected();
      this.log.warn({}, 'opc ua connection lost; reconnecting');
    });
    // node-opcua reconnects on the server certificate it fetched when it first connected, and
    // checks it no more: a certificate an operator removed from trusted/certs/ (revoked), or one
    // that expired, would be used for every reconnection for as long as this client lives. It
    // is checked again here before the link is used (requests are refused until then); refused,
    // the client is given up, and the endpoint's next connection is refused with the reason.
    client.on('connection_reestablished', () => {
      if (!current()) return;
      const epoch = ++this.epoch;
      const certificate = client.serverCertificate;
      const revision = this.o.pki.pollTrust();
      const trustedBy = this.o.pki.trustedCertificates();
      const crlsBy = this.o.pki.revocationLists();
      void (async () => {
        let status: StatusCode | Error = StatusCodes.Good;
        try {
          // Security mode None: no certificate, none checked at first either.
          if (certificate !== undefined) status = await store.checkCertificate(certificate);
        } catch (error) {
          status = error instanceof Error ? error : new Error(String(error));
        }
        if (!current() || this.epoch !== epoch) return;
        if (status instanceof Error || !status.isGood()) {
          const refusal = check.refused;
          check.refused = null;
          this.abandon(
            client,
            refusal === null
              ? `server certificate check on reconnection failed: ${describeError(status)}`
              : describeRefusal(refusal, this.o.endpointUrl, this.o.pki.dir),
          );
          return;
        }
        if (this.trust !== null && certificate !== undefined) {
          const facts = readLeaf(certificate);
          this.trust = { ...this.trust, certificate, facts, revision, trustedBy, crlsBy };
        }
        // The server may have restarted with its namespaces in another order: nothing is sent
        // until the index is read again (requests are refused while the link is down).
        const session = this.session;
        if (session === null || !(await this.renewNamespace(client, session, epoch))) return;
        this.linkUp = true;
        this.health.connected();
        this.log.info({}, 'opc ua connection re-established');
        this.watchValidity();
      })();
    });
    client.on('backoff', (count: number, delay: number) => {
      if (!current()) return;
      this.health.error(`${this.name}: connection attempt ${count} failed; next in ${delay} ms`);
    });
    // node-opcua retries a reconnection that failed past the TCP connect (the server's
    // certificate refused, the server closing the channel at once while it boots) at once, on
    // the next turn of the event loop, without its backoff and without a word: measured, a
    // thousand attempts a second and the CPU taken for as long as it lasts. Such a client is
    // given up, and the endpoint starts over with a new one at its own backoff's pace, saying
    // why (a new session: the server lost the old one, or will let it time out).
    client.on('reconnection_attempt_has_failed', (error: Error) => {
      const refusal = check.refused;
      check.refused = null;
      this.abandon(
        client,
        refusal === null
          ? `reconnection failed: ${describeError(error)}`
          : describeRefusal(refusal, this.o.endpointUrl, this.o.pki.dir),
      );
    });
    let session: ClientSession | null = null;
    this.log.debug({ endpointUrl: this.o.endpointUrl }, 'opc ua connecting');
    try {
      await client.connect(this.o.endpointUrl);
      if (this.closed) throw new Error('endpoint closed while connecting');
      session = await client.createSession();
      this.adoptNamespace(await this.readNamespaceIndex(session));
    } catch (error) {
      // A failed attempt leaves nothing behind: the next one starts from a new client.
      if (this.client === client) this.client = null;
      if (session !== null) {
        await withTimeout(session.close(), 2000, 'session close').catch(() => undefined);
      }
      await withTimeout(client.disconnect(), 2000, 'disconnect').catch(() => undefined);
      this.backoff.failed(this.o.clock.elapsed());
      // node-opcua says only "server Certificate verification failed with err <status>".
      if (check.refused !== null) {
        throw new Error(describeRefusal(check.refused, this.o.endpointUrl, this.o.pki.dir), {
          cause: error,
        });
      }
      throw error;
    }
    this.backoff.reset();
    this.session = session;
    // node-opcua makes a new session by itself for one the server lost (BadSessionIdInvalid on
    // the same channel: the server restarted its session layer), and after a reconnection whose
    // old session the server no longer has. Either is a session of a server that may have
    // ordered its namespaces anew: the index is read again before anything is sent on it. Said
    // while node-opcua still counts the session as being repaired (ready() refuses requests), so
    // none goes out in between. After a reconnection, connection_reestablished reads it.
    const opened = session;
    session.on('session_restored', () => {
      if (!current() || this.session !== opened) return;
      this.epoch++;
      this.namespaceIndex = null;
      if (!this.linkUp) return;
      const epoch = this.epoch;
      void this.renewNamespace(client, opened, epoch);
    });
    const certificate = client.serverCertificate;
    this.trust =
      certificate === undefined || this.o.securityMode === 'None'
        ? null
        : {
            client,
            certificate,
            facts: readLeaf(certificate),
            verify: async (certificate) => {
              check.refused = null;
              let status: StatusCode | Error;
              try {
                status = await store.checkCertificate(certificate);
              } catch (error) {
                status = error instanceof Error ? error : new Error(String(error));
              }
              // Set by the check (the store's `refused`), which the compiler cannot see.
              const refusal = check.refused as CertificateRefusal | null;
              check.refused = null;
              return { status, refusal };
            },
            revision: trustRevision,
            trustedBy,
            crlsBy,
          };
    this.linkUp = true;
    this.health.connected();
    this.log.info(
      { endpointUrl: this.o.endpointUrl, namespaceIndex: this.namespaceIndex },
      'opc ua session open',
    );
    this.watchValidity();
  }
}

export interface OpcuaDeviceOptions {
  readonly id: string;
  readonly profile: DeviceProfile;
  readonly endpoint: OpcuaEndpoint;
  /** The device's object name in the controller's namespace (default: the device id). */
  readonly object?: string;
  readonly clock: Clock;
}

/** A command's write with its monotonic deadline on this driver's clock (CommandWrite.timeLeftMs). */
type BoundedWrite = CommandWrite & { readonly notAfterMono: number | undefined };

/** The driver port for one device on an OPC UA controller (node names: docs/device-profiles.md). */
export class OpcuaDeviceDriver implements DeviceDriver {
  private readonly o: OpcuaDeviceOptions;
  private readonly names: NonNullable<DeviceProfile['opcua']>;
  private readonly object: string;

  constructor(options: OpcuaDeviceOptions) {
    if (options.profile.opcua === undefined) {
      throw new Error(`profile ${options.profile.profile} has no OPC UA node names`);
    }
    this.o = options;
    this.names = options.profile.opcua;
    this.object = options.object ?? options.id;
  }

  async read(signal?: AbortSignal): Promise<Readback> {
    const e = this.o.endpoint;
    const s = this.names.status;
    // Only the mapped variables are read; an unmapped one reads as absent (null).
    const mapped = (
      [
        ['state', s.state],
        ['position', s.position],
        ['fault', s.fault],
        ['seqEcho', s.seqEcho],
        ['time', s.time],
      ] as const
    ).filter((entry): entry is [(typeof entry)[0], string] => entry[1] !== undefined);
    await e.sessionOpening(signal);
    const nodes = mapped.map(([, name]) => ({ object: this.object, name }));
    const { values, requestedAt, receivedAt } = await e.read(nodes, signal);
    const get = (name: (typeof mapped)[number][0]): DataValue | undefined => {
      const i = mapped.findIndex(([field]) => field === name);
      return i < 0 ? undefined : values[i];
    };
    const state = get('state');
    const position = get('position')?.value.value as unknown;
    const seq = get('seqEcho');
    const scan = get('time')?.value.value as unknown;
    // The image's production time when the controller publishes one (its scan time);
    // otherwise the newest source timestamp: when the controller last changed any value.
    const scanTime = scan instanceof Date ? scan.getTime() : null;
    const times = mapped
      .map(([field], i) => (field === 'time' ? undefined : values[i]?.sourceTimestamp?.getTime()))
      .filter((t): t is number => typeof t === 'number' && t > 0);
    const faultCode = Number(get('fault')?.value.value ?? 0);
    return {
      state: String(state?.value.value),
      position: typeof position === 'number' ? position : null,
      seq: seq === undefined ? null : Number(seq.value.value ?? 0),
      faultCode: faultCode === 0 ? null : faultCode,
      sourceTime:
        scanTime !== null && scanTime > 0
          ? scanTime
          : times.length === 0
            ? null
            : Math.max(...times),
      sourceIsScan: scanTime !== null && scanTime > 0,
      requestedAt,
      receivedAt,
    };
  }

  async write(unbounded: CommandWrite, signal?: AbortSignal): Promise<void> {
    // Its monotonic deadline, counted from now (CommandWrite.timeLeftMs).
    const command: BoundedWrite = {
      ...unbounded,
      notAfterMono:
        unbounded.timeLeftMs === undefined
          ? undefined
          : this.o.clock.elapsed() + unbounded.timeLeftMs,
    };
    const e = this.o.endpoint;
    const c = this.names.command;
    const value = (name: string, dataType: DataType, v: number): WriteValueOptions => ({
      nodeId: e.nodeId(this.object, name),
      attributeId: AttributeIds.Value,
      value: { value: { dataType, value: v } },
    });
    // A server whose certificate was revoked meanwhile gets nothing (its session is closed
    // here); waited for before the deadline is judged.
    await e.settleTrust();
    // Not sent at all past the command's deadline (I3), nor once withdrawn: the session sends
    // at once, so this is the last moment before the write goes out.
    const before = this.notSent(command, 'write');
    if (before !== null) throw before;
    // Code and setpoint first, the sequence number (the trigger) only once they are in place:
    // a controller must never take a new sequence number with a stale code. Without a
    // sequence number, the code (with its setpoint) is the trigger.
    const seqNode = c.seq;
    await this.sendOnSession(command, 'write', () =>
      e.write(
        [
          value(c.code, DataType.UInt16, commandCode(this.o.profile, command.action)),
          ...(c.setpoint === undefined
            ? []
            : [value(c.setpoint, DataType.Double, command.position ?? 0)]),
        ],
        seqNode === undefined,
        signal,
      ),
    );
    if (seqNode === undefined) return;
    // The trigger is checked again: its deadline may have passed, or it may have been withdrawn,
    // while the first request was on its way. Without the trigger the controller takes nothing
    // (the code and setpoint wait for a sequence number that does not come).
    await e.settleTrust();
    const trigger = this.notSent(command, 'trigger');
    if (trigger !== null) throw trigger;
    await this.sendOnSession(command, 'trigger', () =>
      e.write([value(seqNode, DataType.UInt16, command.seq)], true, signal),
    );
  }

  /**
   * Sends one request of the write. With no session to send it on (NotConnectedError: thrown
   * before anything reached node-opcua) it was never sent: WriteNotSentError `no-connection`
   * — unless its deadline passed or it was withdrawn meanwhile, which says more. A request
   * handed to the session that then failed is not that: its outcome is unknown.
   */
  private async sendOnSession(
    command: BoundedWrite,
    stage: 'write' | 'trigger',
    send: () => Promise<void>,
  ): Promise<void> {
    try {
      await send();
    } catch (error) {
      if (!(error instanceof NotConnectedError)) throw error;
      throw (
        this.notSent(command, stage, `no session with the controller (${error.message})`) ?? error
      );
    }
  }

  /**
   * Why `command` must not be sent now (past its deadline, withdrawn), or null: before its
   * first request (`write`), or before its trigger once the code and setpoint are written.
   * With `noSession` (why there is no session), the request found none to go out on: not
   * sent, for that reason, when nothing else forbids it.
   */
  private notSent(
    command: BoundedWrite,
    stage: 'write' | 'trigger',
    noSession?: string,
  ): WriteNotSentError | null {
    const [what, during, outcome] =
      stage === 'write'
        ? ['write', '', 'nothing was written']
        : [
            'trigger (the sequence number)',
            ' while the code and setpoint were on their way',
            'the controller takes nothing without it',
          ];
    // The later of the two measures: a step of the wall clock back must not give the write its
    // time again, nor one forward a receipt-timed command's (it has no notAfter).
    const late = Math.max(
      command.notAfter === undefined ? -Infinity : this.o.clock.now() - command.notAfter,
      command.notAfterMono === undefined
        ? -Infinity
        : this.o.clock.elapsed() - command.notAfterMono,
    );
    if (late >= 0) {
      return new WriteNotSentError(
        `${this.o.id}: ${what} not sent: its deadline passed ${Math.round(late)} ms ago${during}; ${outcome}`,
        'deadline',
      );
    }
    if (command.withdrawn?.aborted === true) {
      return new WriteNotSentError(
        `${this.o.id}: ${what} not sent: withdrawn${during}; ${outcome}`,
        'withdrawn',
      );
    }
    if (noSession !== undefined) {
      const after = stage === 'write' ? '' : ' (the code and setpoint were written)';
      return new WriteNotSentError(
        `${this.o.id}: ${what} not sent: ${noSession}${after}; ${outcome}`,
        'no-connection',
      );
    }
    return null;
  }

  async readClock(signal?: AbortSignal): Promise<ClockSample> {
    await this.o.endpoint.sessionOpening(signal);
    const { values, requestedAt, receivedAt } = await this.o.endpoint.read(
      [SERVER_CURRENT_TIME],
      signal,
    );
    const time = values[0]?.value.value as unknown;
    if (!(time instanceof Date)) throw new DeviceUnreachableError(`${this.o.id}: no server time`);
    return { controllerTime: time.getTime(), requestedAt, receivedAt };
  }

  health(): DeviceHealth {
    return this.o.endpoint.health.snapshot();
  }
}
