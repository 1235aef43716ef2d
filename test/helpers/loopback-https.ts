import { writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { join } from 'node:path';
import { generate } from 'selfsigned';

/**
 * What the daemon-level tests share to reach a daemon's HTTPS intake on loopback: a
 * self-signed certificate for 127.0.0.1 written where the site file points, and one request.
 */

/** Writes `cert.pem` and `key.pem` into `dir`; returns the certificate (the client's CA). */
export async function loopbackCertificate(dir: string): Promise<string> {
  const pems = await generate([{ name: 'commonName', value: 'localhost' }], {
    keyType: 'ec',
    curve: 'P-256',
    extensions: [{ name: 'subjectAltName', altNames: [{ type: 7, ip: '127.0.0.1' }] }],
  });
  writeFileSync(join(dir, 'cert.pem'), pems.cert);
  writeFileSync(join(dir, 'key.pem'), pems.private);
  return pems.cert;
}

export interface HttpsAnswer {
  readonly status: number;
  readonly headers: Record<string, unknown>;
  readonly body: string;
  json(): Record<string, unknown>;
}

/** A request body sent as written, not through JSON.stringify (which turns -0 into 0). */
export class RawJson {
  constructor(readonly text: string) {}
}

/** One request with a bearer token; a JSON body when `body` is given. */
export function httpsRequest(
  target: { readonly port: number; readonly ca: string; readonly token: string },
  method: string,
  path: string,
  headers: Record<string, string> = {},
  body?: unknown,
): Promise<HttpsAnswer> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: '127.0.0.1',
        port: target.port,
        method,
        path,
        ca: target.ca,
        headers: { authorization: `Bearer ${target.token}`, ...headers },
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () => {
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            body: text,
            json: () => JSON.parse(text) as Record<string, unknown>,
          });
        });
      },
    );
    req.once('error', reject);
    if (body !== undefined) {
      req.setHeader('content-type', 'application/json');
      req.end(body instanceof RawJson ? body.text : JSON.stringify(body));
    } else req.end();
  });
}

/**
 * The value of the sample `name` with exactly `labels` in the daemon's /metrics (over HTTPS, as a
 * scraper reads it); 0 when the scrape has no such sample (a counter never incremented).
 */
export async function metricSample(
  target: { readonly port: number; readonly ca: string },
  name: string,
  labels: Record<string, string>,
): Promise<number> {
  const scrape = await httpsRequest({ ...target, token: '' }, 'GET', '/metrics');
  if (scrape.status !== 200) throw new Error(`GET /metrics answered ${scrape.status}`);
  const want = Object.entries(labels)
    .map(([k, v]) => `${k}="${v}"`)
    .join(',');
  const line = scrape.body.split('\n').find((l) => l.startsWith(`${name}{${want}} `));
  return line === undefined ? 0 : Number(line.slice(line.lastIndexOf(' ') + 1));
}
