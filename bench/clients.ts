import { Agent, request } from 'node:https';
import { connectAsync, type MqttClient } from 'mqtt';

/**
 * The bench's clients: HTTPS over one keep-alive agent (TLS handshakes are not what is
 * measured), and MQTT over one connection that publishes commands and matches the results the
 * gateway publishes by key. Every wait is bounded.
 */

export interface HttpsAnswer {
  readonly status: number;
  readonly replayed: boolean;
  readonly body: string;
}

export class HttpsClient {
  private readonly agent: Agent;

  constructor(
    private readonly target: { readonly port: number; readonly ca: string; readonly token: string },
    maxSockets: number,
  ) {
    this.agent = new Agent({ keepAlive: true, maxSockets, ca: target.ca });
  }

  /** POST /v1/commands with a key; answered once the command settled (Prefer: wait). */
  command(key: string, body: Record<string, unknown>, timeoutMs = 15_000): Promise<HttpsAnswer> {
    return this.send('POST', '/v1/commands', timeoutMs, body, {
      'idempotency-key': key,
      prefer: 'wait=10',
    });
  }

  get(path: string, timeoutMs = 15_000): Promise<HttpsAnswer> {
    return this.send('GET', path, timeoutMs);
  }

  close(): void {
    this.agent.destroy();
  }

  private send(
    method: string,
    path: string,
    timeoutMs: number,
    body?: Record<string, unknown>,
    headers: Record<string, string> = {},
  ): Promise<HttpsAnswer> {
    return new Promise((resolve, reject) => {
      const payload = body === undefined ? undefined : JSON.stringify(body);
      const req = request(
        {
          host: '127.0.0.1',
          port: this.target.port,
          method,
          path,
          agent: this.agent,
          timeout: timeoutMs,
          headers: {
            authorization: `Bearer ${this.target.token}`,
            ...(payload === undefined
              ? {}
              : {
                  'content-type': 'application/json',
                  'content-length': Buffer.byteLength(payload),
                }),
            ...headers,
          },
        },
        (res) => {
          let text = '';
          res.setEncoding('utf8');
          res.on('data', (chunk: string) => (text += chunk));
          res.on('end', () => {
            resolve({
              status: res.statusCode ?? 0,
              replayed: res.headers['idempotent-replayed'] === 'true',
              body: text,
            });
          });
          res.on('error', reject);
        },
      );
      req.once('timeout', () => {
        req.destroy(new Error(`${method} ${path}: no answer within ${timeoutMs} ms`));
      });
      req.once('error', reject);
      req.end(payload);
    });
  }
}

/**
 * Polls GET /healthz with fresh connections until it answers 200 (or `timeoutMs` passes);
 * resolves with the wall-clock ms of the first answer.
 */
export async function firstAnswer(
  port: number,
  ca: string,
  timeoutMs: number,
  signal?: AbortSignal,
): Promise<number | null> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end && signal?.aborted !== true) {
    const answered = await new Promise<boolean>((resolve) => {
      const req = request(
        { host: '127.0.0.1', port, path: '/healthz', ca, agent: false, timeout: 1_000 },
        (res) => {
          res.resume();
          res.on('end', () => {
            resolve(res.statusCode === 200);
          });
        },
      );
      req.once('timeout', () => req.destroy());
      req.once('error', () => {
        resolve(false);
      });
      req.end();
    });
    if (answered) return Date.now();
    await new Promise((r) => setTimeout(r, 5));
  }
  return null;
}

export interface MqttResult {
  readonly key: string;
  readonly state?: string;
  readonly code?: string;
  readonly replayed?: boolean;
}

/** One MQTT connection: publishes commands and waits for their results, matched by key. */
export class MqttCommander {
  private readonly waiters = new Map<string, (result: MqttResult) => boolean>();

  private constructor(
    private readonly client: MqttClient,
    private readonly prefix: string,
  ) {
    client.on('message', (_topic, payload) => {
      let result: MqttResult;
      try {
        result = JSON.parse(payload.toString('utf8')) as MqttResult;
      } catch {
        return;
      }
      const waiter = this.waiters.get(result.key);
      if (waiter?.(result) === true) this.waiters.delete(result.key);
    });
  }

  /** `name` tells the bench's connections apart (one client id each). */
  static async connect(url: string, gateway: string, name = 'client'): Promise<MqttCommander> {
    const client = await connectAsync(url, {
      protocolVersion: 5,
      clientId: `sluice-bench-${name}-${process.pid}`,
      clean: true,
      reconnectPeriod: 0,
      connectTimeout: 5_000,
    });
    // mqtt.js leaves Nagle's algorithm on: a publish written right after the PUBACK of the
    // last result would wait for the broker's delayed ACK (40 ms). The bench's client is not
    // what is measured; the daemon's own connection stays as it ships.
    const socket = client.stream as { setNoDelay?: (on: boolean) => void };
    socket.setNoDelay?.(true);
    const prefix = `sluice/${gateway}`;
    await client.subscribeAsync(`${prefix}/result/+`, { qos: 1 });
    return new MqttCommander(client, prefix);
  }

  /**
   * Publishes a command (QoS 1) and resolves with its result: the first one, or with
   * `replay`, the first one marked `replayed`.
   */
  command(
    device: string,
    payload: { key: string } & Record<string, unknown>,
    options: { replay?: boolean; timeoutMs?: number } = {},
  ): Promise<MqttResult> {
    const timeoutMs = options.timeoutMs ?? 15_000;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.delete(payload.key);
        reject(new Error(`no MQTT result for ${payload.key} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiters.set(payload.key, (result) => {
        if (options.replay === true && result.replayed !== true) return false;
        clearTimeout(timer);
        resolve(result);
        return true;
      });
      this.client.publish(`${this.prefix}/cmd/${device}`, JSON.stringify(payload), { qos: 1 });
    });
  }

  async close(): Promise<void> {
    await this.client.endAsync(true);
  }
}
