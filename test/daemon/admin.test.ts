import { statSync, writeFileSync, readFileSync } from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';
import { pino } from 'pino';
import { generate } from 'selfsigned';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { Daemon } from '../../src/daemon/daemon.js';
import { startPlant, type Plant } from '../../simulators/plant.js';
import { tempDir } from '../helpers/fixtures.js';
import { until } from '../helpers/mosquitto.js';
import { inventoryFor } from '../helpers/plant-inventory.js';

/**
 * The daemon's admin endpoint (docs/admin-api.md), on a real daemon against sluice-sim: a Unix
 * socket only the daemon's user can open and a token only it can read; `resolve` ends an open
 * command RESOLVED_BY_OPERATOR with who and why in its history, writes nothing, and lets the
 * device move on; `reverify` has a worker judge the command now; `GET /v1/clock` gives its
 * times in RFC 3339. Ground truth: the simulator.
 */

let plant: Plant;
let daemon: Daemon;
let dir: string;
let cleanup: () => void;
let socket: string;
let token: string;

async function admin(
  method: string,
  path: string,
  body?: unknown,
  bearer = token,
): Promise<{ status: number; json: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const req = request(
      { socketPath: socket, method, path, headers: { authorization: `Bearer ${bearer}` } },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () => {
          resolve({
            status: res.statusCode ?? 0,
            json: JSON.parse(text) as Record<string, unknown>,
          });
        });
      },
    );
    req.once('error', reject);
    if (body !== undefined) {
      req.setHeader('content-type', 'application/json');
      req.end(JSON.stringify(body));
    } else req.end();
  });
}

beforeAll(async () => {
  ({ dir, cleanup } = tempDir('sluice-admin-'));
  plant = await startPlant(
    {
      control: { host: '127.0.0.1', port: 0 },
      plcs: {
        mb: {
          protocol: 'modbus',
          host: '127.0.0.1',
          port: 0,
          devices: {
            'inlet-valve': { profile: 'valve', base: 0, travelMs: 300, travelTimeoutMs: 60_000 },
          },
        },
      },
    },
    { ephemeralPorts: true, control: false },
  );
  const pems = await generate([{ name: 'commonName', value: 'localhost' }], {
    keyType: 'ec',
    curve: 'P-256',
  });
  writeFileSync(join(dir, 'cert.pem'), pems.cert);
  writeFileSync(join(dir, 'key.pem'), pems.private);
  const inventory = inventoryFor(plant);
  const configPath = join(dir, 'sluice.yaml');
  writeFileSync(
    configPath,
    stringify({
      gatewayId: 'adminsite',
      stateDir: 'state',
      https: { host: '127.0.0.1', port: 0, certFile: 'cert.pem', keyFile: 'key.pem' },
      identities: {},
      plcs: inventory.plcs,
      devices: inventory.devices,
    }),
  );
  daemon = await Daemon.start(loadConfig(configPath, { env: {} }), {
    logger: pino({ level: 'silent' }),
  });
  socket = join(dir, 'state', 'admin.sock');
  token = readFileSync(join(dir, 'state', 'admin.token'), 'utf8').trim();
}, 30_000);

afterAll(async () => {
  await daemon.stop();
  await plant.stop();
  cleanup();
});

describe('admin endpoint', () => {
  it('only the daemon’s user can open the socket and read the token; a wrong token is 401', async () => {
    expect(statSync(socket).mode & 0o777).toBe(0o600);
    expect(statSync(join(dir, 'state', 'admin.token')).mode & 0o777).toBe(0o600);
    const refused = await admin('GET', '/v1/health', undefined, 'x'.repeat(64));
    expect(refused.status).toBe(401);
    expect(refused.json).toMatchObject({ code: 'UNAUTHORIZED' });
    // Compared as digests: a prefix, the token with more after it, and nothing are refused alike.
    for (const wrong of [token.slice(0, 32), `${token}0`, token.slice(1), '']) {
      const answer = await admin('GET', '/v1/health', undefined, wrong);
      expect(answer.status).toBe(401);
      expect(answer.json).toMatchObject({ code: 'UNAUTHORIZED' });
    }
    const health = await admin('GET', '/v1/health');
    expect(health.status).toBe(200);
    expect(health.json).toHaveProperty('checks');
    const clock = await admin('GET', '/v1/clock');
    expect(clock.json).toMatchObject({ gateway: { source: 'none', state: 'UNKNOWN' } });
  });

  it('GET /v1/clock gives the gateway clock as documented: times in RFC 3339, no monotonic reading', async () => {
    const clock = await admin('GET', '/v1/clock');
    expect(clock.status).toBe(200);
    const gateway = clock.json.gateway as Record<string, unknown>;
    // docs/admin-api.md's fields, as the status page gives them; lastLockedMono, the monotonic
    // time the holdover is measured on, means nothing outside the daemon's process.
    expect(Object.keys(gateway).sort()).toEqual(
      [
        'source',
        'state',
        'offsetNs',
        'grandmaster',
        'portState',
        'detail',
        'checkedAt',
        'since',
        'lastLockedAt',
      ].sort(),
    );
    const rfc3339 = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;
    expect(gateway.checkedAt).toMatch(rfc3339);
    expect(gateway.since).toMatch(rfc3339);
    expect(gateway.lastLockedAt).toBeNull();
  });

  it('resolve ends a command held by a stuck valve, audited, nothing written; the device moves on', async () => {
    const valve = plant.device('inlet-valve');
    valve.setFault({ kind: 'stuck-travel' });
    daemon.pipeline.submit({
      key: 'stuck-1',
      identity: { scope: 'ops', devices: 'all' },
      intake: 'https',
      request: {
        device: 'inlet-valve',
        action: 'open',
        position: null,
        issuedAt: null,
        ttlMs: 60_000,
      },
    });
    await until(() => (valve.counters.writesReceived === 1 ? true : undefined), 5_000, 'the write');
    // The resolve comes once the daemon has read the write's echo back while the command is
    // open. Resolved before (a loaded machine: the admin request overtakes the readbacks), the
    // command ends with its write in doubt, and the next readback showing the echo adds a note
    // to its history after the resolve (late-echo.ts): a history of another shape.
    const devices = await until(
      async () => {
        const list = (await admin('GET', '/v1/devices')).json.devices as {
          inFlight: string | null;
          mirror: { seq: number | null } | null;
        }[];
        const echoed = valve.snapshot().seqEcho;
        return echoed !== 0 && list[0]?.mirror?.seq === echoed ? list : undefined;
      },
      5_000,
      "the write's echo read back",
    );
    expect(devices[0]?.inFlight).toBe('stuck-1');

    const noReason = await admin('POST', '/v1/commands/stuck-1/resolve', {
      as: 'failed',
      by: 'ops@gw',
    });
    expect(noReason.status).toBe(400);
    const resolved = await admin('POST', '/v1/commands/stuck-1/resolve', {
      as: 'failed',
      reason: 'valve jammed; fitter on site',
      by: 'ops@gw',
    });
    expect(resolved.status).toBe(200);
    expect(resolved.json.result).toMatchObject({
      state: 'failed',
      code: 'RESOLVED_BY_OPERATOR',
      detail: expect.stringContaining(
        'resolved by "ops@gw": "valve jammed; fitter on site"',
      ) as unknown,
    });
    // The resolve wrote nothing; the command's own write had reached the valve, which takes it
    // when freed (below): the outcome must not say that nothing was written.
    expect(resolved.json.result).toMatchObject({
      detail: expect.stringMatching(
        /the command's write \(sequence number \d+\) had reached the controller before, which acknowledged it: it may have been applied$/,
      ) as unknown,
    });
    const history = daemon.pipeline.history({ scope: 'ops', key: 'stuck-1' });
    expect(history.at(-1)).toMatchObject({ to: 'failed', intake: 'admin' });
    const again = await admin('POST', '/v1/commands/stuck-1/resolve', {
      as: 'failed',
      reason: 'twice',
      by: 'ops@gw',
    });
    expect(again.json).toMatchObject({ code: 'ALREADY_SETTLED' });
    // The same operator with a reason the first one merely begins with (up to its "; "): another
    // request, refused, not taken for the same one asked again.
    const shorter = await admin('POST', '/v1/commands/stuck-1/resolve', {
      as: 'failed',
      reason: 'valve jammed',
      by: 'ops@gw',
    });
    expect({ status: shorter.status, json: shorter.json }).toMatchObject({
      status: 409,
      json: { code: 'ALREADY_SETTLED' },
    });
    // The very same request is: answered as the resolve it was.
    const same = await admin('POST', '/v1/commands/stuck-1/resolve', {
      as: 'failed',
      reason: 'valve jammed; fitter on site',
      by: 'ops@gw',
    });
    expect(same.status).toBe(200);

    // Freed, the valve finishes its travel; the device is free again: the next command runs.
    valve.clearFault('stuck-travel');
    await until(() => (valve.snapshot().state === 'OPEN' ? true : undefined), 5_000, 'OPEN');
    daemon.pipeline.submit({
      key: 'after-1',
      identity: { scope: 'ops', devices: 'all' },
      intake: 'https',
      request: {
        device: 'inlet-valve',
        action: 'close',
        position: null,
        issuedAt: null,
        ttlMs: 60_000,
      },
    });
    const after = await daemon.pipeline.waitForSettled({ scope: 'ops', key: 'after-1' }, 10_000);
    expect(after?.state).toBe('confirmed');
    expect(valve.counters.writesReceived).toBe(2);
  });

  it('reverify has the command judged now and answers with the outcome', async () => {
    const valve = plant.device('inlet-valve');
    valve.setFault({ kind: 'stuck-travel' });
    daemon.pipeline.submit({
      key: 'stuck-2',
      identity: { scope: 'ops', devices: 'all' },
      intake: 'https',
      request: {
        device: 'inlet-valve',
        action: 'open',
        position: null,
        issuedAt: null,
        ttlMs: 60_000,
      },
    });
    await until(() => (valve.counters.writesReceived === 3 ? true : undefined), 5_000, 'the write');
    const pending = admin('POST', '/v1/commands/stuck-2/reverify', { by: 'ops@gw' });
    valve.clearFault('stuck-travel');
    const answer = await pending;
    expect(answer.status).toBe(200);
    expect(answer.json).toMatchObject({ settled: true, result: { state: 'confirmed' } });
    expect(
      daemon.pipeline
        .history({ scope: 'ops', key: 'stuck-2' })
        .some((e) => e.detail === 'reverify requested by ops@gw'),
    ).toBe(true);
    expect(valve.counters.writesReceived).toBe(3);
    const unknown = await admin('POST', '/v1/commands/nope/reverify', { by: 'ops@gw' });
    expect(unknown).toMatchObject({ status: 404, json: { code: 'UNKNOWN_COMMAND' } });
  });
});
