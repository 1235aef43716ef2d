import {
  AttributeIds,
  ClientSecureChannelLayer,
  DataType,
  MessageSecurityMode,
  OPCUAClient,
  SecurityPolicy,
  StatusCodes,
  type ClientSession,
  type DataValue,
  type StatusCode,
  type WriteValueOptions,
} from 'node-opcua';
import { Backoff } from '../backoff.js';
import { MAX_TIMER_MS, firstOf, timer, type Clock } from '../core/clock.js';
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
import { fetchServerCertificate, transportFactoryFor } from './opcua-address.js';
import { applicationUriMismatch } from './opcua-binding.js';
import {
  certificateName,
  crlFile,
  describeRefusal,
  readLeaf,
  type OpcuaClientPki,
  type CertificateFacts,
  type CertificateRefusal,
  type TrustedFile,
} from './opcua-pki.js';
import {
  BUSY,
  ServiceResultError,
  WRITE_NOT_PROCESSED,
  preparationOutcome,
  triggerOutcome,
  transactionTimeoutMs,
  writeOnce,
  type OneShotSession,
  type Preparation,
  type WriteFault,
} from './opcua-writes.js';

export { OpcuaClientPki } from './opcua-pki.js';

export type OpcuaSecurityMode = 'None' | 'Sign' | 'SignAndEncrypt';
export type OpcuaSecurityPolicy =
  'None' | 'Basic256Sha256' | 'Aes128_Sha256_RsaOaep' | 'Aes256_Sha256_RsaPss';

export interface OpcuaEndpointOptions {
  readonly name: string;
  readonly endpointUrl: string;
  /** Namespace of the controller's device nodes; its index is looked up after connecting. */
  readonly namespaceUri: string;
  readonly securityMode: OpcuaSecurityMode;
  readonly securityPolicy: OpcuaSecurityPolicy;
  readonly pki: OpcuaClientPki;
  /**
   * The SHA-256 of the one server certificate this PLC may present (plcs.<name>.
   * serverCertificateSha256): replaces the trust store's decision and the host-name check.
   */
  readonly serverCertificateSha256?: string | undefined;
  /** The server certificate need not name the endpoint URL's host (weakens: ServerBinding). */
  readonly acceptHostNameMismatch?: boolean | undefined;
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

/**
 * No session to send a request on (not connected yet, reconnecting, closed): thrown before
 * anything is handed to node-opcua, so nothing of the request left the process. A write
 * rejected so is never sent (OpcuaDeviceDriver.write: WriteNotSentError `no-connection`).
 */
class NotConnectedError extends DeviceUnreachableError {}

/**
 * The endpoint was closed (the daemon stops its drivers): no session now, and none again. A
 * write rejected so is never sent (WriteNotSentError `closed`): unlike a session lost, there is
 * no connection to wait for.
 */
class EndpointClosedError extends NotConnectedError {}

/** The server's NamespaceArray lacks the controller's namespace (OpcuaEndpoint.readNamespaceIndex). */
class NamespaceMissingError extends Error {}

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
   * Resolves once a session newer than `sinceEpoch` (HealthCounter's epoch: one per session
   * opened or link re-established) is up, or when `signal` aborts. node-opcua re-establishes a
   * lost link by itself; a session given up is opened again (start) as soon as the backoff
   * allows, as a read would, and again after each failed attempt.
   */
  async whenConnected(sinceEpoch: number, signal: AbortSignal): Promise<void> {
    while (!signal.aborted && !this.closed) {
      if (
        this.session !== null &&
        this.linkUp &&
        this.health.snapshot().connectionEpoch > sinceEpoch
      ) {
        return;
      }
      this.start();
      const wait = this.starting === null ? this.backoff.remaining(this.o.clock.elapsed()) : 0;
      const { clock } = this.o;
      // A session opened or re-established, or an attempt failed (health.error), wakes it.
      await firstOf(signal, [
        (over) => this.health.changed(over),
        ...(wait > 0 ? [(over: AbortSignal) => clock.sleep(wait, over)] : []),
      ]);
    }
    // A closed endpoint opens no session again: no news until the waiter gives up (see the
    // Modbus endpoint's whenConnected).
    await firstOf(signal, []);
  }

  /**
   * The NodeId of a device variable on the current session. Call it just before the request
   * that carries it is sent, in the same turn of the event loop: the namespace index may change
   * at any reconnection.
   */
  nodeId(object: string, name: string): string {
    if (this.closed) throw new EndpointClosedError(`${this.name}: endpoint closed`);
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
   * Sends one Write request. `role` `trigger`: the request that makes the controller take the
   * command (its sequence number, or without one its code), whose statuses are read for what
   * they say of the command's fate (triggerOutcome); a preparation, sent before the trigger,
   * must be answered plain Good, or the trigger is not sent after it (DeviceRefusedError).
   */
  async write(
    values: WriteValueOptions[],
    role: 'trigger' | Preparation,
    signal?: AbortSignal,
  ): Promise<void> {
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
        writeOnce(session, values, transactionTimeoutMs(this.requestTimeoutMs)),
        this.requestTimeoutMs,
        `${this.name}: write timed out after ${this.requestTimeoutMs} ms`,
      );
      outcome = role === 'trigger' ? triggerOutcome(results) : preparationOutcome(results, role);
    } catch (error) {
      // The server answered, but for the request as a whole (a ServiceFault): busy, or a Write
      // it did not process, is certain not applied; anything else leaves the outcome unknown.
      if (!(error instanceof ServiceResultError)) throw this.failure(error, 'write');
      const status = error.status;
      const notSent = role === 'trigger' ? '' : `; the trigger (${role.trigger}) was not sent`;
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
    if (this.closed) throw new EndpointClosedError(`${this.name}: endpoint closed`);
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
   * Why the server certificate `certificate` of `client`'s secure channel was not made for the
   * server it speaks for, or null: its subjectAltName URI must be the application URI of the
   * server's description of the endpoint (OPC 10000-4, 6.1.3: the ApplicationDescription
   * provided with the certificate), as the client last read it on its secured channel: at the
   * first connection, and again at the take-up of every reconnection (describedAgain), since
   * another server may answer at the address by then. Security None: no certificate, nothing
   * checked.
   */
  private applicationUriRefusal(
    client: OPCUAClient,
    certificate: Buffer | Buffer[] | undefined,
  ): CertificateRefusal | null {
    if (this.o.securityMode === 'None' || certificate === undefined) return null;
    const described = client.knowsServerEndpoint
      ? client.findEndpointForSecurity(MODES[this.o.securityMode], POLICIES[this.o.securityPolicy])
      : undefined;
    const mismatch = applicationUriMismatch(
      certificate,
      described?.server.applicationUri ?? undefined,
    );
    if (mismatch === null) return null;
    return {
      status: StatusCodes.BadCertificateUriInvalid,
      certificate: readLeaf(certificate),
      at: this.o.clock.now(),
      binding: mismatch,
    };
  }

  /**
   * Reads the server's endpoint descriptions again on `client`'s re-established secure channel,
   * for applicationUriRefusal: node-opcua keeps the ones it read at the first connection for
   * every reconnection, even one to another server that took the address since (a PLC replaced,
   * a twin line's PLC), whose certificate would then be held to the first server's application
   * URI: refused when it has another one, taken when it carries the first server's URI while
   * its own server describes itself with another. Null when read, or why they could not be.
   */
  private async describedAgain(client: OPCUAClient): Promise<Error | null> {
    if (this.o.securityMode === 'None') return null;
    try {
      await withTimeout(client.getEndpoints(), this.requestTimeoutMs, 'GetEndpoints');
      return null;
    } catch (error) {
      return error instanceof Error ? error : new Error(String(error));
    }
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
      {
        plc: this.name,
        endpointUrl: this.o.endpointUrl,
        serverCertificateSha256: this.o.serverCertificateSha256,
        acceptHostNameMismatch: this.o.acceptHostNameMismatch,
      },
    );
    // An IPv6 address as host: node-opcua's own transport cannot connect to it, and its client
    // fetches a secured endpoint's certificate over that transport (opcua-address.ts).
    const transport = transportFactoryFor(this.o.endpointUrl);
    let serverCertificate: Buffer | undefined;
    if (transport !== null && this.o.securityMode !== 'None') {
      try {
        serverCertificate = await fetchServerCertificate({
          endpointUrl: this.o.endpointUrl,
          transportFactory: transport,
          securityMode: MODES[this.o.securityMode],
          securityPolicy: POLICIES[this.o.securityPolicy],
          applicationName: 'Sluice',
          applicationUri: this.o.pki.applicationUri,
          store,
        });
        if (this.closed) throw new Error('endpoint closed while connecting');
      } catch (error) {
        this.backoff.failed(this.o.clock.elapsed());
        if (check.refused !== null) {
          throw new Error(describeRefusal(check.refused, this.o.endpointUrl, this.o.pki.dir), {
            cause: error,
          });
        }
        throw error;
      }
    }
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
      // Past the request timeout, so that the driver's own timeout ends a read (a write sets
      // its own in its header: writeOnce); no shorter than node-opcua's default.
      defaultTransactionTimeout: transactionTimeoutMs(
        this.requestTimeoutMs,
        ClientSecureChannelLayer.defaultTransactionTimeout,
      ),
      // Reconnect forever with exponential backoff: a PLC that reboots comes back by itself.
      connectionStrategy: {
        initialDelay: 250,
        maxDelay: 10_000,
        maxRetry: -1,
        randomisationFactor: 0.2,
      },
      ...(transport === null ? {} : { transportFactory: transport }),
      ...(serverCertificate === undefined ? {} : { serverCertificate }),
    });
    this.client = client;
    // Only the endpoint's current client speaks for its link: one given up (abandon, a failed
    // attempt) may still emit while it closes, and must not take down its successor's.
    const current = (): boolean => this.client === client;
    // A re-established link is being taken up (takeUp, below).
    let takingUp = false;
    client.on('connection_lost', () => {
      if (!current()) return;
      this.epoch++;
      this.linkUp = false;
      this.namespaceIndex = null;
      takingUp = false;
      this.health.disconnected();
      this.log.warn({}, 'opc ua connection lost; reconnecting');
    });
    // The take-up of a re-established link (connection_reestablished), under the epoch it
    // began in. node-opcua reconnects on the server certificate it fetched when it first
    // connected, and checks it no more: a certificate an operator removed from trusted/certs/
    // (revoked), or one that expired, would be used for every reconnection for as long as this
    // client lives. It is checked again here before the link is used (requests are refused
    // until then), its application URI against the endpoint description the server gives on
    // the new channel (describedAgain); refused, the client is given up, and the endpoint's next connection is
    // refused with the reason. Then the namespace index is read again, and the link raised.
    // A session node-opcua makes anew in the middle (the server lost the one the take-up reads
    // on: node-opcua says session_restored, and sends the read again on the new session) bumps
    // the epoch, which ends the take-up unfinished; it is started over under the new epoch
    // (session_restored, below), certificate check included. Ended without that, the link
    // stayed down for good: node-opcua counts it up and reports no other reconnection, and
    // every request was refused "not connected" until the daemon restarted.
    const takeUp = (): void => {
      takingUp = true;
      const epoch = this.epoch;
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
        if (!(status instanceof Error) && status.isGood() && certificate !== undefined) {
          // The certificate is checked against the description of the server that presents
          // it now, not the one read at the first connection.
          const unread = await this.describedAgain(client);
          if (!current() || this.epoch !== epoch) return;
          if (unread !== null) {
            this.abandon(
              client,
              `the server's endpoint description could not be read on reconnection, so its certificate cannot be checked against it: ${describeError(unread)}`,
            );
            return;
          }
          const refusal = this.applicationUriRefusal(client, certificate);
          if (refusal !== null) {
            check.refused = refusal;
            status = refusal.status;
          }
        }
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
        takingUp = false;
        this.linkUp = true;
        this.health.connected();
        this.log.info({}, 'opc ua connection re-established');
        this.watchValidity();
      })();
    };
    client.on('connection_reestablished', () => {
      if (!current()) return;
      this.epoch++;
      takeUp();
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
      // Before a session is made: the certificate the secure channel was opened with must have
      // been made for the server that describes itself on that channel.
      const uriRefusal = this.applicationUriRefusal(client, client.serverCertificate);
      if (uriRefusal !== null) {
        check.refused = uriRefusal;
        throw new Error(`server certificate refused: ${uriRefusal.status.name}`);
      }
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
    // none goes out in between. After a reconnection, connection_reestablished reads it; one
    // made while that take-up is under way starts the take-up over (takeUp).
    const opened = session;
    session.on('session_restored', () => {
      if (!current() || this.session !== opened) return;
      this.epoch++;
      this.namespaceIndex = null;
      if (!this.linkUp) {
        if (takingUp) takeUp();
        return;
      }
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

/**
 * A command's write as Write requests: the preparation, when the trigger needs one, then the
 * trigger. Their values are made just before each request is sent (OpcuaEndpoint.nodeId).
 */
interface WritePlan {
  readonly preparation: {
    readonly role: Preparation;
    readonly values: () => WriteValueOptions[];
  } | null;
  readonly trigger: () => WriteValueOptions[];
}

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
    // Only the mapped variables are read; an unmapped one reads as absent (null). In the order
    // the Modbus driver reads them (modbus-map.ts, StatusPlan): the image time first, then the
    // echo, then state, position and fault. A server need only read each Variable atomically
    // (OPC UA Part 4, Read), and one that reads them one by one across a controller scan then
    // shows a time that can only make the image look older than it is, and a state that
    // already reflects the command the echo names: never a reset's echo with the FAULT from
    // before it.
    const mapped = (
      [
        ['time', s.time],
        ['seqEcho', s.seqEcho],
        ['state', s.state],
        ['position', s.position],
        ['fault', s.fault],
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
    // The trigger makes the controller take the command: its sequence number, or without one
    // its code. What the trigger needs goes first, in a request of its own that must be answered
    // plain Good (a preparation): the code and setpoint before the sequence number, so that a
    // controller never takes a new sequence number with a stale code; the setpoint before the
    // code, so that a controller never takes the code with the previous setpoint. The server
    // answers each node of a request on its own, and need not write them at once nor in the
    // request's order: had the code and setpoint gone in one request, the code could be
    // written, and taken, with the setpoint refused or not yet written.
    const setpointNode = c.setpoint;
    const setpoint = (): WriteValueOptions[] =>
      setpointNode === undefined
        ? []
        : [value(setpointNode, DataType.Double, command.position ?? 0)];
    const code = (): WriteValueOptions =>
      value(c.code, DataType.UInt16, commandCode(this.o.profile, command.action));
    const seqNode = c.seq;
    const plan: WritePlan =
      seqNode === undefined
        ? {
            preparation:
              setpointNode === undefined
                ? null
                : {
                    role: { writes: 'the setpoint', plural: false, trigger: 'the code' },
                    values: setpoint,
                  },
            trigger: () => [code()],
          }
        : {
            preparation: {
              role: {
                writes: setpointNode === undefined ? 'the code' : 'the code and setpoint',
                plural: setpointNode !== undefined,
                trigger: 'the sequence number',
              },
              values: () => [code(), ...setpoint()],
            },
            trigger: () => [value(seqNode, DataType.UInt16, command.seq)],
          };
    const { preparation, trigger } = plan;
    if (preparation !== null) {
      await this.sendOnSession(command, 'write', () =>
        e.write(preparation.values(), preparation.role, signal),
      );
      // The trigger is checked again: its deadline may have passed, or it may have been
      // withdrawn, while the first request was on its way. Without the trigger the controller
      // takes nothing (what the first wrote waits for a trigger that does not come).
      await e.settleTrust();
      const notSent = this.notSent(command, preparation.role);
      if (notSent !== null) throw notSent;
    }
    await this.sendOnSession(command, preparation?.role ?? 'write', () =>
      e.write(trigger(), 'trigger', signal),
    );
  }

  /**
   * Sends one request of the write. With no session to send it on (NotConnectedError: thrown
   * before anything reached node-opcua) it was never sent: WriteNotSentError `no-connection`,
   * or `closed` once the endpoint is (EndpointClosedError) — unless its deadline passed or it
   * was withdrawn meanwhile, which says more. A request
   * handed to the session that then failed is not that: its outcome is unknown.
   */
  private async sendOnSession(
    command: BoundedWrite,
    stage: 'write' | Preparation,
    send: () => Promise<void>,
  ): Promise<void> {
    try {
      await send();
    } catch (error) {
      if (!(error instanceof NotConnectedError)) throw error;
      throw (
        this.notSent(command, stage, {
          why: `no session with the controller (${error.message})`,
          closed: error instanceof EndpointClosedError,
        }) ?? error
      );
    }
  }

  /**
   * Why `command` must not be sent now (past its deadline, withdrawn), or null: before its
   * first request (`write`), or before its trigger once the preparation (`stage`: the code and
   * setpoint, or the setpoint) is written.
   * With `noSession` (why there is no session, and whether the endpoint is closed for good),
   * the request found none to go out on: not sent, for that reason, when nothing else forbids
   * it.
   */
  private notSent(
    command: BoundedWrite,
    stage: 'write' | Preparation,
    noSession?: { readonly why: string; readonly closed: boolean },
  ): WriteNotSentError | null {
    const [what, during, after, outcome] =
      stage === 'write'
        ? ['write', '', '', 'nothing was written']
        : [
            `trigger (${stage.trigger})`,
            ` while ${stage.writes} ${stage.plural ? 'were on their' : 'was on its'} way`,
            ` (${stage.writes} ${stage.plural ? 'were' : 'was'} written)`,
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
      return new WriteNotSentError(
        `${this.o.id}: ${what} not sent: ${noSession.why}${after}; ${outcome}`,
        noSession.closed ? 'closed' : 'no-connection',
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

  whenConnected(sinceEpoch: number, signal: AbortSignal): Promise<void> {
    return this.o.endpoint.whenConnected(sinceEpoch, signal);
  }
}
