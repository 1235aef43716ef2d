import type { Clock } from '../core/clock.js';
import { COMMAND_STATES, type CommandState } from '../core/command.js';
import type { Logger } from '../core/logger.js';
import type { CommandPipeline } from '../core/pipeline.js';
import type { DeviceProfile } from '../core/profile.js';
import type { CertificateVerdict } from './https-certificate.js';
import { JSON_TYPE, makeProblem, send, sendProblem } from './https-problems.js';
import type { App, Reply, Request } from './https-types.js';
import type { IdentityRegistry } from './identities.js';
import type { FailedAuthentications } from './rate-limit.js';
import { registerUiAccess } from './ui-access.js';
import { operatorActions, refOf, unknownCommand, type KeyParams } from './ui-actions.js';
import { UiEvents, type StreamPeerBounds } from './ui-events.js';
import { UiSessions, type UiConfig, type UiSession } from './ui-session.js';
import {
  loadUiFiles,
  registerUiFiles,
  setUiHeaders,
  UI_HEADERS,
  uiDirectory,
  type UiFiles,
} from './ui-static.js';
import { UiViews, type CommandReader, type GatewaySources } from './ui-views.js';

/**
 * The operator status page (issue 16; docs/http-api.md#operator-status-page) on the HTTPS
 * listener: its files under `/ui/`, its login and the checks in front of its routes
 * (ui-access.ts), the JSON the page reads under `/ui/api/`, its event
 * stream, and the two operator actions — reverify and resolve (ui-actions.ts) — through the same pipeline calls
 * as `sluicectl` (docs/admin-api.md), journaled with who asked from where. Sending commands is
 * not the page's job.
 *
 * Every `/ui/api/` route needs a session (401 otherwise). Every POST must come from the page:
 * its Origin is this listener's own, and changes also carry the session's CSRF token in
 * `X-CSRF-Token` (403 otherwise); reverify and resolve need the `operator` role (403).
 */

export interface UiOptions {
  readonly config: UiConfig;
  readonly commands: CommandReader;
  /** Each configured device's profile, by device id. */
  readonly profiles: ReadonlyMap<string, DeviceProfile>;
  readonly gateway: GatewaySources;
  /** The page's files: the package's `ui/` folder unless given. */
  readonly directory?: string;
  /** How a stream whose client vanished is found (ui-events.ts STREAM_PEER_BOUNDS unless given). */
  readonly streamPeerBounds?: StreamPeerBounds;
}

export interface UiRoutesOptions {
  readonly ui: UiOptions;
  readonly pipeline: CommandPipeline;
  readonly identities: IdentityRegistry;
  /** Client certificates are asked for: a browser may log in with one. */
  readonly mutualTls: boolean;
  /** The verdict on the server certificate served now: the one /readyz gives (https.ts). */
  readonly serverCertificate: () => CertificateVerdict | null;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly stopping: AbortSignal;
  /** Failed authentications per address, shared with `/v1` (rate-limit.ts). */
  readonly failedAuthentications: FailedAuthentications;
}

const DEFAULT_LIMIT = 50;
const MAX_LIMIT = 500;

/** Each route that names a command, in its two forms: the path's and the query's. */
const COMMAND_URLS = { path: '/ui/api/commands/:scope/:key', query: '/ui/api/command' } as const;

export function registerUiRoutes(app: App, options: UiRoutesOptions): void {
  const { ui, pipeline, identities, clock, stopping } = options;
  const logger = options.logger.child({ component: 'ui' });
  const directory = ui.directory ?? uiDirectory();
  let files: UiFiles;
  try {
    files = loadUiFiles(directory);
  } catch (error) {
    // The intakes are what the gateway is for; a page missing from the install is no reason
    // not to take commands.
    logger.error(
      { directory, err: error instanceof Error ? error.message : String(error) },
      'status page files not found; /ui/ is not served',
    );
    return;
  }
  // Said when it is found (the next request, stream tick or login; a reload that replaced a
  // token), so that the audit log shows why an operator had to log in again; a certificate
  // running out is for someone to renew, and a token rotated out may have leaked: warnings.
  const sessions = new UiSessions(ui.config, clock, {
    onLapse: (session, lapse) => {
      logger[lapse.kind === 'certificate' || lapse.kind === 'token' ? 'warn' : 'info'](
        { identity: session.identity, role: session.role, lapse: lapse.kind },
        `status page session ended: ${lapse.detail}`,
      );
    },
    tokenHeld: (identity, digest) => identities.holdsToken(identity, digest),
  });
  const views = new UiViews({
    pipeline,
    commands: ui.commands,
    profiles: ui.profiles,
    gateway: ui.gateway,
    serverCertificate: options.serverCertificate,
    clock,
  });
  const events = new UiEvents({
    pipeline,
    views,
    sessions,
    clock,
    logger,
    stopping,
    headers: UI_HEADERS,
    ...(ui.streamPeerBounds === undefined ? {} : { peerBounds: ui.streamPeerBounds }),
  });

  // A token rotated out by a reload ends the sessions started with it there and then, their
  // event streams too: not at their next request, which an open page may never make.
  const unsubscribe = identities.onTokensReplaced(() => {
    sessions.sweep();
    events.closeEnded();
  });
  app.addHook('onClose', (_instance, done) => {
    unsubscribe();
    done();
  });

  app.addHook('onSend', async (request, reply, payload) => {
    if (request.url === '/ui' || request.url.startsWith('/ui/')) setUiHeaders(reply);
    return payload;
  });

  const allowedFor = (session: UiSession): ((device: string) => boolean) => {
    const identity = identities.get(session.identity);
    return (device) => identity !== undefined && identities.mayCommand(identity, device);
  };
  const json = (reply: Reply, status: number, body: unknown): Reply =>
    send(reply, status, JSON_TYPE, JSON.stringify(body));
  const { reader, changer, sessionOf, unauthorized } = registerUiAccess(app, {
    sessions,
    identities,
    roles: ui.config.roles,
    gatewayId: ui.gateway.gatewayId,
    mutualTls: options.mutualTls,
    clock,
    logger,
    failedAuthentications: options.failedAuthentications,
    json,
  });

  const actions = operatorActions({
    pipeline,
    clock,
    logger,
    sessionOf,
    sessionAlive: (session) => sessions.alive(session),
    watchSession: (session) => sessions.watch(session),
    unauthorized,
    json,
  });

  registerUiFiles(app, files);

  app.get('/ui/api/devices', reader, async (request, reply) =>
    json(reply, 200, { devices: views.devices(allowedFor(sessionOf(request))) }),
  );

  app.get('/ui/api/gateway', reader, async (_request, reply) => json(reply, 200, views.gateway()));

  app.get<{ Querystring: Record<string, unknown> }>(
    '/ui/api/commands',
    reader,
    async (request, reply) => {
      const errors: string[] = [];
      const q = singleValues(request.query, errors);
      let state: CommandState | undefined;
      if (q.state !== undefined && q.state !== '') {
        state = COMMAND_STATES.find((s) => s === q.state);
        if (state === undefined) errors.push(`state: one of ${COMMAND_STATES.join(', ')}`);
      }
      let limit = DEFAULT_LIMIT;
      if (q.limit !== undefined && q.limit !== '') {
        limit = Number(q.limit);
        if (!Number.isInteger(limit) || limit < 1 || limit > MAX_LIMIT) {
          errors.push(`limit: a whole number from 1 to ${MAX_LIMIT}`);
        }
      }
      if (errors.length > 0) {
        return sendProblem(
          reply,
          makeProblem(400, 'INVALID_REQUEST', errors.join('; '), {
            title: 'Invalid request',
            errors,
          }),
        );
      }
      const device = q.device === undefined || q.device === '' ? undefined : q.device;
      const body = views.commands(
        {
          ...(device === undefined ? {} : { device }),
          ...(state === undefined ? {} : { state }),
          limit,
        },
        allowedFor(sessionOf(request)),
      );
      return json(reply, 200, body);
    },
  );

  for (const url of Object.values(COMMAND_URLS)) {
    app.get<KeyParams>(url, reader, showCommand);
    app.post<KeyParams & { Body: unknown }>(
      `${url}/reverify`,
      changer('operator'),
      actions.reverify,
    );
    app.post<KeyParams & { Body: unknown }>(`${url}/resolve`, changer('operator'), actions.resolve);
  }

  async function showCommand(request: Request<KeyParams>, reply: Reply): Promise<Reply> {
    const session = sessionOf(request);
    const ref = refOf(request);
    const shown = ref === null ? undefined : views.command(ref);
    if (shown === undefined) return unknownCommand(reply);
    const open = shown.outcome === null;
    const operator = session.role === 'operator';
    return json(reply, 200, {
      ...shown,
      actions: { reverify: open && operator, resolve: open && operator },
    });
  }

  const refuseStream = (reply: Reply, refusal: string): Reply =>
    sendProblem(
      reply,
      makeProblem(503, 'TOO_MANY_STREAMS', refusal, { title: 'Too many event streams' }),
      { 'retry-after': '10' },
    );

  // No HEAD: a stream has no headers-only form.
  app.get('/ui/api/events', { ...reader, exposeHeadRoute: false }, async (request, reply) => {
    const session = sessionOf(request);
    const refusal = events.refusal(session);
    if (refusal !== null) return refuseStream(reply, refusal);
    // The stream outlives this handler: the response is taken over from fastify.
    reply.hijack();
    if (!events.open(reply.raw, session, allowedFor(session))) reply.raw.destroy();
    return reply;
  });

  // Whether the session's stream would be taken now: a browser's EventSource sees no status or
  // body of a refusal, so the page asks here why its stream failed, and says so.
  app.get('/ui/api/events/admission', reader, async (request, reply) => {
    const refusal = events.refusal(sessionOf(request));
    return refusal === null ? reply.code(204).send() : refuseStream(reply, refusal);
  });
}

/**
 * The query's parameters that are given once; a parameter given more than once
 * (`?device=a&device=b`, which the query parser makes an array) is an error in `errors`: which
 * one was meant cannot be told, and passed on as it is, an array reached the journal's query
 * and the answer was a 500.
 */
function singleValues(
  query: Record<string, unknown>,
  errors: string[],
): Record<string, string | undefined> {
  const values: Record<string, string | undefined> = {};
  for (const [name, value] of Object.entries(query)) {
    if (typeof value === 'string') values[name] = value;
    else errors.push(`${name}: is given more than once`);
  }
  return values;
}
