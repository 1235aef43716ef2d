import type { Socket } from 'node:net';
import { join } from 'node:path';
import { connectAsync, type MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CommandRecord } from '../../src/core/journal.js';
import { silentLogger } from '../../src/core/logger.js';
import { MqttPublisher } from '../../src/intake/mqtt-publisher.js';
import { GatewayTopics } from '../../src/intake/mqtt-topics.js';
import type { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { openJournal, tempDir } from '../helpers/fixtures.js';
import {
  mosquittoAvailable,
  startMosquitto,
  TestClient,
  until,
  type Mosquitto,
} from '../helpers/mosquitto.js';
import { newCommand } from '../helpers/new-command.js';

/**
 * The publisher sends what one turn of the event loop published together, in order: results of
 * commands that settled together leave in one socket write (mqtt.js corks the socket per packet
 * until the next tick) instead of a system call each. On a real Mosquitto, with settled records
 * from a real journal; the subscriber's arrival order is the ground truth for the order.
 */

const available = mosquittoAvailable();

const noMetrics = {
  mqttMessages: { inc: (): void => undefined },
  accepted: { inc: (): void => undefined },
  journalFailures: { inc: (): void => undefined },
  mqttResponseTopicsRefused: { inc: (): void => undefined },
};

describe.skipIf(!available)('MQTT publisher: one turn, one write, in order', () => {
  let broker: Mosquitto;
  let client: MqttClient;
  let observer: TestClient;
  let journal: SqliteJournal;
  let cleanup: () => void;

  beforeAll(async () => {
    broker = await startMosquitto();
    client = await connectAsync(broker.url, { protocolVersion: 5, reconnectPeriod: 0 });
    observer = await TestClient.connect(broker.url);
    await observer.subscribe('sluice/gwp/result/+');
    const temp = tempDir();
    cleanup = temp.cleanup;
    journal = openJournal(join(temp.dir, 'journal.db'));
  });

  afterAll(async () => {
    await observer.end();
    await client.endAsync(true);
    await broker.close();
    journal.close();
    cleanup();
  });

  /** Settled commands as the journal stores them (rejected at the claim: a stored result). */
  function settled(prefix: string, count: number): CommandRecord[] {
    return Array.from({ length: count }, (_, i) => {
      const claim = journal.claim(newCommand(`${prefix}-${i}`, 'f'), {
        code: 'FORBIDDEN_DEVICE',
        detail: 'not this identity’s device; nothing was written',
      });
      expect(claim.kind).toBe('new');
      return claim.record;
    });
  }

  /** Counts the socket's writes (its Writable implementation's calls) while `run` runs. */
  async function socketWrites(run: () => Promise<void>): Promise<number> {
    const socket = client.stream as Socket;
    // eslint-disable-next-line @typescript-eslint/unbound-method
    const { _write: write, _writev: writev } = socket;
    let writes = 0;
    socket._write = function (this: Socket, ...args: Parameters<Socket['_write']>): void {
      writes++;
      write.apply(this, args);
    };
    if (writev !== undefined) {
      socket._writev = function (
        this: Socket,
        ...args: Parameters<NonNullable<Socket['_writev']>>
      ): void {
        writes++;
        writev.apply(this, args);
      };
    }
    try {
      await run();
    } finally {
      socket._write = write;
      if (writev !== undefined) socket._writev = writev;
    }
    return writes;
  }

  it('sends the results published in one turn in one write, and in their order', async () => {
    const publisher = new MqttPublisher({
      link: { client, protocolLevel: 5 },
      topics: new GatewayTopics('gwp'),
      responseTopics: [],
      metrics: noMetrics,
      logger: silentLogger,
    });
    const first = settled('turn1', 30);
    const second = settled('turn2', 10);
    const writes = await socketWrites(async () => {
      for (const record of first) publisher.result(record);
      // A later turn: its publications follow the first turn's.
      await new Promise((resolve) => setImmediate(resolve));
      for (const record of second) publisher.result(record);
      await publisher.flush();
    });
    // One write per turn (one system call each, rather than one per publication: 40).
    expect(writes).toBe(2);
    const topic = 'sluice/gwp/result/inlet-valve';
    await until(() => (observer.on(topic).length >= 40 ? true : undefined), 10_000, '40 results');
    expect(observer.on(topic).map((m) => m.json().key)).toEqual(
      [...first, ...second].map((r) => r.key),
    );
  });
});
