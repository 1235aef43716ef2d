import type { Server as HttpsServer } from 'node:https';
import type { FastifyInstance, FastifyReply, FastifyRequest, RouteGenericInterface } from 'fastify';
import type { SluiceConfig } from '../config/config.js';

/**
 * What the parts of the HTTPS intake share: its configuration, the ports it is given and the
 * fastify types over node:https. Types only, so every part may import this file and none
 * imports another part's composition.
 */

export type HttpsConfig = NonNullable<SluiceConfig['https']>;

export interface Readiness {
  readonly ready: boolean;
  readonly checks: Record<string, { readonly ok: boolean; readonly detail: string }>;
}

/**
 * The metrics the intake records and serves. The daemon's prom-client metrics have this shape;
 * naming only what the intake uses keeps the intake from depending on the daemon.
 */
export interface HttpsMetrics {
  /** Rendered at `GET /metrics`. */
  readonly registry: { readonly contentType: string; metrics(): Promise<string> };
  /** `sluice_http_responses_total{route, status}` */
  readonly httpResponses: { inc(labels: { route: string; status: string }): void };
  /** `sluice_commands_received_total{intake, outcome}` */
  readonly accepted: { inc(labels: { intake: string; outcome: string }): void };
  /** `sluice_journal_unavailable_total` */
  readonly journalFailures: { inc(): void };
  /** `sluice_https_connections_refused_total{reason}` (https-connections.ts) */
  readonly httpsConnectionsRefused: {
    inc(labels: { reason: 'max_connections' | 'per_address' }): void;
  };
  /** `sluice_https_connections_idle_closed_total{stage}` (https-connections.ts; answer_unread: https-unread.ts) */
  readonly httpsConnectionsIdleClosed: {
    inc(labels: { stage: 'handshake' | 'first_request' | 'answer_unread' }): void;
  };
  /** `sluice_https_tls_handshakes_failed_total{reason}` (https-server.ts, handshakeFailure) */
  readonly httpsTlsHandshakesFailed: { inc(labels: { reason: HandshakeFailure }): void };
  /** `sluice_https_clients_gone_total` (https-command-routes.ts) */
  readonly httpsClientsGone: { inc(): void };
}

/** Why a TLS handshake failed, as counted (https-server.ts, handshakeFailure). */
export type HandshakeFailure =
  'plain_http' | 'not_tls' | 'version' | 'untrusted' | 'aborted' | 'other';

export type Server = HttpsServer;
export type Request<G extends RouteGenericInterface = RouteGenericInterface> = FastifyRequest<
  G,
  Server
>;
export type Reply = FastifyReply<RouteGenericInterface, Server>;
export type App = FastifyInstance<Server>;
