import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import Database from 'better-sqlite3';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { startPlant, type Plant } from '../../simulators/plant.js';
import { nodeArgs } from '../helpers/entry.js';
import { tempDir } from '../helpers/fixtures.js';
import {
  mosquittoAvailable,
  startMosquitto,
  TestClient,
  timed,
  until,
  type Mosquitto,
} from '../helpers/mosquitto.js';
import { inventoryFor } from '../helpers/plant-inventory.js';

/**
 * I5 and I1 across a real crash: a daemon-like process running the MQTT intake receives a
 * command while its journal is locked, so the claim cannot commit and no PUBACK goes out; it
 * is killed with SIGKILL in the middle of that claim. The broker publishes its Last Will and
 * keeps the message; a new process gets the redelivery and the command executes exactly once.
 */

const available = mosquittoAvailable();
const GATEWAY = 'gwc';
const PREFIX = `sluice/${GATEWAY}`;
const CLIENT_ID = `sluice-${GATEWAY}`;

describe.skipIf(!available)('MQTT intake: SIGKILL before the PUBACK', () => {
  let plant: Plant;
  let broker: Mosquitto;
  let dir: string;
  let observer: TestClient;
  const children: ChildProcess[] = [];
  let locker: Database.Database | null = null;

  // Cleanup as a last-in-first-out stack: only what was started is stopped, in reverse.
  const cleanups: (() => Promise<void> | void)[] = [];

  beforeAll(async () => {
    plant = await startPlant(
      {
        control: { host: '127.0.0.1', port: 0 },
        plcs: {
          mb: {
            protocol: 'modbus',
            host: '127.0.0.1',
            port: 0,
            devices: { v1: { profile: 'valve', base: 0, travelMs: 200 } },
          },
        },
      },
      { ephemeralPorts: true, control: false },
    );
    cleanups.push(() => plant.stop());
    broker = await startMosquitto();
    cleanups.push(() => broker.close());
    let cleanupDir: () => void;
    ({ dir, cleanup: cleanupDir } = tempDir('sluice-mqtt-crash-'));
    cleanups.push(() => {
      cleanupDir();
    });
    observer = await TestClient.connect(broker.url, {
      clientId: 'crash-observer',
      clean: false,
      properties: { sessionExpiryInterval: 600 },
    });
    cleanups.push(() => observer.end());
    await observer.subscribe(`${PREFIX}/#`);
  }, 60_000);

  afterEach(() => {
    locker?.close();
    locker = null;
    for (const c of children.splice(0)) c.kill('SIGKILL');
  });

  afterAll(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup();
  });

  interface Daemon {
    readonly child: ChildProcess;
    readonly ready: Promise<number>;
    readonly lines: Record<string, unknown>[];
    exited(): Promise<number | null>;
  }

  function startDaemon(journal: string): Daemon {
    const child = spawn(
      process.execPath,
      [
        ...nodeArgs('test/helpers/mqtt-intake-process.ts'),
        JSON.stringify({
          journal,
          busyTimeoutMs: 10_000,
          pkiDir: join(dir, 'pki'),
          inventory: inventoryFor(plant),
          url: broker.url,
          gatewayId: GATEWAY,
        }),
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    children.push(child);
    const lines: Record<string, unknown>[] = [];
    const exit = new Promise<number | null>((resolve) => child.once('exit', resolve));
    const ready = new Promise<number>((resolve, reject) => {
      createInterface({ input: child.stdout }).on('line', (line) => {
        if (!line.startsWith('{')) return;
        const message = JSON.parse(line) as Record<string, unknown>;
        lines.push(message);
        if (typeof message.ready === 'number') resolve(message.ready);
      });
      void exit.then((code) => {
        reject(new Error(`daemon exited with ${code}`));
      });
    });
    return { child, ready, lines, exited: () => exit };
  }

  const statuses = (): string[] => observer.on(`${PREFIX}/status`).map((m) => m.text);

  it('a claim killed before its PUBACK is redelivered to the restarted daemon and executes once', async () => {
    const device = plant.device('v1');
    device.resetCounters();
    const journal = join(dir, 'journal.db');
    const first = startDaemon(journal);
    expect(await first.ready).toBe(0);
    await until(() => (statuses().at(-1) === 'online' ? true : undefined), 10_000, 'online');

    // Another writer holds the journal: the claim waits on the busy timeout (10 s) and no
    // PUBACK can go out.
    locker = new Database(journal);
    locker.exec('BEGIN IMMEDIATE');
    const key = randomUUID();
    const topic = `${PREFIX}/cmd/v1`;
    const pubacks = broker.pubacksFrom(CLIENT_ID);
    const issuer = await TestClient.connect(broker.url);
    await issuer.publish(topic, timed({ action: 'open', key, ttlMs: 60_000 }));
    await issuer.end();
    await until(
      () => first.lines.find((l) => l.msg === 'command message received' && l.key === key),
      10_000,
      'the daemon receiving the command',
    );
    const seen = statuses().length;
    first.child.kill('SIGKILL');
    await first.exited();

    // The broker noticed the dead connection and published the Last Will.
    await until(
      () => (statuses().slice(seen).includes('offline') ? true : undefined),
      5_000,
      'Last Will',
    );
    expect(broker.pubacksFrom(CLIENT_ID)).toBe(pubacks);
    locker.exec('ROLLBACK');
    locker.close();
    locker = null;
    const read = SqliteJournal.open({ path: journal });
    try {
      expect(read.get({ scope: 'plant', key })).toBeUndefined();
    } finally {
      read.close();
    }
    expect(device.counters.writesReceived).toBe(0);

    const second = startDaemon(journal);
    expect(await second.ready).toBe(0);
    const result = await observer.waitFor(
      (m) => m.topic === `${PREFIX}/result/v1` && m.json().key === key,
      15_000,
      'result',
    );
    expect(result.json()).toMatchObject({ state: 'confirmed', action: 'open', replayed: false });
    expect(device.counters.writesReceived).toBe(1);
    expect(device.published.state).toBe('OPEN');
    const deliveries = broker.deliveriesTo(CLIENT_ID, topic);
    expect(deliveries.length).toBeGreaterThanOrEqual(2);
    expect(deliveries.at(-1)?.dup).toBe(true);
    expect(broker.pubacksFrom(CLIENT_ID)).toBeGreaterThan(pubacks);

    // A graceful stop (SIGTERM) publishes `offline` itself.
    const before = statuses().length;
    expect(statuses().at(-1)).toBe('online');
    second.child.kill('SIGTERM');
    expect(await second.exited()).toBe(0);
    await until(
      () => (statuses().slice(before).includes('offline') ? true : undefined),
      5_000,
      'offline',
    );
    expect(device.counters.writesReceived).toBe(1);
  }, 60_000);
});
