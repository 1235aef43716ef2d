/**
 * The MQTT topic tree of one gateway (SPEC §5), under `{root}/{gatewayId}` (root `sluice` by
 * default): `cmd/{device}` (in), `result/{device}`, `state/{device}` and `status` (out); and
 * which MQTT 5 Response Topics Sluice may answer to.
 */

/** The topic kinds of every gateway's tree: `{root}/{any gateway}/{kind}[/…]`. */
const GATEWAY_KINDS = new Set(['cmd', 'result', 'state', 'status']);

/** Why a requester's Response Topic was not answered: a label of a metric, no free text. */
export type ResponseTopicRefusal =
  /** Empty, too long, with wildcards or NUL: publishing there would be a protocol error. */
  | 'invalid'
  /** `$…`: the broker's own topics. */
  | 'system'
  /** `{root}/+/cmd/#`: a command topic of this or any other gateway (SPEC §5, issue 9). */
  | 'command_topic'
  /** This gateway's tree, or another gateway's result, state or status topics. */
  | 'gateway_topic'
  /** Not matched by `mqtt.responseTopics`. */
  | 'not_allowed';

export type ResponseTopicVerdict =
  { readonly ok: true } | { readonly ok: false; readonly reason: ResponseTopicRefusal };

/**
 * A command topic of this gateway under another topic root, `{root}/{gatewayId}/cmd/{device}`:
 * what a subscription left in the persistent session by an earlier `mqtt.topicRoot` delivers.
 */
export interface FormerCommandTopic {
  readonly root: string;
  readonly device: string;
  /** The subscription that delivered it: the command filter under that root. */
  readonly filter: string;
  /** The result topic under that root, where its requesters listen. */
  readonly result: string;
}

export class GatewayTopics {
  readonly gatewayId: string;
  readonly root: string;
  readonly prefix: string;
  readonly commandFilter: string;
  /** `{prefix}/state/+`: the retained state topics of this gateway's devices, past and present. */
  readonly stateFilter: string;
  readonly status: string;
  private readonly commandPrefix: string;
  private readonly statePrefix: string;
  private readonly rootLevels: readonly string[];

  constructor(gatewayId: string, root = 'sluice') {
    if (gatewayId.length === 0 || hasAny(gatewayId, ['/', '+', '#', '\u0000'])) {
      throw new Error(`gatewayId "${gatewayId}" cannot be an MQTT topic level`);
    }
    const rootProblem = topicRootProblem(root);
    if (rootProblem !== null) throw new Error(`topic root "${root}" ${rootProblem}`);
    this.gatewayId = gatewayId;
    this.root = root;
    this.rootLevels = root.split('/');
    this.prefix = `${root}/${gatewayId}`;
    this.commandPrefix = `${this.prefix}/cmd/`;
    this.commandFilter = `${this.prefix}/cmd/+`;
    this.statePrefix = `${this.prefix}/state/`;
    this.stateFilter = `${this.statePrefix}+`;
    this.status = `${this.prefix}/status`;
  }

  command(device: string): string {
    return `${this.commandPrefix}${device}`;
  }

  result(device: string): string {
    return `${this.prefix}/result/${device}`;
  }

  state(device: string): string {
    return `${this.statePrefix}${device}`;
  }

  /** The device a state topic of ours names (`''` for `state/`), null for any other topic. */
  stateDevice(topic: string): string | null {
    if (!topic.startsWith(this.statePrefix)) return null;
    const device = topic.slice(this.statePrefix.length);
    return device.includes('/') ? null : device;
  }

  /**
   * The device a command topic names: `''` for `cmd/` (an empty level, which the subscription
   * `cmd/+` matches too), null when the topic is not a command topic of ours.
   */
  commandDevice(topic: string): string | null {
    if (!topic.startsWith(this.commandPrefix)) return null;
    const device = topic.slice(this.commandPrefix.length);
    return device.includes('/') ? null : device;
  }

  /**
   * The command topic of this gateway under another topic root that `topic` is, or null. Only
   * the shape `{root}/{gatewayId}/cmd/{device}` with a valid root counts: the subscription
   * every version of Sluice made is `{root}/{gatewayId}/cmd/+`.
   */
  formerCommandTopic(topic: string): FormerCommandTopic | null {
    const levels = topic.split('/');
    const n = levels.length;
    if (n < 4 || levels[n - 3] !== this.gatewayId || levels[n - 2] !== 'cmd') return null;
    const root = levels.slice(0, n - 3).join('/');
    if (root === this.root || topicRootProblem(root) !== null) return null;
    const device = levels[n - 1] ?? '';
    const prefix = `${root}/${this.gatewayId}`;
    return { root, device, filter: `${prefix}/cmd/+`, result: `${prefix}/result/${device}` };
  }

  /**
   * For a topic `{prefix}/cmd/{device}` under a prefix that is not this gateway's (another
   * topic root, or another gateway id kept under a fixed `mqtt.clientId`): the command filter
   * `{prefix}/cmd/+` that delivered it, left in the persistent session by an earlier
   * configuration. Null for any other topic, and never this gateway's command filter.
   */
  formerCommandFilter(topic: string): string | null {
    const levels = topic.split('/');
    const n = levels.length;
    if (n < 4 || levels[n - 2] !== 'cmd') return null;
    const prefix = levels.slice(0, n - 2).join('/');
    if (prefix === this.prefix || topicRootProblem(prefix) !== null) return null;
    return `${prefix}/cmd/+`;
  }

  /**
   * Whether a requester's MQTT 5 Response Topic may be published to, and why not. Never, whatever
   * the allow-list says: a topic with wildcards (the PUBLISH would be malformed, MQTT 5
   * §3.3.2.1), a `$` topic (the broker's), a command topic of any gateway under the root (a
   * result there would be taken as a command by that gateway: a relay from a client allowed on
   * one gateway to another), and the topic trees of gateways (nothing may pose as a gateway's
   * result, state or status). Otherwise the topic must match one of the allowed filters.
   */
  responseTopicVerdict(topic: string, allowed: readonly string[]): ResponseTopicVerdict {
    if (
      topic.length === 0 ||
      Buffer.byteLength(topic) > 65_535 ||
      hasAny(topic, ['+', '#', '\u0000'])
    ) {
      return refused('invalid');
    }
    if (topic.startsWith('$')) return refused('system');
    const levels = topic.split('/');
    const underRoot =
      levels.length > this.rootLevels.length &&
      this.rootLevels.every((level, i) => levels[i] === level);
    if (underRoot) {
      // {root}/{gateway}/{kind}…: `+` matches any gateway id, the empty one included.
      const kind = levels[this.rootLevels.length + 1];
      if (kind === 'cmd') return refused('command_topic');
      if (kind !== undefined && GATEWAY_KINDS.has(kind)) return refused('gateway_topic');
    }
    if (topic === this.prefix || topic.startsWith(`${this.prefix}/`)) {
      return refused('gateway_topic');
    }
    return allowed.some((filter) => topicMatches(filter, topic))
      ? { ok: true }
      : refused('not_allowed');
  }
}

function refused(reason: ResponseTopicRefusal): ResponseTopicVerdict {
  return { ok: false, reason };
}

/** Null when `root` can be the topic root of gateways (one or more plain topic levels). */
export function topicRootProblem(root: string): string | null {
  if (root.length === 0) return 'is empty';
  if (root.startsWith('$')) return 'starts with "$" (the broker\'s own topics)';
  if (hasAny(root, ['+', '#', '\u0000'])) return 'has a wildcard or NUL';
  if (root.split('/').some((level) => level.length === 0)) return 'has an empty topic level';
  return null;
}

/** The longest an MQTT string (a client id, a user name, a topic) may be: 65,535 UTF-8 bytes. */
export const MAX_MQTT_STRING_BYTES = 65_535;

/**
 * What a topic adds to the topic root, at the longest: `/{gatewayId}/result/{device}`, with a
 * gateway id of 64 and a device id of 128 ASCII characters (the configuration's limits).
 */
const LONGEST_TOPIC_SUFFIX_BYTES = '/'.length + 64 + '/result/'.length + 128;

/**
 * Why a string the gateway sends in its CONNECT (client id, user name, and the Will's topic
 * under the topic root) cannot be sent, or null. MQTT strings are at most 65,535 bytes of
 * UTF-8 without U+0000 or surrogates (MQTT 5 §1.5.4, 3.1.1 §1.5.3), and a broker may close the
 * connection on control characters and non-characters, which Mosquitto does: it drops such a
 * CONNECT without a CONNACK ("protocol error"), and MQTT.js throws on a string past the length.
 * Either way the intake would never connect. `reserved`: bytes the string must leave for what
 * follows it in a topic.
 */
export function mqttStringProblem(value: string, reserved = 0): string | null {
  const bytes = Buffer.byteLength(value, 'utf8');
  if (bytes > MAX_MQTT_STRING_BYTES - reserved) {
    return `${bytes} bytes of UTF-8, longer than MQTT allows (${MAX_MQTT_STRING_BYTES - reserved} bytes${reserved === 0 ? '' : `, leaving ${reserved} for the rest of the longest topic`})`;
  }
  const bad = /[\p{Cc}\p{Cs}\p{Noncharacter_Code_Point}]/u.exec(value);
  if (bad === null) return null;
  const code = (bad[0].codePointAt(0) ?? 0).toString(16).toUpperCase().padStart(4, '0');
  const what = /\p{Cc}/u.test(bad[0])
    ? 'a control character'
    : /\p{Cs}/u.test(bad[0])
      ? 'a lone surrogate (not UTF-8)'
      : 'a Unicode non-character';
  return `has ${what} (U+${code} at ${bad.index}), which MQTT forbids or lets a broker refuse (Mosquitto closes the connection)`;
}

/** mqttStringProblem for the topic root: every topic of the gateway must fit too. */
export function topicRootStringProblem(root: string): string | null {
  return mqttStringProblem(root, LONGEST_TOPIC_SUFFIX_BYTES);
}

/** Null when `filter` is a valid MQTT topic filter (MQTT 5 §4.7). */
export function topicFilterProblem(filter: string): string | null {
  if (filter.length === 0) return 'is empty';
  if (filter.includes('\u0000')) return 'has NUL';
  const levels = filter.split('/');
  for (const [i, level] of levels.entries()) {
    if (level.includes('#') && (level !== '#' || i !== levels.length - 1)) {
      return '"#" must be a whole level, the last one';
    }
    if (level.includes('+') && level !== '+') return '"+" must be a whole level';
  }
  return null;
}

/**
 * Whether a topic name matches a topic filter (MQTT 5 §4.7): `+` one level (an empty one too),
 * `#` the rest including the parent level; a filter starting with a wildcard does not match
 * `$` topics.
 */
export function topicMatches(filter: string, topic: string): boolean {
  const f = filter.split('/');
  const t = topic.split('/');
  if (topic.startsWith('$') && (f[0] === '+' || f[0] === '#')) return false;
  for (let i = 0; i < f.length; i += 1) {
    const level = f[i];
    if (level === '#') return true;
    if (i >= t.length) return false;
    if (level !== '+' && level !== t[i]) return false;
  }
  return f.length === t.length;
}

/** At most this many filters are tried for one topic (filtersMatching). */
export const MAX_MATCHING_FILTERS = 256;
/** And at most this many bytes of them, so that one UNSUBSCRIBE stays a small packet. */
const MAX_MATCHING_FILTER_BYTES = 64 * 1024;

/**
 * Topic filters that match `topic` (MQTT 5 §4.7), the most general first: `#`, each run of its
 * first levels followed by `#` (which matches its parent level too), the topic itself, then the
 * same with one level `+`, two, and so on, up to `limit` filters and 64 KiB. For a topic of up
 * to six levels and a few hundred bytes that is every filter that matches it; past that, those
 * with the most `+` levels are left out. None starts with a wildcard for a `$` topic (such a filter does not match it).
 * What an UNSUBSCRIBE needs to remove a subscription that delivered `topic` when only the topic
 * is known (MQTT cannot list a session's subscriptions).
 */
export function filtersMatching(topic: string, limit = MAX_MATCHING_FILTERS): string[] {
  const levels = topic.split('/');
  const n = levels.length;
  const system = topic.startsWith('$');
  // Each shape is the number of literal-or-`+` levels and whether `#` follows them.
  const shapes: { readonly count: number; readonly hash: boolean }[] = [];
  for (let k = 0; k <= n; k += 1) shapes.push({ count: k, hash: true });
  shapes.push({ count: n, hash: false });
  const filters: string[] = [];
  let bytes = 0;
  const add = (filter: string): boolean => {
    const size = Buffer.byteLength(filter) + 2;
    if (filters.length >= limit || bytes + size > MAX_MATCHING_FILTER_BYTES) return false;
    filters.push(filter);
    bytes += size;
    return true;
  };
  for (let pluses = 0; pluses <= n; pluses += 1) {
    for (const shape of shapes) {
      if (pluses > shape.count) continue;
      for (const positions of combinations(shape.count, pluses)) {
        if (system && (positions[0] === 0 || (shape.count === 0 && shape.hash))) continue;
        const parts = levels.slice(0, shape.count);
        for (const i of positions) parts[i] = '+';
        if (shape.hash) parts.push('#');
        if (!add(parts.join('/'))) return filters;
      }
    }
  }
  return filters;
}

/** The ways to choose `k` of the positions 0 … n-1, in increasing order, lazily. */
function* combinations(n: number, k: number, from = 0): Generator<number[]> {
  if (k === 0) {
    yield [];
    return;
  }
  for (let i = from; i <= n - k; i += 1) {
    for (const rest of combinations(n, k - 1, i + 1)) yield [i, ...rest];
  }
}

function hasAny(text: string, characters: readonly string[]): boolean {
  return characters.some((c) => text.includes(c));
}
