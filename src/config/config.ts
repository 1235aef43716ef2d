import { readFileSync } from 'node:fs';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { z } from 'zod';
import { MAX_TTL_MS } from '../core/command.js';
import type { DeviceProfile } from '../core/profile.js';
import { checkInventory, deviceSchema, plcSchema } from '../drivers/inventory-schema.js';
import {
  mqttStringProblem,
  topicFilterProblem,
  topicRootProblem,
  topicRootStringProblem,
} from '../intake/mqtt-topics.js';
import { packageRoot } from '../package-root.js';
import { readProfiles } from '../profiles/load.js';
import { hostSchema, proxyAddressSchema, urlAddressProblem } from './network-addresses.js';
import { parseYamlText } from './yaml-text.js';

/**
 * The daemon's configuration: one YAML file, one schema. Precedence: schema defaults < file <
 * environment (SLUICE_*) < command-line flags. Every error is reported at once, with its path;
 * an invalid configuration touches nothing. Relative paths are relative to the file.
 */

/** The schemes MQTT.js connects with; the rest of the URL is checked by urlAddressProblem. */
const BROKER_URL = /^(mqtts?|tcp|ssl|wss?):\/\/.+/;

const hex64 = z.string().regex(/^[0-9a-f]{64}$/i, 'a SHA-256 digest: 64 hexadecimal characters');
const port = z.number().int().min(0).max(65535);
const name = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, 'letters, digits, ".", "_", "-"');

/**
 * A section of names (identities, PLCs, devices, roles) as an object with no prototype: a name
 * is looked up in what the file gives, never in what every object inherits, so a PLC or an
 * identity named like one of Object.prototype's members (`toString`, `constructor`) exists only
 * when the file names it, and a lookup of one the file lacks is `undefined` like any other.
 */
function ownNames<T>(entries: Record<string, T>): Record<string, T> {
  return Object.assign(Object.create(null) as Record<string, T>, entries);
}

const identitySchema = z.strictObject({
  /** SHA-256 (hex) of a bearer token; the token itself is never stored. */
  tokenSha256: hex64.optional(),
  /** A file holding a bearer token (for generated demo tokens); hashed at start. */
  tokenFile: z.string().min(1).optional(),
  /** Mutual TLS: the client certificate's subject CN that maps to this identity. */
  certificateCn: z.string().min(1).optional(),
  /** Devices this identity may command; ["*"] for all. */
  devices: z.array(z.string().min(1)).min(1),
});

/** A refinement from a function that names what is wrong with a value (null: nothing). */
function problemCheck(
  problem: (value: string) => string | null,
  what: string,
): (value: string, ctx: z.RefinementCtx) => void {
  return (value, ctx) => {
    const found = problem(value);
    if (found !== null) ctx.addIssue({ code: 'custom', message: `${what}: ${found}` });
  };
}

/** The `mqtt` section (docs/configuration.md); exported for tests that build an intake. */
export const mqttConfigSchema = z.strictObject({
  url: z
    .string()
    .regex(BROKER_URL, 'an mqtt://, mqtts://, ws:// or wss:// URL')
    .superRefine((url, ctx) => {
      // MQTT.js reads the URL with url.parse and connects to whatever it makes of it: a port
      // past 65535 threw at the start (exit 1, restarted by systemd for ever), one that is not
      // a number was dropped for the default 1883 (network-addresses.ts).
      // Not with a password in it (refused below): what is wrong is said of the URL without it.
      const address = BROKER_URL.test(url) ? urlAddressProblem(withoutPassword(url)) : null;
      if (address !== null) ctx.addIssue({ code: 'custom', message: address });
      // MQTT.js takes a password from the URL, but the URL is shown wherever the broker is
      // named: the log at every start and connection error, sluiced --check, its own errors.
      if (withoutPassword(url) !== url) {
        ctx.addIssue({
          code: 'custom',
          message: `carries a password (user:…@ in ${withoutPassword(url)}), which would be printed wherever the URL is shown (the log at every start and connection error, sluiced --check): give the user as mqtt.username and the password in the file mqtt.passwordFile (under systemd, \${CREDENTIALS_DIRECTORY}/…), and the URL without them`,
        });
      }
      // MQTT.js takes a `clientId` in the URL's query over the one it is given: the gateway
      // would connect as that client, whatever mqtt.clientId says (and a client id another
      // client uses knocks one of the two off the broker, in turn, for ever).
      const query = /^[^?#]*\?([^#]*)/.exec(url)?.[1];
      if (query !== undefined && new URLSearchParams(query).has('clientId')) {
        ctx.addIssue({
          code: 'custom',
          message: `carries a clientId in its query, which MQTT.js would connect with over the gateway's own (mqtt.clientId, or the one made from gatewayId): give it as mqtt.clientId, and the URL without it`,
        });
      }
    }),
  // Sent in the CONNECT: a value MQTT forbids (or lets the broker refuse) was taken here, and the
  // intake then never connected.
  clientId: z
    .string()
    .min(1)
    .max(128)
    .superRefine(problemCheck(mqttStringProblem, 'cannot be sent to an MQTT broker'))
    .optional(),
  username: z
    .string()
    .min(1)
    .superRefine(problemCheck(mqttStringProblem, 'cannot be sent to an MQTT broker'))
    .optional(),
  passwordFile: z.string().min(1).optional(),
  caFile: z.string().min(1).optional(),
  certFile: z.string().min(1).optional(),
  keyFile: z.string().min(1).optional(),
  /**
   * `auto`: MQTT 5, and 3.1.1 when the broker refuses 5 (SPEC §5); 5 or 4: that version
   * only (files written before `auto` keep their meaning).
   */
  protocolVersion: z.union([z.literal('auto'), z.literal(5), z.literal(4)]).default('auto'),
  /** The identity MQTT commands are scoped to (keys are per identity). */
  identity: name,
  /** MQTT 5 session expiry: queued commands survive a gateway outage this long. */
  sessionExpiryS: z.number().int().min(1).max(4_294_967_295).default(86_400),
  keepaliveS: z.number().int().min(5).max(3600).default(30),
  /**
   * MQTT 5 Receive Maximum, told the broker on connect: at most this many QoS 1 command
   * messages it has sent are unacknowledged at once — the claims that may wait together for one
   * fsync of the journal (mqtt-acks.ts). MQTT 3.1.1 has none: the broker's own window bounds it.
   */
  receiveMaximum: z.number().int().min(1).max(65_535).default(100),
  /** Topics are `{topicRoot}/{gatewayId}/…`; every gateway on a broker should share it. */
  topicRoot: z
    .string()
    .superRefine(problemCheck(topicRootProblem, 'must be one or more plain MQTT topic levels'))
    .superRefine(problemCheck(topicRootStringProblem, 'cannot be sent to an MQTT broker'))
    .default('sluice'),
  /**
   * Accept commands with neither issuedAt nor an MQTT 5 Message Expiry Interval (SPEC §5):
   * such a command may have waited at the broker for as long as the gateway was away.
   */
  acceptUntimedCommands: z.boolean().default(false),
  /**
   * MQTT topic filters a requester's MQTT 5 Response Topic must match; [] turns response
   * topics off. Command topics of any gateway are refused whatever this says.
   */
  responseTopics: z
    .array(z.string().superRefine(problemCheck(topicFilterProblem, 'is not an MQTT topic filter')))
    .max(100)
    .default(['replies/#', '+/replies/#']),
});

export const configSchema = z
  .strictObject({
    gatewayId: name,
    /** Journal, PKI and generated files live here (systemd: StateDirectory). */
    stateDir: z.string().min(1),
    profilesDir: z.string().min(1).optional(),
    log: z
      .strictObject({
        level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace']).default('info'),
      })
      .prefault({}),
    commands: z
      .strictObject({
        /**
         * Commands a device may have waiting, not yet dispatched, before a new one is refused
         * (HTTPS 429 DEVICE_QUEUE_FULL); a stop is always taken. The default is the
         * pipeline's (DEFAULT_MAX_QUEUED_PER_DEVICE, pipeline.ts, which says why).
         */
        maxQueuedPerDevice: z.number().int().min(1).max(100_000).default(256),
      })
      .prefault({}),
    journal: z
      .strictObject({
        path: z.string().min(1).optional(),
        busyTimeoutMs: z.number().int().min(1).max(60_000).default(2_000),
        retentionHours: z
          .number()
          .positive()
          .max(24 * 365)
          .default(48),
      })
      .prefault({}),
    clock: z
      .strictObject({
        /** How far in the future an issuer's issuedAt may lie. */
        maxIssuerSkewMs: z.number().int().min(0).max(3_600_000).default(5_000),
        /**
         * The largest controller clock skew allowed (ms); beyond it a device is flagged and
         * its writes are refused CLOCK_SKEW (or warned about). Per PLC: plcs.<name>.maxClockSkewMs.
         */
        maxControllerSkewMs: z.number().int().min(1).max(86_400_000).default(2_000),
        /** An unlocked or unknown gateway clock, a controller clock beyond its bound. */
        onUnsynced: z.enum(['reject', 'warn']).default('reject'),
        /** Where the gateway's own sync state comes from (SPEC §6); none: not checked. */
        source: z.enum(['none', 'ptp', 'chrony']).default('none'),
        pollIntervalMs: z.number().int().min(100).max(600_000).default(1_000),
        /** |offset| within this (ns) for LOCKED. */
        maxOffsetNs: z.number().int().min(1).max(10_000_000_000).default(1_000_000),
        /** After losing lock, HOLDOVER this long, then UNLOCKED. */
        holdoverMs: z.number().int().min(0).max(86_400_000).default(60_000),
        ptp: z
          .strictObject({
            /** ptp4l's UDS (`/var/run/ptp4lro`, read-only, on linuxptp 4.0 and later). */
            udsPath: z.string().min(1).default('/var/run/ptp4l'),
            domain: z.number().int().min(0).max(255).default(0),
            pmc: z.string().min(1).default('/usr/sbin/pmc'),
            /** Where pmc creates its reply socket (systemd: the RuntimeDirectory). */
            clientSocketDir: z.string().min(1).optional(),
            timeoutMs: z.number().int().min(100).max(60_000).default(2_000),
            /** Count an UNCALIBRATED port as tracking (only for a free-running ptp4l). */
            acceptUncalibrated: z.boolean().default(false),
          })
          .prefault({}),
        chrony: z
          .strictObject({
            chronyc: z.string().min(1).default('chronyc'),
            timeoutMs: z.number().int().min(100).max(60_000).default(2_000),
          })
          .prefault({}),
      })
      .prefault({}),
    https: z
      .strictObject({
        // Node's listen() takes any string and fails at the start on one that is no host
        // (`0.0.0.0:8443`: getaddrinfo ENOTFOUND, exit 1, restarted by systemd for ever).
        host: hostSchema.default('127.0.0.1'),
        port: port.default(8443),
        certFile: z.string().min(1),
        keyFile: z.string().min(1),
        /** CA for client certificates: turns on mutual TLS (certificates are optional per client). */
        clientCaFile: z.string().min(1).optional(),
        bodyLimitBytes: z.number().int().min(256).max(1_048_576).default(16_384),
        /** Connections open at a time; past it a new one is closed when accepted. */
        maxConnections: z.number().int().min(1).max(65_536).default(1024),
        /** The same from one client address (behind a local proxy, all come from one). */
        maxConnectionsPerAddress: z.number().int().min(1).max(65_536).default(256),
        /**
         * Reverse proxies whose X-Forwarded-For is believed (addresses or ranges): the client's
         * address is then the header's last hop not among them, for the failed-token bound,
         * the logs and the status page's audit. None by default: the header is anyone's to
         * write.
         */
        trustedProxies: z.array(proxyAddressSchema).max(64).default([]),
        /** Prefer: wait=N default and ceiling, seconds. */
        defaultWaitS: z.number().min(0).max(300).default(10),
        maxWaitS: z.number().min(0).max(300).default(60),
        rateLimit: z
          .strictObject({
            /** Sustained requests per second per identity. */
            perSecond: z.number().positive().max(10_000).default(20),
            burst: z.number().int().min(1).max(100_000).default(40),
          })
          .prefault({}),
      })
      .optional(),
    mqtt: mqttConfigSchema.optional(),
    opcua: z
      .strictObject({
        /** Trust OPC UA server certificates never seen before: the demo only. */
        acceptUnknownCertificates: z.boolean().default(false),
      })
      .prefault({}),
    /** The local admin endpoint of `sluicectl` (docs/admin-api.md). */
    admin: z
      .strictObject({
        enabled: z.boolean().default(true),
        /** Unix socket path (default {stateDir}/admin.sock; systemd: /run/sluice/admin.sock). */
        socket: z.string().min(1).optional(),
        /** Bearer token file, 0600, generated at the first start (default {stateDir}/admin.token). */
        tokenFile: z.string().min(1).optional(),
      })
      .prefault({}),
    /**
     * The operator status page on the HTTPS listener (`/ui/`, docs/http-api.md): who may log
     * in with their identity's token or certificate, and what they may do there.
     */
    ui: z
      .strictObject({
        enabled: z.boolean().default(true),
        /** Identity → role: `viewer` reads; `operator` may also reverify and resolve. */
        roles: z
          .record(name, z.enum(['viewer', 'operator']))
          .default({})
          .transform(ownNames),
        /** A session ends after this long without a request from its page … */
        sessionIdleMinutes: z.number().int().min(1).max(1_440).default(30),
        /** … and this long after its login, whatever. */
        sessionMaxHours: z.number().int().min(1).max(168).default(12),
      })
      .prefault({}),
    identities: z.record(name, identitySchema).transform(ownNames),
    plcs: z.record(name, plcSchema).transform(ownNames),
    devices: z
      .record(z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/), deviceSchema)
      .transform(ownNames),
  })
  .superRefine(
    (c, ctx) => {
      const problem = retentionProblem(c.journal.retentionHours, c.clock.maxIssuerSkewMs);
      if (problem !== null) {
        ctx.addIssue({ code: 'custom', path: ['journal', 'retentionHours'], message: problem });
      }
    },
    {
      // Reported with every other schema error, as long as its own two inputs parsed.
      when: (payload) =>
        typeof payload.value === 'object' &&
        payload.value !== null &&
        !payload.issues.some((i) => i.path?.[0] === 'journal' || i.path?.[0] === 'clock'),
    },
  )
  .superRefine(
    (c, ctx) => {
      const problem = holdoverProblem(c.clock);
      if (problem !== null) {
        ctx.addIssue({ code: 'custom', path: ['clock', 'holdoverMs'], message: problem });
      }
    },
    {
      when: (payload) =>
        typeof payload.value === 'object' &&
        payload.value !== null &&
        !payload.issues.some((i) => i.path?.[0] === 'clock'),
    },
  )
  .superRefine(
    (c, ctx) => {
      if (c.mqtt === undefined) return;
      const problem = untimedSessionProblem(c.mqtt, c.journal.retentionHours);
      if (problem !== null) {
        ctx.addIssue({ code: 'custom', path: ['mqtt', 'sessionExpiryS'], message: problem });
      }
    },
    {
      when: (payload) =>
        typeof payload.value === 'object' &&
        payload.value !== null &&
        !payload.issues.some((i) => i.path?.[0] === 'journal' || i.path?.[0] === 'mqtt'),
    },
  );

/**
 * I1 across retention: a settled key must still be journaled whenever a retry of it could be
 * fresh, or the retry would run as a new command. A command's deadline is at most its
 * issuedAt (no later than clock.maxIssuerSkewMs after it is checked) + MAX_TTL_MS, and a key
 * is purged retentionHours after it settled, so retention must be at least their sum.
 */
export function retentionProblem(retentionHours: number, maxIssuerSkewMs: number): string | null {
  const neededMs = MAX_TTL_MS + maxIssuerSkewMs;
  if (retentionHours * 3_600_000 >= neededMs) return null;
  // Rounded up, so that the value the message asks for is enough.
  const neededHours = Math.ceil((neededMs / 3_600_000) * 10_000) / 10_000;
  return (
    `${retentionHours} h is shorter than a retry can stay fresh: the longest ttlMs ` +
    `(MAX_TTL_MS ${MAX_TTL_MS} ms) + clock.maxIssuerSkewMs ${maxIssuerSkewMs} ms = ` +
    `${neededMs} ms = ${neededHours} h; a retry of a purged key would run as a new command ` +
    `(set at least ${neededHours})`
  );
}

/**
 * I3 on the gateway clock's polling (SPEC §6): the status is the last poll's, so a clock that
 * lost its lock just after a poll is still reported `LOCKED` until the next poll has answered —
 * up to `pollIntervalMs` plus the source's run (pmc is asked twice when an answer is missing:
 * two timeouts). That must fit in the holdover, or timestamped commands would be judged on a
 * lock older than `holdoverMs` promises (with a poll every 10 minutes and a minute of holdover,
 * for up to 10 minutes).
 */
export function holdoverProblem(clock: {
  readonly source: 'none' | 'ptp' | 'chrony';
  readonly pollIntervalMs: number;
  readonly holdoverMs: number;
  readonly ptp: { readonly timeoutMs: number };
  readonly chrony: { readonly timeoutMs: number };
}): string | null {
  if (clock.source === 'none') return null;
  const runMs = 2 * clock[clock.source].timeoutMs;
  const staleMs = clock.pollIntervalMs + runMs;
  if (staleMs <= clock.holdoverMs) return null;
  return (
    `${clock.holdoverMs} ms is shorter than a status can be old: clock.pollIntervalMs ` +
    `${clock.pollIntervalMs} ms + twice clock.${clock.source}.timeoutMs (${runMs} ms) = ` +
    `${staleMs} ms, for which a lost lock would still be reported LOCKED; set holdoverMs to at ` +
    `least ${staleMs}, or poll more often`
  );
}

/**
 * I1 across retention for untimed MQTT commands (`mqtt.acceptUntimedCommands`): such a command
 * is timed from its receipt, so it is fresh whenever it arrives, and the broker delivers it
 * again (its PUBACK lost to a power cut after the claim) as long as the gateway's session lives:
 * up to `sessionExpiryS` after the broker saw the gateway go, which it notices up to 1.5
 * keepalives late. Its key must still be journaled then: the session must end within the
 * retention. (Over MQTT 3.1.1 the broker alone decides how long the session lives:
 * docs/configuration.md.)
 */
export function untimedSessionProblem(
  mqtt: {
    readonly acceptUntimedCommands: boolean;
    readonly protocolVersion: 'auto' | 4 | 5;
    readonly sessionExpiryS: number;
    readonly keepaliveS: number;
  },
  retentionHours: number,
): string | null {
  if (!mqtt.acceptUntimedCommands || mqtt.protocolVersion === 4) return null;
  const keptS = Math.floor(retentionHours * 3600);
  const redeliveryS = mqtt.sessionExpiryS + Math.ceil(1.5 * mqtt.keepaliveS);
  if (redeliveryS <= keptS) return null;
  return (
    `${mqtt.sessionExpiryS} s with mqtt.acceptUntimedCommands: an untimed command is fresh at ` +
    `every delivery, and the broker may deliver it again for the session's life (` +
    `sessionExpiryS + 1.5 × keepaliveS ${mqtt.keepaliveS} s = ${redeliveryS} s), longer than ` +
    `the journal keeps its key (journal.retentionHours ${retentionHours} h = ${keptS} s): a ` +
    `redelivery after the purge would run as a new command (set at most ` +
    `${keptS - Math.ceil(1.5 * mqtt.keepaliveS)}, or raise journal.retentionHours)`
  );
}

export type SluiceConfig = z.output<typeof configSchema>;

export class ConfigError extends Error {
  readonly code = 'INVALID_CONFIG';
  readonly errors: readonly string[];
  constructor(source: string, errors: readonly string[]) {
    super(`${source}: invalid configuration:\n  ${errors.join('\n  ')}`);
    this.name = 'ConfigError';
    this.errors = errors;
  }
}

/** An environment variable that overrides one setting, and the setting's path. */
interface EnvironmentOverride {
  readonly variable: string;
  readonly path: readonly string[];
  readonly value: unknown;
}

/** The variables that override a setting: what a demo or a container changes. */
const ENVIRONMENT: readonly (readonly [string, readonly string[]])[] = [
  ['SLUICE_MQTT_URL', ['mqtt', 'url']],
  ['SLUICE_HTTPS_PORT', ['https', 'port']],
  ['SLUICE_HTTPS_HOST', ['https', 'host']],
  ['SLUICE_STATE_DIR', ['stateDir']],
  ['SLUICE_LOG_LEVEL', ['log', 'level']],
  ['SLUICE_GATEWAY_ID', ['gatewayId']],
];

/**
 * The overrides the environment sets. An empty variable is unset (systemd's `Environment=X=`
 * clears an inherited value that way), as SLUICE_MQTT_URL always was.
 */
function environmentSettings(env: NodeJS.ProcessEnv): EnvironmentOverride[] {
  const num = (v: string): number | string => (/^\d+$/.test(v) ? Number(v) : v);
  return ENVIRONMENT.flatMap(([variable, path]) => {
    const raw = env[variable];
    if (raw === undefined || raw === '') return [];
    return [{ variable, path, value: variable === 'SLUICE_HTTPS_PORT' ? num(raw) : raw }];
  });
}

/** Overrides from the environment, as a partial configuration. */
export function environmentOverrides(env: NodeJS.ProcessEnv): Record<string, unknown> {
  const o: Record<string, unknown> = {};
  for (const { path, value } of environmentSettings(env)) {
    let node = o;
    for (const key of path.slice(0, -1)) {
      node[key] ??= {};
      node = node[key] as Record<string, unknown>;
    }
    const last = path.at(-1);
    if (last !== undefined) node[last] = value;
  }
  return o;
}

/**
 * Problems an override makes that the file cannot show: a section the file does not have,
 * which the variable alone cannot make whole (an https section without its certificate, an
 * mqtt one without its identity), would otherwise be reported as fields missing from the
 * file, which an operator looks for there in vain.
 */
function environmentProblems(file: unknown, settings: readonly EnvironmentOverride[]): string[] {
  const sections =
    typeof file === 'object' && file !== null ? (file as Record<string, unknown>) : {};
  return settings.flatMap(({ variable, path }) => {
    const section = path[0] ?? '';
    if (path.length < 2 || section === 'log' || sections[section] !== undefined) return [];
    return [
      `${variable}: overrides ${path.join('.')}, but the configuration has no ${section} section: configure ${section} in the file, or unset ${variable}`,
    ];
  });
}

/**
 * A URL with the password of its user info replaced by `***` (the URL itself when it has
 * none): how a URL is shown, since a password must not reach a log or a terminal.
 */
export function withoutPassword(url: string): string {
  // Also when the scheme is misspelt (`mqtt//user:secret@host`): that value is echoed too.
  // The user info runs to the last `@` before the path, as MQTT.js (url.parse) and WHATWG URL
  // read it: up to the first `@`, a user with an `@` of its own (`mqtt://op@line2:secret@host`)
  // hid its password, which was then taken and shown, and `secret@word` showed `word`.
  return url.replace(/^((?:[^/?#@]*\/\/)?[^/?#:]*):[^/?#]*@/, '$1:***@');
}

/** An issue's message, naming the variable when the value came from the environment. */
function withSource(
  path: readonly PropertyKey[],
  message: string,
  settings: readonly EnvironmentOverride[],
): string {
  const from = settings.find(
    (s) => s.path.length === path.length && s.path.every((key, i) => key === path[i]),
  );
  return from === undefined
    ? message
    : `${message} (set by the environment: ${from.variable}=${JSON.stringify(withoutPassword(String(from.value)))})`;
}

function valueAt(tree: unknown, path: readonly string[]): unknown {
  let node = tree;
  for (const key of path) {
    if (typeof node !== 'object' || node === null) return undefined;
    node = (node as Record<string, unknown>)[key];
  }
  return node;
}

function merge(base: unknown, over: unknown): unknown {
  if (
    typeof base !== 'object' ||
    base === null ||
    Array.isArray(base) ||
    typeof over !== 'object' ||
    over === null ||
    Array.isArray(over)
  ) {
    return over === undefined ? base : over;
  }
  const out: Record<string, unknown> = { ...(base as Record<string, unknown>) };
  for (const [k, v] of Object.entries(over as Record<string, unknown>)) out[k] = merge(out[k], v);
  return out;
}

function issuePath(path: readonly PropertyKey[]): string {
  return path.length === 0 ? '(root)' : path.map(String).join('.');
}

/**
 * Loads, merges and validates the configuration. Relative paths are resolved against the
 * file's folder. Throws ConfigError with every problem found.
 */
export function loadConfig(
  path: string,
  options: {
    env?: NodeJS.ProcessEnv;
    overrides?: Record<string, unknown>;
    /**
     * `required` (the daemon, --check): a path under an unset systemd folder is an error.
     * `optional` (sluicectl, which reads none of the secrets): such a path is left as written.
     */
    unitDirectories?: 'required' | 'optional';
    /**
     * The folder to take for a unit folder's variable that `env` does not set, or undefined to
     * leave it unset: sluicectl's, which takes the shipped unit's folders (src/cli/context.ts).
     * Asked only for a variable a path starts with.
     */
    unsetUnitDirectory?: (name: string) => string | undefined;
  } = {},
): SluiceConfig {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    throw new ConfigError(path, [
      `(file): ${error instanceof Error ? error.message : String(error)}`,
    ]);
  }
  const yaml = parseYamlText(text);
  if (!yaml.ok) throw new ConfigError(path, yaml.errors);
  const file = yaml.value;
  // A flag overrides the environment: its value is not the variable's.
  const settings = environmentSettings(options.env ?? process.env).filter(
    (setting) => valueAt(options.overrides ?? {}, setting.path) === undefined,
  );
  const fromEnvironment = environmentProblems(file, settings);
  if (fromEnvironment.length > 0) throw new ConfigError(path, fromEnvironment);
  const merged = merge(
    merge(file, environmentOverrides(options.env ?? process.env)),
    options.overrides ?? {},
  );
  const parsed = configSchema.safeParse(merged);
  if (!parsed.success) {
    throw new ConfigError(
      path,
      parsed.error.issues.map(
        (i) => `${issuePath(i.path)}: ${withSource(i.path, i.message, settings)}`,
      ),
    );
  }
  const unset: string[] = [];
  const unsupported: string[] = [];
  const env = options.env ?? process.env;
  const config = resolvePaths(
    parsed.data,
    dirname(resolve(path)),
    // systemd may give a list (StateDirectory=a b): the first is the unit's own.
    (name) => env[name]?.split(':')[0] || options.unsetUnitDirectory?.(name),
    unset,
    unsupported,
  );
  // checkInventory repeats some of crossCheck's findings (a device's unknown PLC): once each.
  const errors = [
    ...new Set([
      ...(options.unitDirectories === 'optional' ? [] : unset),
      ...unsupported,
      ...crossCheck(config),
      ...checkDevices(config),
    ]),
  ];
  if (errors.length > 0) throw new ConfigError(path, errors);
  return config;
}

/** The folder the daemon loads device profiles from: profilesDir, or the bundled profiles. */
export function profilesDirOf(c: SluiceConfig): string {
  return c.profilesDir ?? join(packageRoot(), 'devices', 'profiles');
}

/**
 * The device profiles a configuration names, every problem found in their folder with the
 * path that set it (`profilesDir`, or the bundled profiles).
 */
export function deviceProfiles(c: SluiceConfig): {
  profiles: Map<string, DeviceProfile>;
  errors: string[];
} {
  const where = c.profilesDir === undefined ? '(bundled profiles)' : 'profilesDir';
  const { profiles, errors } = readProfiles(profilesDirOf(c));
  return { profiles, errors: errors.map((e) => `${where}: ${e}`) };
}

/**
 * The device inventory against the device profiles it names (the same check the daemon runs
 * at start), so that `sluiced --check` finds what the daemon would refuse. A device whose
 * profile could not be read is not reported again as naming an unknown profile.
 */
function checkDevices(c: SluiceConfig): string[] {
  const { profiles, errors } = deviceProfiles(c);
  if (errors.length > 0) return errors;
  return checkInventory({ plcs: c.plcs, devices: c.devices }, profiles);
}

/**
 * The longest path a Unix socket can be bound to: Linux's sun_path holds 108 bytes with the
 * terminating NUL (unix(7)). Node binds a longer one cut short, where no one looks for it: the
 * admin endpoint (default {stateDir}/admin.sock, a state folder about 96 bytes deep) listened on
 * a file in the state folder's parent, failed its start, and sluicectl could not reach it.
 */
const MAX_SOCKET_PATH_BYTES = 107;

function crossCheck(c: SluiceConfig): string[] {
  const errors: string[] = [];
  if (c.mqtt !== undefined && c.identities[c.mqtt.identity] === undefined) {
    errors.push(`mqtt.identity: no identity named "${c.mqtt.identity}"`);
  }
  for (const [id, identity] of Object.entries(c.identities)) {
    const credential =
      identity.tokenSha256 !== undefined ||
      identity.tokenFile !== undefined ||
      identity.certificateCn !== undefined;
    if (!credential && c.mqtt?.identity !== id) {
      errors.push(
        `identities.${id}: needs tokenSha256, tokenFile or certificateCn, or must be mqtt.identity`,
      );
    }
    // A certificate is asked for only with a CA to check it against (mutual TLS): without one
    // the CN is never seen, and an identity the operator gave one could never authenticate by it.
    if (identity.certificateCn !== undefined && c.https?.clientCaFile === undefined) {
      errors.push(
        `identities.${id}.certificateCn: ${JSON.stringify(identity.certificateCn)} can never be presented: ${
          c.https === undefined
            ? 'there is no https section, and only the HTTPS intake takes client certificates'
            : 'https.clientCaFile is not set, so the HTTPS intake asks no client for a certificate'
        }; set https.clientCaFile to the CA that issues the client certificates, or remove certificateCn`,
      );
    }
    identity.devices.forEach((d, i) => {
      if (d !== '*' && c.devices[d] === undefined) {
        errors.push(`identities.${id}.devices.${i}: no device named "${d}"`);
      }
    });
  }
  // The page is served on the HTTPS listener: without one, roles given would let nobody in.
  if (c.https === undefined && c.ui.enabled && Object.keys(c.ui.roles).length > 0) {
    errors.push(
      'ui.roles: given, but there is no https section: the status page is served on the HTTPS listener, so nobody could log in; configure https, or remove ui.roles',
    );
  }
  for (const id of Object.keys(c.ui.roles)) {
    const identity = c.identities[id];
    if (identity === undefined) {
      errors.push(`ui.roles.${id}: no identity named "${id}"`);
    } else if (
      identity.tokenSha256 === undefined &&
      identity.tokenFile === undefined &&
      identity.certificateCn === undefined
    ) {
      errors.push(`ui.roles.${id}: identity "${id}" has no token or certificate CN to log in with`);
    }
  }
  if (c.mqtt !== undefined) errors.push(...mqttTlsProblems(c.mqtt));
  const socket = c.admin.socket;
  if (
    c.admin.enabled &&
    socket !== undefined &&
    Buffer.byteLength(socket) > MAX_SOCKET_PATH_BYTES
  ) {
    errors.push(
      `admin.socket: ${socket} is ${Buffer.byteLength(socket)} bytes long, past the ${MAX_SOCKET_PATH_BYTES} a Unix socket's path may have: the daemon would listen on it cut short, in another folder, and sluicectl could not reach it; set admin.socket to a shorter path (under systemd /run/sluice/admin.sock)`,
    );
  }
  if (c.https === undefined && c.mqtt === undefined) {
    errors.push(
      '(root): configure https, mqtt or both: without an intake nothing can be commanded',
    );
  }
  for (const [id, device] of Object.entries(c.devices)) {
    if (c.plcs[device.plc] === undefined)
      errors.push(`devices.${id}.plc: no PLC named "${device.plc}"`);
  }
  return errors;
}

/** A broker URL MQTT.js speaks TLS on: mqtts://, ssl:// or wss://. */
export function isTlsMqttUrl(url: string): boolean {
  return /^(mqtts|ssl|wss):/.test(url);
}

/**
 * A client certificate against the URL's scheme: MQTT.js speaks TLS for mqtts://, ssl:// and
 * wss://, refuses the pair with tcp:// ("Unknown protocol for secure connection"), which failed
 * the daemon's start, not --check, and turns mqtt:// and ws:// into mqtts:// and wss:// by
 * itself: the intake spoke TLS while the configuration, the log and /readyz said mqtt:// (a
 * plain listener then answered every attempt with a reset TLS handshake, under that name). A
 * CA file without TLS: MQTT.js ignores it on mqtt://, ws:// and tcp://, and connected in the
 * clear, the broker never checked against the CA the operator gave — a site that meant to pin
 * its broker did not.
 */
function mqttTlsProblems(mqtt: NonNullable<SluiceConfig['mqtt']>): string[] {
  const tls = isTlsMqttUrl(mqtt.url);
  const scheme = /^[a-z]+/.exec(mqtt.url)?.[0] ?? '';
  const clientCertificate = mqtt.certFile !== undefined && mqtt.keyFile !== undefined;
  if (clientCertificate && !tls) {
    const mqttJs =
      scheme === 'tcp'
        ? 'MQTT.js refuses the pair with it'
        : `MQTT.js would speak TLS on it all the same, while the log and /readyz say ${scheme}://`;
    return [
      `mqtt.url: ${withoutPassword(mqtt.url)}: a client certificate (mqtt.certFile, mqtt.keyFile) needs TLS, which ${scheme}:// is not, and ${mqttJs}: use ${scheme === 'ws' ? 'wss' : 'mqtts'}://`,
    ];
  }
  if (mqtt.caFile !== undefined && !tls) {
    return [
      `mqtt.caFile: given, but mqtt.url ${withoutPassword(mqtt.url)} is not TLS: the connection would be unencrypted and the broker never checked against the CA; use mqtts:// (or wss://), or drop mqtt.caFile`,
    ];
  }
  return [];
}

/**
 * The folders systemd gives a unit in its environment, which a path may start with:
 * `${CREDENTIALS_DIRECTORY}/https.key` is a secret passed with LoadCredential= (systemd.exec(5)).
 */
const UNIT_DIRECTORIES = new Set([
  'CREDENTIALS_DIRECTORY',
  'STATE_DIRECTORY',
  'RUNTIME_DIRECTORY',
  'CONFIGURATION_DIRECTORY',
]);

/** How a path names a folder from the environment: `${NAME}` anywhere, or `$NAME` first. */
const VARIABLE_LIKE = /\$\{|^\$[A-Za-z_]/;

function resolvePaths(
  c: SluiceConfig,
  base: string,
  folderOf: (name: string) => string | undefined,
  unset: string[],
  unsupported: string[],
): SluiceConfig {
  const expand = (p: string, field: string): string => {
    const m = /^\$\{([A-Z_]+)\}(\/.*)?$/.exec(p);
    if (m === null || !UNIT_DIRECTORIES.has(m[1] ?? '')) {
      // Any other variable is left as written, and was taken for a folder of that name:
      // `stateDir: ${HOME}/sluice` made the daemon create `./${HOME}/sluice` in its working
      // directory, and a secret's path under it was simply "no such file".
      if (VARIABLE_LIKE.test(p)) unsupported.push(unsupportedVariable(p, field));
      return p;
    }
    const name = m[1] ?? '';
    if (VARIABLE_LIKE.test(m[2] ?? '')) {
      unsupported.push(unsupportedVariable(p, field));
      return p;
    }
    const dir = folderOf(name);
    if (dir === undefined || dir === '') {
      unset.push(
        `${field}: "${p}": ${name} is not set: systemd sets it for the unit; elsewhere set it to the folder that holds these files`,
      );
      return p;
    }
    return `${dir}${m[2] ?? ''}`;
  };
  const abs = (raw: string, field: string): string => {
    const p = expand(raw, field);
    // Unexpanded (its folder unset): kept as written, never taken for a relative path.
    return isAbsolute(p) || p.startsWith('${') ? p : resolve(base, p);
  };
  const opt = (p: string | undefined, field: string): string | undefined =>
    p === undefined ? undefined : abs(p, field);
  const stateDir = abs(c.stateDir, 'stateDir');
  // A file of the state folder: under an unexpanded one, unexpanded too (never a path under
  // the working directory, which resolve() made of `${STATE_DIRECTORY}`).
  const inStateDir = (name: string): string =>
    stateDir.startsWith('${') ? `${stateDir}/${name}` : resolve(stateDir, name);
  return {
    ...c,
    stateDir,
    ...(c.profilesDir === undefined ? {} : { profilesDir: abs(c.profilesDir, 'profilesDir') }),
    journal: {
      ...c.journal,
      path:
        c.journal.path === undefined
          ? inStateDir('journal.db')
          : abs(c.journal.path, 'journal.path'),
    },
    admin: {
      ...c.admin,
      socket:
        c.admin.socket === undefined
          ? inStateDir('admin.sock')
          : abs(c.admin.socket, 'admin.socket'),
      tokenFile:
        c.admin.tokenFile === undefined
          ? inStateDir('admin.token')
          : abs(c.admin.tokenFile, 'admin.tokenFile'),
    },
    // ptp4l's socket and pmc's reply folder are paths like any other (the unit's
    // ${RUNTIME_DIRECTORY} included); the pmc and chronyc binaries are looked up on PATH.
    clock: {
      ...c.clock,
      ptp: {
        ...c.clock.ptp,
        udsPath: abs(c.clock.ptp.udsPath, 'clock.ptp.udsPath'),
        ...(c.clock.ptp.clientSocketDir === undefined
          ? {}
          : { clientSocketDir: abs(c.clock.ptp.clientSocketDir, 'clock.ptp.clientSocketDir') }),
      },
    },
    ...(c.https === undefined
      ? {}
      : {
          https: {
            ...c.https,
            certFile: abs(c.https.certFile, 'https.certFile'),
            keyFile: abs(c.https.keyFile, 'https.keyFile'),
            ...(c.https.clientCaFile === undefined
              ? {}
              : { clientCaFile: abs(c.https.clientCaFile, 'https.clientCaFile') }),
          },
        }),
    ...(c.mqtt === undefined
      ? {}
      : {
          mqtt: {
            ...c.mqtt,
            ...(c.mqtt.passwordFile === undefined
              ? {}
              : { passwordFile: opt(c.mqtt.passwordFile, 'mqtt.passwordFile') }),
            ...(c.mqtt.caFile === undefined ? {} : { caFile: opt(c.mqtt.caFile, 'mqtt.caFile') }),
            ...(c.mqtt.certFile === undefined
              ? {}
              : { certFile: opt(c.mqtt.certFile, 'mqtt.certFile') }),
            ...(c.mqtt.keyFile === undefined
              ? {}
              : { keyFile: opt(c.mqtt.keyFile, 'mqtt.keyFile') }),
          },
        }),
    identities: ownNames(
      Object.fromEntries(
        Object.entries(c.identities).map(([k, v]) => [
          k,
          v.tokenFile === undefined
            ? v
            : { ...v, tokenFile: abs(v.tokenFile, `identities.${k}.tokenFile`) },
        ]),
      ),
    ),
  };
}

function unsupportedVariable(path: string, field: string): string {
  return `${field}: "${path}": only \${CREDENTIALS_DIRECTORY}, \${STATE_DIRECTORY}, \${RUNTIME_DIRECTORY} and \${CONFIGURATION_DIRECTORY} are expanded, and only at the start of a path; no other variable is: write the folder out`;
}
