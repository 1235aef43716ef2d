import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { until } from '../helpers/mosquitto.js';
import { call, login, startUiSite, TOKENS, type UiSite } from './ui-site.js';

/**
 * The status page's reason for an open command whose device cannot be read (`why` in
 * `GET /ui/api/commands`), and its device row. The PLC's communication module drops off the
 * network (sluice-sim's refusal of connections: the controller runs on, the valve keeps
 * travelling) while drain-valve travels under a written open and an open of inlet-valve is
 * accepted behind nothing. The page said of the written one, once its last readback was 5 s
 * old, `the device is not moving: OPENING at 2 % for 6 s`, and marked the valve STUCK: no
 * movement, though the valve was moving and only its reads had stopped; of the accepted one,
 * `accepted`, its last event, where a person needs to know that it waits for the device to be
 * read. Real daemon and status page over TLS, sluice-sim over real sockets; ground truth: the
 * simulator's valve (its position, its write log).
 */

let site: UiSite;

beforeAll(async () => {
  // drain-valve travels for 20 s: still moving long after its reads stop.
  site = await startUiSite({ mqtt: false, opcua: false, drainTravelMs: 20_000 });
}, 60_000);

afterAll(async () => {
  await site.stop();
});

async function openAsync(key: string, device: string): Promise<void> {
  const sent = await call(
    site,
    'POST',
    '/v1/commands',
    {
      authorization: `Bearer ${TOKENS.scada}`,
      'idempotency-key': key,
      'content-type': 'application/json',
      prefer: 'respond-async',
    },
    JSON.stringify({ device, action: 'open', ttlMs: 60_000 }),
  );
  expect(sent.status, sent.body).toBe(202);
}

interface PageDevice {
  id: string;
  mirror: { position: number | null } | null;
  readbackAgeMs: number | null;
  connectivity: { connected: boolean };
  stalled: unknown;
}

describe('an open command whose device cannot be read, on the status page', () => {
  it('is said to wait for a read of its device, not to have stopped moving', async () => {
    const { cookie } = await login(site, TOKENS.ops);
    const drain = site.plant.device('drain-valve');
    const inlet = site.plant.device('inlet-valve');
    const inletWrites = inlet.writeLog.length;
    const drainWrites = drain.writeLog.length;
    await openAsync('travel-cut', 'drain-valve');
    await until(
      () => (drain.writeLog.length > drainWrites ? true : undefined),
      10_000,
      "the open's write at drain-valve",
    );
    // The PLC's module off the network for longer than the test looks.
    site.plant.plc('mb').refuseConnections({ ms: 30_000 });
    await openAsync('behind-nothing', 'inlet-valve');
    const devices = async (): Promise<PageDevice[]> =>
      (await call(site, 'GET', '/ui/api/devices', { cookie })).json<{ devices: PageDevice[] }>()
        .devices;
    // Until the page has known the PLC not connected, and the last readback of drain-valve
    // been as it is, for longer than the 5 s the page's stall rule waits: the page judges a
    // valve whose mirror has not changed for that long as not moving.
    const drainRow = async (): Promise<PageDevice | undefined> =>
      (await devices()).find((x) => x.id === 'drain-valve');
    await until(
      async () => ((await drainRow())?.connectivity.connected === false ? true : undefined),
      10_000,
      "drain-valve's PLC not connected, on the page",
    );
    const cut = Date.now();
    const row = await until(
      async () => {
        const d = await drainRow();
        return d !== undefined && Date.now() - cut >= 6_000 && (d.readbackAgeMs ?? 0) >= 6_000
          ? d
          : undefined;
      },
      20_000,
      "drain-valve's last readback 6 s old, its PLC not connected for 6 s",
    );
    const commands = (await call(site, 'GET', '/ui/api/commands', { cookie })).json<{
      open: { key: string; state: string; why: string }[];
    }>().open;
    // Ground truth: the valve has moved on since the last readback the page has; nothing was
    // written to inlet-valve.
    expect(drain.snapshot().position).toBeGreaterThan((row.mirror?.position ?? 0) + 5);
    expect(drain.snapshot().state).toBe('OPENING');
    expect(inlet.writeLog.length).toBe(inletWrites);

    expect(row.stalled).toBeNull();
    const travel = commands.find((c) => c.key === 'travel-cut');
    expect(travel?.state).toBe('dispatched');
    expect(travel?.why).not.toMatch(/not moving/);
    expect(travel?.why).toMatch(
      /^waits for a readback that settles its write \(seq \d+\): until one does, the write's effect is unknown \(the device may move\); the device cannot be read now: its PLC is not connected \(.*ECONNREFUSED.*\); last event: seq \d+/,
    );
    const behind = commands.find((c) => c.key === 'behind-nothing');
    expect(behind?.state).toBe('accepted');
    expect(behind?.why).toMatch(
      /^not written: the device cannot be read now: its PLC is not connected \(.*ECONNREFUSED.*\); it is written only after a fresh read of the device, and not once its deadline has passed; last event: accepted$/,
    );
  }, 40_000);
});
