import type { IPublishPacket } from 'mqtt';
import { TestClient } from '../helpers/mosquitto.js';
import type { Site } from './site.js';

/**
 * Clients that behave like a plant's issuers under failure: they keep retrying one command
 * (same Idempotency-Key, same payload) until they get a terminal answer, over HTTPS (on a
 * network error, a timeout, 503, 429, 202 and 409 IN_PROGRESS) and over MQTT (QoS 1, the same
 * message published again when no terminal result came). What each was told is kept, so that
 * the campaign can compare it with the journal.
 */

const TERMINAL = new Set(['confirmed', 'rejected', 'failed']);

export type Intake = 'https' | 'mqtt';

/** A command as an issuer sends it (SPEC §2); `key` travels beside it. */
export interface CommandBody {
  readonly device: string;
  readonly action: string;
  readonly position?: number;
  readonly issuedAt?: string;
  readonly ttlMs?: number;
}

/** What a client was finally told, or why it was told nothing. */
export interface ClientAnswer {
  readonly intake: Intake;
  readonly key: string;
  /** The terminal state and code the client was told; null when it got none. */
  readonly state: string | null;
  readonly code: string | null;
  /** HTTPS status of the terminal answer. */
  readonly status: number | null;
  /** Requests (HTTPS) or publishes acknowledged by the broker (MQTT) it took. */
  readonly attempts: number;
  /** Why the client gave up or what it could not understand. */
  readonly problem: string | null;
}

export interface RetryPolicy {
  /** Give up after this long (the campaign then reports NO_ANSWER). */
  readonly budgetMs: number;
  /** HTTPS: pause between tries. MQTT: how long to wait for a result before publishing again. */
  readonly retryMs: readonly [number, number];
  /** HTTPS `Prefer` header. */
  readonly prefer?: string;
  /** HTTPS request timeout. */
  readonly timeoutMs?: number;
  /** Uniform in [0, 1): the client's own jitter (seeded). */
  readonly random: () => number;
  /** Called once, as the first request leaves. */
  readonly onFirstSend?: () => void;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const between = (range: readonly [number, number], random: () => number): number =>
  range[0] + Math.floor(random() * (range[1] - range[0] + 1));

/** HTTPS statuses that mean "not yet, ask again" (SPEC §4). */
function retryable(status: number, code: string | null): boolean {
  return (
    status === 202 ||
    status === 503 ||
    status === 429 ||
    (status === 409 && (code === 'IN_PROGRESS' || code === null))
  );
}

function readDoc(body: string): { state: string | null; code: string | null } {
  try {
    const doc = JSON.parse(body) as { state?: unknown; code?: unknown };
    return {
      state: typeof doc.state === 'string' ? doc.state : null,
      code: typeof doc.code === 'string' ? doc.code : null,
    };
  } catch {
    return { state: null, code: null };
  }
}

/**
 * POSTs the command until a terminal answer. Every answer other than 503 and 429 counts as an
 * acknowledgement (I5: the daemon answered, so it had journaled the command).
 */
export async function httpsUntilTerminal(
  site: Site,
  key: string,
  body: CommandBody,
  policy: RetryPolicy,
): Promise<ClientAnswer> {
  const end = Date.now() + policy.budgetMs;
  let attempts = 0;
  let last = 'no request sent';
  const payload = JSON.stringify(body);
  for (;;) {
    if (Date.now() > end) {
      return {
        intake: 'https',
        key,
        state: null,
        code: null,
        status: null,
        attempts,
        problem: `no terminal answer within ${policy.budgetMs} ms (last: ${last})`,
      };
    }
    if (attempts === 0) policy.onFirstSend?.();
    attempts++;
    try {
      const answer = await site.https(
        'POST',
        '/v1/commands',
        { 'idempotency-key': key, prefer: policy.prefer ?? 'respond-async' },
        payload,
        policy.timeoutMs ?? 5_000,
      );
      if (answer.status !== 503 && answer.status !== 429) site.acknowledged.set(key, 'https');
      const doc = readDoc(answer.body);
      last = `${answer.status} ${doc.code ?? ''}`.trim();
      if (!retryable(answer.status, doc.code)) {
        const known =
          [200, 403, 409, 502].includes(answer.status) &&
          doc.state !== null &&
          TERMINAL.has(doc.state);
        return {
          intake: 'https',
          key,
          state: doc.state,
          code: doc.code,
          status: answer.status,
          attempts,
          problem: known
            ? null
            : `unexpected answer ${answer.status}: ${answer.body.slice(0, 300)}`,
        };
      }
    } catch (error) {
      last = error instanceof Error ? error.message : String(error);
    }
    await sleep(between(policy.retryMs, policy.random));
  }
}

interface ResultDoc {
  readonly key: string;
  readonly state: string | null;
  readonly code: string | null;
}

/**
 * One MQTT connection of the plant's identity for a whole site: publishes commands with QoS 1
 * and indexes every result published on `{prefix}/result/+` by key. It counts, per key, the
 * publishes the broker acknowledged: each of them is delivered to the gateway's persistent
 * session until the gateway acknowledges it, which it may do only after journaling it (I5).
 */
export class CampaignMqtt {
  /**
   * Publishes the broker acknowledged (PUBACK to this client), per key: when each was sent
   * (epoch ms; the broker took it after that).
   */
  readonly published = new Map<string, number[]>();
  private readonly results = new Map<string, ResultDoc>();
  private readonly errors = new Map<string, string>();
  private readonly waiters = new Set<() => void>();

  private constructor(
    readonly client: TestClient,
    private readonly site: Site,
  ) {
    client.client.on('message', (topic: string, payload: Buffer, _packet: IPublishPacket) => {
      if (!topic.startsWith(`sluice/${site.gatewayId}/result/`)) return;
      let doc: Record<string, unknown>;
      try {
        doc = JSON.parse(payload.toString('utf8')) as Record<string, unknown>;
      } catch {
        return;
      }
      if (typeof doc.key !== 'string') return;
      const state = typeof doc.state === 'string' ? doc.state : null;
      const code = typeof doc.code === 'string' ? doc.code : null;
      if (state !== null && TERMINAL.has(state)) {
        this.results.set(doc.key, { key: doc.key, state, code });
      } else if (state === null) {
        // An error answer (INVALID_COMMAND, IDEMPOTENCY_KEY_REUSED…): the campaign's mistake
        // or the daemon's; either way the client is told something it did not expect.
        this.errors.set(doc.key, `${code ?? '?'}: ${JSON.stringify(doc.detail ?? null)}`);
      }
      for (const wake of this.waiters) wake();
    });
  }

  static async connect(site: Site, clientId: string): Promise<CampaignMqtt> {
    const client = await TestClient.connect(site.broker.url, { clientId, clean: true });
    await client.subscribe(`sluice/${site.gatewayId}/result/+`, 1);
    return new CampaignMqtt(client, site);
  }

  /** The terminal result published for the key, if any. */
  result(key: string): ResultDoc | undefined {
    return this.results.get(key);
  }

  /** Publishes until a terminal result for the key arrives. */
  async untilTerminal(key: string, body: CommandBody, policy: RetryPolicy): Promise<ClientAnswer> {
    const end = Date.now() + policy.budgetMs;
    const payload = { key, ...body };
    let attempts = 0;
    for (;;) {
      const known = this.results.get(key);
      if (known !== undefined) {
        return {
          intake: 'mqtt',
          key,
          state: known.state,
          code: known.code,
          status: null,
          attempts,
          problem: null,
        };
      }
      const error = this.errors.get(key);
      if (error !== undefined) {
        return {
          intake: 'mqtt',
          key,
          state: null,
          code: null,
          status: null,
          attempts,
          problem: `error answer: ${error}`,
        };
      }
      const left = end - Date.now();
      if (left <= 0) {
        return {
          intake: 'mqtt',
          key,
          state: null,
          code: null,
          status: null,
          attempts,
          problem: `no terminal result within ${policy.budgetMs} ms`,
        };
      }
      if (attempts === 0) policy.onFirstSend?.();
      // Resolves on the broker's PUBACK; while the broker is down, mqtt.js keeps the message
      // and sends it on the next connection.
      const sentAt = Date.now();
      const acked = await withinMs(
        this.client.publish(`sluice/${this.site.gatewayId}/cmd/${body.device}`, payload),
        left,
      );
      if (acked) {
        attempts++;
        this.published.set(key, [...(this.published.get(key) ?? []), sentAt]);
      }
      await this.waitForResult(
        key,
        Math.min(between(policy.retryMs, policy.random), Math.max(0, end - Date.now())),
      );
    }
  }

  private async waitForResult(key: string, ms: number): Promise<void> {
    if (this.results.has(key) || this.errors.has(key)) return;
    await new Promise<void>((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.waiters.delete(wake);
        resolve();
      };
      const wake = (): void => {
        if (this.results.has(key) || this.errors.has(key)) done();
      };
      const timer = setTimeout(done, ms);
      this.waiters.add(wake);
    });
  }

  async close(): Promise<void> {
    await this.client.end();
  }
}

/** True when the promise settled within `ms` (its rejection counts as not acknowledged). */
async function withinMs(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise.then(
        () => true,
        () => false,
      ),
      new Promise<boolean>((resolve) => {
        timer = setTimeout(() => {
          resolve(false);
        }, ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
