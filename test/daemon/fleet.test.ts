import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { Daemon } from '../../src/daemon/daemon.js';
import type { Inventory } from '../../src/drivers/inventory.js';
import { startPlant, type Plant } from '../../simulators/plant.js';
import { tempDir } from '../helpers/fixtures.js';
import {
  TestClient,
  mosquittoAvailable,
  startMosquitto,
  timed,
  until,
  type Mosquitto,
} from '../helpers/mosquitto.js';
import { inventoryFor } from '../helpers/plant-inventory.js';
import { TcpLink } from '../helpers/tcp-link.js';

/**
 * docs/DEPLOYMENT.md's topology with real brokers: two gateways (gw-a, gw-b), each the single
 * writer of its own PLC and each on its own edge Mosquitto, both edges bridged to a central
 * Mosquitto over a link the test can cut. A client at the central broker commands devices on
 * both and gets every result; each gateway acts on its own devices only; while gw-a's bridge
 * is down its commands wait at the central broker, and once it is back those past their
 * deadline are never written (I3) and the rest are written once (I1). Ground truth: the
 * simulator's write logs and the gateways' journals.
 */

const real = mosquittoAvailable();
const GATEWAYS = ['gw-a', 'gw-b'] as const;
type Gateway = (typeof GATEWAYS)[number];
/** Which PLC each gateway is wired to. */
const PLC_OF: Record<Gateway, string> = { 'gw-a': 'plc-a', 'gw-b': 'plc-b' };

describe.runIf(real)('two gateways, two edge brokers, one central broker', () => {
  let plant: Plant;
  let central: Mosquitto;
  const links = {} as Record<Gateway, TcpLink>;
  const edges = {} as Record<Gateway, Mosquitto>;
  const daemons = {} as Record<Gateway, Daemon>;
  let client: TestClient;
  const cleanups: (() => Promise<void> | void)[] = [];

  /** The bridge's state as the central broker sees it (its Last Will says 0 when cut). */
  const bridgeState = (gateway: Gateway): string | undefined =>
    client.on(`$SYS/broker/connection/bridge-${gateway}/state`).at(-1)?.text;

  const result = (gateway: Gateway, device: string, key: string, ms = 20_000) =>
    client.waitFor(
      (m) => m.topic === `sluice/${gateway}/result/${device}` && m.json().key === key,
      ms,
      `${gateway}'s result for ${key}`,
    );

  beforeAll(async () => {
    plant = await startPlant(
      {
        control: { host: '127.0.0.1', port: 0 },
        plcs: {
          'plc-a': {
            protocol: 'modbus',
            host: '127.0.0.1',
            port: 0,
            devices: {
              'valve-a1': { profile: 'valve', base: 0, travelMs: 300 },
              'valve-a2': { profile: 'valve', base: 100, travelMs: 300 },
            },
          },
          'plc-b': {
            protocol: 'modbus',
            host: '127.0.0.1',
            port: 0,
            devices: { 'valve-b1': { profile: 'valve', base: 0, travelMs: 300 } },
          },
        },
      },
      { ephemeralPorts: true, control: false },
    );
    cleanups.push(() => plant.stop());
    central = await startMosquitto();
    cleanups.push(() => central.close());
    const { dir, cleanup } = tempDir('sluice-fleet-');
    cleanups.push(cleanup);
    const inventory = inventoryFor(plant);

    for (const gateway of GATEWAYS) {
      const link = await TcpLink.open({ host: '127.0.0.1', port: central.port });
      links[gateway] = link;
      cleanups.push(() => link.close());
      // The edge forwards the central broker's commands for this gateway in, and the
      // gateway's results, state and status out: nothing of another gateway crosses it.
      const edge = await startMosquitto({
        bridges: [
          {
            name: 'central',
            address: link.address,
            clientId: `bridge-${gateway}`,
            topics: [
              `sluice/${gateway}/cmd/# in 1`,
              `sluice/${gateway}/result/# out 1`,
              `sluice/${gateway}/state/# out 1`,
              `sluice/${gateway}/status out 1`,
            ],
          },
        ],
      });
      edges[gateway] = edge;
      cleanups.push(() => edge.close());
    }

    client = await TestClient.connect(central.url, { clientId: 'central-scada', clean: false });
    cleanups.push(() => client.end());
    await client.subscribe('sluice/+/result/#');
    await client.subscribe('$SYS/broker/connection/+/state');
    for (const gateway of GATEWAYS) {
      await until(
        () => (bridgeState(gateway) === '1' ? true : undefined),
        20_000,
        `${gateway}'s bridge connected at the central broker`,
      );
    }

    for (const gateway of GATEWAYS) {
      // Each gateway knows only the PLC wired to it.
      const own: Inventory = {
        plcs: { [PLC_OF[gateway]]: inventory.plcs[PLC_OF[gateway]]! },
        devices: Object.fromEntries(
          Object.entries(inventory.devices).filter(([, d]) => d.plc === PLC_OF[gateway]),
        ),
      };
      const path = join(dir, `${gateway}.yaml`);
      writeFileSync(
        path,
        stringify({
          gatewayId: gateway,
          stateDir: `state-${gateway}`,
          mqtt: { url: edges[gateway].url, identity: 'scada' },
          identities: { scada: { devices: ['*'] } },
          admin: { enabled: false },
          plcs: own.plcs,
          devices: own.devices,
        }),
      );
      const daemon = await Daemon.start(loadConfig(path, { env: {} }), {
        logger: pino({ level: 'silent' }),
        monitorIntervalMs: 200,
      });
      daemons[gateway] = daemon;
      cleanups.push(() => daemon.stop());
      await until(
        () => (daemon.readiness().ready ? true : undefined),
        20_000,
        `${gateway} ready (its edge broker connected, its valves read)`,
      );
    }
  }, 120_000);

  afterAll(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup();
  });

  it('a central client commands devices on both gateways and gets every result; each gateway writes only its own devices', async () => {
    const a1 = plant.device('valve-a1');
    const a2 = plant.device('valve-a2');
    const b1 = plant.device('valve-b1');
    const before = {
      a1: a1.counters.writesReceived,
      a2: a2.counters.writesReceived,
      b1: b1.counters.writesReceived,
    };
    await client.publish('sluice/gw-a/cmd/valve-a1', timed({ key: 'fleet-a1', action: 'open' }));
    await client.publish('sluice/gw-a/cmd/valve-a2', timed({ key: 'fleet-a2', action: 'open' }));
    await client.publish('sluice/gw-b/cmd/valve-b1', timed({ key: 'fleet-b1', action: 'open' }));
    // A command for gw-b's valve sent to gw-a: gw-a is not wired to it and must not act.
    await client.publish(
      'sluice/gw-a/cmd/valve-b1',
      timed({ key: 'fleet-cross', action: 'close' }),
    );

    const resultA1 = (await result('gw-a', 'valve-a1', 'fleet-a1')).json();
    const resultA2 = (await result('gw-a', 'valve-a2', 'fleet-a2')).json();
    const resultB1 = (await result('gw-b', 'valve-b1', 'fleet-b1')).json();
    const cross = (await result('gw-a', 'valve-b1', 'fleet-cross')).json();
    for (const r of [resultA1, resultA2, resultB1]) {
      expect(r).toMatchObject({ state: 'confirmed', code: 'OK', replayed: false });
    }
    expect(cross.state).not.toBe('confirmed');
    expect(cross.code).toBe('UNKNOWN_DEVICE');

    // Ground truth: each valve received exactly its own command, once; valve-b1 nothing from
    // gw-a (its answer to the cross command came first, so it has been handled).
    expect(a1.counters.writesReceived - before.a1).toBe(1);
    expect(a2.counters.writesReceived - before.a2).toBe(1);
    expect(b1.counters.writesReceived - before.b1).toBe(1);
    expect(a1.writesWithSeq(Number(resultA1.seq))).toBe(1);
    expect(a2.writesWithSeq(Number(resultA2.seq))).toBe(1);
    expect(b1.writesWithSeq(Number(resultB1.seq))).toBe(1);
    // Each journal holds its own gateway's commands only.
    const scope = 'scada';
    expect(daemons['gw-a'].pipeline.get({ scope, key: 'fleet-a1' })?.state).toBe('confirmed');
    expect(daemons['gw-b'].pipeline.get({ scope, key: 'fleet-b1' })?.state).toBe('confirmed');
    expect(daemons['gw-b'].pipeline.get({ scope, key: 'fleet-a1' })).toBeUndefined();
    expect(daemons['gw-a'].pipeline.get({ scope, key: 'fleet-b1' })).toBeUndefined();
    expect(daemons['gw-b'].pipeline.get({ scope, key: 'fleet-cross' })).toBeUndefined();
  }, 60_000);

  it("while gw-a's bridge is down its commands wait at the central broker; back, the expired are never written and the rest run once", async () => {
    const a1 = plant.device('valve-a1');
    const a2 = plant.device('valve-a2');
    const b1 = plant.device('valve-b1');
    const a1Before = a1.counters.writesReceived;
    const a2Before = a2.counters.writesReceived;

    links['gw-a'].down();
    await until(
      () => (bridgeState('gw-a') === '0' ? true : undefined),
      20_000,
      "gw-a's bridge down at the central broker",
    );
    const issuedAt = new Date();
    const expiring = timed({ key: 'fleet-expiring', action: 'open', ttlMs: 1_500 }, issuedAt);
    const lasting = timed({ key: 'fleet-lasting', action: 'close', ttlMs: 120_000 }, issuedAt);
    await client.publish('sluice/gw-a/cmd/valve-a1', expiring);
    await client.publish('sluice/gw-a/cmd/valve-a2', lasting);
    // gw-b's bridge is up: its commands run meanwhile.
    await client.publish('sluice/gw-b/cmd/valve-b1', timed({ key: 'fleet-b2', action: 'close' }));
    const resultB2 = (await result('gw-b', 'valve-b1', 'fleet-b2')).json();
    expect(resultB2).toMatchObject({ state: 'confirmed' });
    expect(b1.writesWithSeq(Number(resultB2.seq))).toBe(1);
    // A panel at the cell, on gw-a's edge broker, still commands gw-a during the outage; its
    // result waits at the edge for the bridge.
    const panel = await TestClient.connect(edges['gw-a'].url, { clientId: 'cell-panel' });
    try {
      await panel.subscribe('sluice/gw-a/result/#');
      await panel.publish(
        'sluice/gw-a/cmd/valve-a1',
        timed({ key: 'fleet-local', action: 'close' }),
      );
      const local = await panel.waitFor(
        (m) => m.json().key === 'fleet-local',
        20_000,
        'the local result at the edge',
      );
      expect(local.json()).toMatchObject({ state: 'confirmed' });
    } finally {
      await panel.end();
    }
    expect(a1.counters.writesReceived - a1Before).toBe(1);

    // The outage outlasts the first command's deadline.
    await until(
      () => (Date.now() > issuedAt.getTime() + 1_500 + 500 ? true : undefined),
      10_000,
      "the expiring command's deadline passed",
    );
    const restoredAt = Date.now();
    links['gw-a'].up();
    await until(
      () => (bridgeState('gw-a') === '1' ? true : undefined),
      20_000,
      "gw-a's bridge back at the central broker",
    );

    const expired = (await result('gw-a', 'valve-a1', 'fleet-expiring')).json();
    const ran = (await result('gw-a', 'valve-a2', 'fleet-lasting')).json();
    expect(expired).toMatchObject({ state: 'rejected', code: 'STALE_COMMAND' });
    expect(ran).toMatchObject({ state: 'confirmed', code: 'OK' });
    // The result produced during the outage reached the central broker once the link was back.
    expect((await result('gw-a', 'valve-a1', 'fleet-local')).json()).toMatchObject({
      state: 'confirmed',
    });

    // Ground truth, read after both results: the expired command never reached valve-a1
    // (I3); the other was written exactly once (I1).
    expect(a1.counters.writesReceived - a1Before).toBe(1); // fleet-local's write alone
    expect(a2.counters.writesReceived - a2Before).toBe(1);
    expect(a2.writesWithSeq(Number(ran.seq))).toBe(1);
    // They waited at the central broker: gw-a's journal took them only after the link was back.
    const journal = daemons['gw-a'].pipeline;
    const expiredRecord = journal.get({ scope: 'scada', key: 'fleet-expiring' });
    const ranRecord = journal.get({ scope: 'scada', key: 'fleet-lasting' });
    expect(expiredRecord).toMatchObject({ state: 'rejected', code: 'STALE_COMMAND', attempts: 0 });
    expect(ranRecord).toMatchObject({ state: 'confirmed', attempts: 1 });
    expect(expiredRecord!.acceptedAt).toBeGreaterThanOrEqual(restoredAt);
    expect(ranRecord!.acceptedAt).toBeGreaterThanOrEqual(restoredAt);
  }, 90_000);
});
