import type { AddressInfo } from 'node:net';
import { createSecureContext } from 'node:tls';
import { systemClock, type Clock } from '../core/clock.js';
import type { Logger } from '../core/logger.js';
import type { CommandPipeline } from '../core/pipeline.js';
import {
  certificateVerdict,
  serverCertificate,
  type CertificateVerdict,
  type ServerCertificate,
} from './https-certificate.js';
import { registerCommandRoutes } from './https-command-routes.js';
import type { DrainLimits } from './https-drain.js';
import { CallerGuard } from './https-guard.js';
import { MethodTable } from './https-methods.js';
import { registerReadRoutes } from './https-read-routes.js';
import {
  createServer,
  secureContextOptions,
  type HttpsTimeouts,
  type TlsMaterial,
} from './https-server.js';
import type { App, HttpsConfig, HttpsMetrics, Readiness } from './https-types.js';
import type { IdentityRegistry } from './identities.js';
import { FailedAuthentications } from './rate-limit.js';
import { registerUiRoutes, type UiOptions } from './ui-routes.js';

/**
 * The HTTPS intake (SPEC §4): keyed commands over TLS 1.3 with bearer tokens or client
 * certificates, the command and device read API, and the health, readiness and metrics
 * endpoints. This file composes the parts and owns start and stop:
 *
 * - https-server.ts: TLS, limits, body parsing, the hooks every request goes through;
 * - https-guard.ts: authentication and the per-identity rate limit of the `/v1` routes;
 * - https-command-routes.ts: `POST /v1/commands`;
 * - https-read-routes.ts: commands, devices, health, readiness, metrics;
 * - https-methods.ts: `OPTIONS`, and `405` with `Allow` for the other methods;
 * - https-problems.ts: every error as an RFC 9457 problem document;
 * - ui-routes.ts: the operator status page under `/ui/` (its session, views, events, files).
 */

export type { HttpsConfig, HttpsMetrics, Readiness } from './https-types.js';

export interface HttpsIntakeOptions {
  readonly config: HttpsConfig;
  /**
   * The material to serve from the start: `config`'s files as read and checked (the daemon
   * passes what its preflight read), not read again here.
   */
  readonly tls: TlsMaterial;
  readonly pipeline: CommandPipeline;
  readonly identities: IdentityRegistry;
  readonly metrics: HttpsMetrics;
  readonly logger: Logger;
  readonly readiness: () => Readiness;
  /**
   * Rate limiting, the connection warnings' interval (both on its monotonic `elapsed()`) and
   * readback ages; the system clock by default.
   */
  readonly clock?: Clock;
  /** How long stop() lets in-flight responses finish before cutting connections (default 5 s). */
  readonly drainTimeoutMs?: number;
  /** The operator status page; not served when absent or not enabled. */
  readonly ui?: UiOptions;
  /** The connection timeouts (https-server.ts HTTPS_TIMEOUTS by default). */
  readonly timeouts?: HttpsTimeouts;
  /**
   * The bounds on draining a body answered before it was read (https-drain.ts DRAIN_MAX_BYTES,
   * DRAIN_MAX_MS by default). Not configurable for a site: a test shortens them, to wait
   * seconds.
   */
  readonly bodyDrain?: DrainLimits;
}

export class HttpsIntake {
  private readonly options: HttpsIntakeOptions;
  private readonly logger: Logger;
  private readonly clock: Clock;
  private readonly drainTimeoutMs: number;
  private readonly stopping = new AbortController();
  private app: App | null = null;
  /**
   * The server certificate read at start, or put in place by the last reload (null: not
   * started, or not readable as X.509).
   */
  private certificate: ServerCertificate | null = null;
  /** Whether the last verdict on it was good: a change is logged once. */
  private certificateOk = true;

  constructor(options: HttpsIntakeOptions) {
    this.options = options;
    this.logger = options.logger.child({ intake: 'https' });
    this.clock = options.clock ?? systemClock;
    this.drainTimeoutMs = options.drainTimeoutMs ?? 5_000;
  }

  /** Listens, serving the TLS material given; port 0 binds an ephemeral port. */
  async start(): Promise<{ host: string; port: number }> {
    if (this.app !== null) throw new Error('the HTTPS intake is already started');
    if (this.stopping.signal.aborted) throw new Error('the HTTPS intake was stopped');
    const { config, tls, pipeline, identities, metrics, readiness } = this.options;
    this.certificate = serverCertificate(tls.cert);
    const mutualTls = tls.ca !== undefined;
    const stopping = this.stopping.signal;
    const logger = this.logger;
    const clock = this.clock;

    const app = createServer({
      config,
      tls,
      metrics,
      logger,
      clock,
      stopping,
      ...(this.options.timeouts === undefined ? {} : { timeouts: this.options.timeouts }),
      ...(this.options.bodyDrain === undefined ? {} : { bodyDrain: this.options.bodyDrain }),
    });
    const methods = new MethodTable(app);
    // One count of failed authentications for /v1 and the status page's login.
    const failedAuthentications = new FailedAuthentications(clock);
    const guard = new CallerGuard({
      identities,
      rateLimit: config.rateLimit,
      mutualTls,
      clock,
      logger,
      failedAuthentications,
    });
    registerCommandRoutes(app, { pipeline, waitPolicy: config, metrics, logger, guard, stopping });
    registerReadRoutes(app, { pipeline, identities, metrics, readiness, clock, guard });
    const ui = this.options.ui;
    if (ui?.config.enabled === true) {
      registerUiRoutes(app, {
        ui,
        pipeline,
        identities,
        mutualTls,
        // The page's verdict is /readyz's: a reload's certificate shows at its next look.
        serverCertificate: () => this.certificateCheck(),
        clock,
        logger,
        stopping,
        failedAuthentications,
      });
    }
    methods.answerOtherMethods(app);

    try {
      await app.listen({ host: config.host, port: config.port });
    } catch (error) {
      await app.close();
      throw error;
    }
    this.app = app;
    const address = app.server.address() as AddressInfo;
    this.logger.info(
      { host: address.address, port: address.port, mutualTls },
      'HTTPS intake listening',
    );
    this.certificateCheck();
    return { host: address.address, port: address.port };
  }

  /**
   * Whether clients can accept the server certificate now (https-certificate.ts), for the
   * readiness checks and the status page; null before the start. Logged when it becomes bad
   * (and at the start), with what to do, and when it is good again.
   */
  certificateCheck(): CertificateVerdict | null {
    if (this.certificate === null) return null;
    const verdict = certificateVerdict(this.certificate, this.clock.now());
    if (verdict.ok !== this.certificateOk) {
      this.certificateOk = verdict.ok;
      if (verdict.ok) this.logger.info({}, `HTTPS ${verdict.detail}`);
      else this.logger.error({}, `HTTPS intake: ${verdict.detail}`);
    }
    return verdict;
  }

  /**
   * Whose tokens and certificates its requests are authenticated against: the same registry as
   * the daemon's, whose token files a reload reads again (src/daemon/token-reload.ts).
   */
  get identities(): IdentityRegistry {
    return this.options.identities;
  }

  /**
   * Serves `tls` (checked by the caller: src/config/preflight.ts) to every TLS handshake from
   * now on: connections already open keep the certificate and client verification they were
   * made with, and their requests, commands waiting included, are not disturbed. The TLS
   * session tickets start anew with it, so a client resumes no session made under the old
   * material (a client certificate from a CA no longer trusted would otherwise pass by
   * resumption). Throws, leaving the old material served, when OpenSSL refuses the material;
   * false when the intake does not listen (not started yet, or stopping).
   */
  replaceTlsMaterial(tls: TlsMaterial): boolean {
    const app = this.app;
    if (app === null || this.stopping.signal.aborted) return false;
    const options = secureContextOptions(tls);
    // Made once first, so that material OpenSSL refuses throws before anything changes:
    // setSecureContext stores its options on the server before it makes the context.
    createSecureContext(options);
    app.server.setSecureContext(options);
    this.certificate = serverCertificate(tls.cert);
    // Logged when the verdict changes (an expired certificate replaced by a valid one).
    this.certificateCheck();
    return true;
  }

  /**
   * Stops accepting connections, closes idle keep-alive connections, wakes requests waiting
   * for a command to settle (they answer 202 at once: the command stays journaled) and lets
   * in-flight responses finish; after the drain bound, remaining connections are cut.
   */
  async stop(): Promise<void> {
    this.stopping.abort();
    const app = this.app;
    if (app === null) return;
    this.app = null;
    const closed = app.close();
    const bound = new AbortController();
    const outcome = await Promise.race([
      Promise.resolve(closed).then(() => 'drained' as const),
      this.clock.sleep(this.drainTimeoutMs, bound.signal).then(() => 'bound' as const),
    ]);
    bound.abort();
    if (outcome === 'bound') {
      this.logger.warn(
        { drainTimeoutMs: this.drainTimeoutMs },
        'HTTPS connections still open after the drain bound; closing them',
      );
      app.server.closeAllConnections();
    }
    await closed;
    this.logger.info({}, 'HTTPS intake stopped');
  }
}
