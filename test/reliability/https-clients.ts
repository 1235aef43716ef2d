// HTTPS clients in a worker thread, for the campaigns that load the daemon with many of them:
// their TLS and JSON work runs on its own event loop, so that the test's main thread, which
// hosts the simulated PLCs, keeps answering its controllers' requests in time.
import { request } from 'node:https';
import { parentPort, workerData } from 'node:worker_threads';

export interface Endpoint {
  readonly host: string;
  readonly port: number;
  readonly ca: string;
  readonly token: string;
}

/** Many clients POST one keyed command each, retrying until the answer is final. */
export interface StormJob {
  readonly id: number;
  readonly key: string;
  readonly body: string;
  readonly clients: number;
  /** Bound for each client to reach a final answer. */
  readonly deadlineMs: number;
}

export interface FinalAnswer {
  readonly status: number;
  readonly body: string;
  readonly replayed: boolean;
  readonly attempts: number;
  /** Answers 409 IN_PROGRESS and 202 seen on the way. */
  readonly inFlight: number;
}

export type StormReply =
  | { readonly id: number; readonly answers: FinalAnswer[] }
  | { readonly id: number; readonly error: string };

interface Answer {
  readonly status: number;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly body: string;
}

const endpoint = workerData as Endpoint;

function post(key: string, body: string): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: endpoint.host,
        port: endpoint.port,
        method: 'POST',
        path: '/v1/commands',
        ca: endpoint.ca,
        agent: false,
        timeout: 10_000,
        headers: {
          authorization: `Bearer ${endpoint.token}`,
          'idempotency-key': key,
          prefer: 'wait=3',
          'content-type': 'application/json',
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            body: Buffer.concat(chunks).toString('utf8'),
          });
        });
        res.on('error', reject);
      },
    );
    req.once('timeout', () => req.destroy(new Error('timeout')));
    req.once('error', reject);
    req.end(body);
  });
}

async function sleep(ms: number): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, ms));
}

/** One client: POSTs until the answer is final, honouring Retry-After (with jitter). */
async function client(job: StormJob): Promise<FinalAnswer> {
  const deadline = Date.now() + job.deadlineMs;
  let inFlight = 0;
  for (let attempt = 1; ; attempt++) {
    let answer: Answer;
    try {
      answer = await post(job.key, job.body);
    } catch (error) {
      // A connection reset under load: a real client retries.
      if (Date.now() > deadline) throw error;
      await sleep(200);
      continue;
    }
    if (answer.status !== 202 && answer.status !== 409) {
      return {
        status: answer.status,
        body: answer.body,
        replayed: answer.headers['idempotent-replayed'] === 'true',
        attempts: attempt,
        inFlight,
      };
    }
    if (answer.status === 409 && !answer.body.includes('"IN_PROGRESS"')) {
      // A 409 with a rejection code is final.
      return { status: 409, body: answer.body, replayed: false, attempts: attempt, inFlight };
    }
    inFlight++;
    if (Date.now() > deadline) throw new Error(`${job.key}: still in flight after ${attempt}`);
    const retryAfterS = Number(answer.headers['retry-after'] ?? 1);
    await sleep(retryAfterS * 1_000 * (0.5 + Math.random() / 2));
  }
}

parentPort?.on('message', (job: StormJob) => {
  Promise.all(Array.from({ length: job.clients }, () => client(job))).then(
    (answers) => parentPort?.postMessage({ id: job.id, answers } satisfies StormReply),
    (error: unknown) =>
      parentPort?.postMessage({ id: job.id, error: String(error) } satisfies StormReply),
  );
});
