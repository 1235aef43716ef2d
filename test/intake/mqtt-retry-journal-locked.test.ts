import { randomUUID } from 'node:crypto';
import Database from 'better-sqlite3';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  mosquittoAvailable,
  timed,
  until,
  useMqttSite,
  type Received,
  type TestClient,
} from '../helpers/mqtt-site.js';

/**
 * A retry of a key the journal holds, while another program holds the journal's write lock (a
 * sqlite3 shell or a backup in `BEGIN IMMEDIATE`: here a second SQLite connection to the
 * journal file, the lock itself, no double), is handled as the duplicate it is: a settled key's
 * result is replayed (QoS 0 and QoS 1, the QoS 1 copy acknowledged on its connection), an open
 * key's requester gets its outcome. A QoS 0 retry used to be answered JOURNAL_UNAVAILABLE
 * "nothing was claimed or written" (the claim's duplicate event could not be journaled), an
 * invitation to send the command again under a new key, and a QoS 1 redelivery was withheld
 * and its connection dropped for as long as the lock was held. Real Mosquitto, MQTT intake,
 * pipeline, SQLite journal and simulated PLC; the ground truth is what the requester received
 * and the simulator's write log.
 */
describe.skipIf(!mosquittoAvailable())(
  'MQTT: a retry of a journaled key while another program holds the journal write lock',
  () => {
    const GATEWAY = 'gwlocked';
    const PREFIX = `sluice/${GATEWAY}`;
    const CLIENT_ID = `sluice-${GATEWAY}`;
    const TOPIC = `${PREFIX}/cmd/v1`;
    const site = useMqttSite(
      {},
      { opcua: false, travelMs: 2_000, timing: { confirmTimeoutMs: 10_000 } },
    );

    let plant: TestClient;
    let observer: TestClient;

    beforeAll(async () => {
      const intake = site.intake({
        gatewayId: GATEWAY,
        config: { protocolVersion: 5 },
        reconnect: { minMs: 100, maxMs: 400 },
      });
      site.cleanups.push(() => intake.stop());
      await site.connect(intake);
      ({ plant, observer } = await site.plantSide(PREFIX));
    }, 60_000);

    /** The first message for `key` the observer receives after its first `from`. */
    const answerAfter = (from: number, key: string, what: string): Promise<Received> =>
      observer.waitFor(
        (m) => observer.messages.indexOf(m) >= from && m.json().key === key,
        5_000,
        what,
      );

    /** `run` while a second connection to the journal file holds its write lock. */
    async function whileLocked(run: () => Promise<void>): Promise<void> {
      const lock = new Database(site.stack.journalPath);
      try {
        lock.exec('BEGIN IMMEDIATE');
        await run();
      } finally {
        if (lock.inTransaction) lock.exec('ROLLBACK');
        lock.close();
      }
    }

    const writeLog = () => site.stack.plant.device('v1').writeLog;

    it('a retry of a confirmed command is replayed, at QoS 0 and QoS 1: one write', async () => {
      const k = randomUUID();
      const writesBefore = writeLog().length;
      // The same message each time: its issuedAt is part of the command (a retry repeats it).
      const command = timed({ action: 'open', key: k });
      await plant.publish(TOPIC, command);
      const first = await answerAfter(0, k, 'the result');
      expect(first.json()).toMatchObject({ state: 'confirmed', replayed: false });
      const connections = site.broker.connectionsOf(CLIENT_ID);

      await whileLocked(async () => {
        for (const qos of [0, 1] as const) {
          const from = observer.messages.length;
          await plant.publish(TOPIC, command, { qos });
          const answer = await answerAfter(from, k, `the answer to the QoS ${qos} retry`);
          expect(answer.json()).toMatchObject({
            key: k,
            state: 'confirmed',
            code: 'OK',
            replayed: true,
          });
        }
      });
      // The QoS 1 copy was acknowledged on its connection: not dropped for it.
      expect(site.broker.connectionsOf(CLIENT_ID)).toBe(connections);
      const written = writeLog().slice(writesBefore);
      expect(written).toHaveLength(1);
      expect(written[0]!.seq).toBe(first.json().seq);
    });

    it('a QoS 0 retry of a command written and still in flight is not answered "nothing was claimed", and gets its outcome: one write', async () => {
      const k = randomUUID();
      const writesBefore = writeLog().length;
      const valve = site.stack.plant.device('v1');
      const command = timed({
        action: valve.published.state === 'CLOSED' ? 'open' : 'close',
        key: k,
      });
      await plant.publish(TOPIC, command);
      await until(
        () => (writeLog().length > writesBefore ? true : undefined),
        5_000,
        'the write at the PLC',
      );
      const from = observer.messages.length;
      const marker = randomUUID();
      await whileLocked(async () => {
        await plant.publish(TOPIC, command, { qos: 0 });
        // A command with a new key behind it, refused (the journal cannot take it): its answer
        // on the same result topic orders after anything the retry was answered with.
        await plant.publish(TOPIC, timed({ action: command.action, key: marker }), { qos: 0 });
        const refused = await answerAfter(from, marker, 'the refusal of a new key');
        expect(refused.json()).toMatchObject({ code: 'JOURNAL_UNAVAILABLE' });
      });
      const outcome = await observer.waitFor(
        (m) => observer.messages.indexOf(m) >= from && m.json().key === k,
        10_000,
        'the first answer to the retry: its outcome',
      );
      expect(outcome.json()).toMatchObject({ key: k, state: 'confirmed', code: 'OK' });
      const written = writeLog().slice(writesBefore);
      expect(written).toHaveLength(1);
      expect(written[0]!.seq).toBe(outcome.json().seq);
    });
  },
);
