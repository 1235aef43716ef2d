import { randomUUID } from 'node:crypto';
import { createConnection, createServer } from 'node:net';
import Database from 'better-sqlite3';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { MqttConfig, MqttIntake } from '../../src/intake/mqtt.js';
import { commitFaults } from '../helpers/commit-faults.js';
import {
  mosquittoAvailable,
  TestClient,
  timed,
  until,
  useMqttSite,
  type Received,
} from '../helpers/mqtt-site.js';
import { holdThreadPool } from '../helpers/thread-pool.js';

/**
 * The persistent session and fail-closed acknowledgement (I5) against a real mosquitto with
 * persistence: commands queued while the intake is away (untimed ones refused, stale ones never
 * written: I3, SPEC §5), a journal that cannot be written (no PUBACK, nothing written,
 * redelivered and executed once when it can; a QoS 0 command, which no broker redelivers,
 * answered), and a redelivery that crosses a broker restart.
 */

const available = mosquittoAvailable();

describe.skipIf(!available)('MQTT intake: persistent session, fail closed', () => {
  const GATEWAY = 'gws';
  const PREFIX = `sluice/${GATEWAY}`;
  const CLIENT_ID = `sluice-${GATEWAY}`;
  const site = useMqttSite();
  const { cleanups } = site;
  let intake: MqttIntake;
  let observer: TestClient;
  let issuer: TestClient;
  let locker: Database.Database | null = null;

  const newIntake = (overrides: Partial<MqttConfig> = {}): MqttIntake =>
    site.intake({
      gatewayId: GATEWAY,
      config: { protocolVersion: 5, ...overrides },
      reconnect: { minMs: 100, maxMs: 800 },
    });
  const startIntake = async (overrides: Partial<MqttConfig> = {}): Promise<void> => {
    intake = newIntake(overrides);
    await site.connect(intake);
  };
  const moveOf = (device: string): 'open' | 'close' =>
    site.stack.plant.device(device).published.state === 'CLOSED' ? 'open' : 'close';
  const writes = (device: string): number =>
    site.stack.plant.device(device).counters.writesReceived;
  const resultFor =
    (key: string, device: string) =>
    (m: Received): boolean =>
      m.topic === `${PREFIX}/result/${device}` && m.json().key === key;
  const journalRefusals = async (): Promise<number> => {
    const { values } = await site.stack.metrics.mqttMessages.get();
    return values.find((v) => v.labels.outcome === 'journal_unavailable')?.value ?? 0;
  };
  /** Holds the journal's write lock, as another writer stuck mid-transaction would. */
  const lockJournal = (): void => {
    locker = new Database(site.stack.journalPath);
    locker.exec('BEGIN IMMEDIATE');
  };
  const unlockJournal = (): void => {
    locker?.exec('ROLLBACK');
    locker?.close();
    locker = null;
  };

  beforeAll(async () => {
    await startIntake();
    // Whichever intake is current at the end (tests replace it).
    cleanups.push(() => intake.stop());
    // Persistent sessions for the test clients too: they must not miss what is published
    // while the broker restarts.
    const session = { clean: false, properties: { sessionExpiryInterval: 600 } };
    observer = await TestClient.connect(site.broker.url, { clientId: 'observer', ...session });
    cleanups.push(() => observer.end());
    await observer.subscribe(`${PREFIX}/result/#`);
    await observer.subscribe(`${PREFIX}/status`);
    issuer = await TestClient.connect(site.broker.url, { clientId: 'issuer', ...session });
    cleanups.push(() => issuer.end());
  }, 60_000);

  afterEach(() => {
    unlockJournal();
  });

  // Before the site's cleanups (the intake, the clients, the stack, the broker).
  afterAll(() => {
    unlockJournal();
  });

  /**
   * For each connection of the intake's client, in order (the broker's log): the deliveries of
   * packet id `mid` to it and the PUBACKs of `mid` received on it.
   */
  const perConnection = (mid: number): { deliveries: number; pubacks: number }[] => {
    const connections: { deliveries: number; pubacks: number }[] = [];
    for (const line of site.broker.log().split('\n')) {
      if (line.includes(`as ${CLIENT_ID} (`)) connections.push({ deliveries: 0, pubacks: 0 });
      const current = connections.at(-1);
      if (current === undefined) continue;
      const sent = /Sending PUBLISH to (\S+) \(d\d, q\d, r\d, m(\d+),/.exec(line);
      if (sent?.[1] === CLIENT_ID && Number(sent[2]) === mid) current.deliveries += 1;
      const acked = /Received PUBACK from (\S+) \(Mid: (\d+)/.exec(line);
      if (acked?.[1] === CLIENT_ID && Number(acked[2]) === mid) current.pubacks += 1;
    }
    return connections;
  };

  /** Publishes while the intake is away; the broker queues it for the session. */
  const queue = async (
    topic: string,
    payload: Record<string, unknown>,
    options: Parameters<TestClient['publish']>[2] = {},
  ): Promise<void> => {
    await issuer.publish(topic, payload, options);
  };

  it('refuses an untimed command queued while the intake was away: answered, acknowledged, never written', async () => {
    await intake.stop();
    const key = randomUUID();
    const before = writes('v1');
    const delivered = site.broker.deliveriesTo(CLIENT_ID, `${PREFIX}/cmd/v1`).length;
    await queue(`${PREFIX}/cmd/v1`, { action: moveOf('v1'), key });

    const pubacks = site.broker.pubacksFrom(CLIENT_ID);
    await startIntake();
    const answer = await observer.waitFor(resultFor(key, 'v1'), 10_000, 'answer');
    expect(answer.json()).toMatchObject({ key, code: 'INVALID_COMMAND' });
    expect(String(answer.json().detail)).toContain('issuedAt');
    // Delivered once and acknowledged (it does not come back), never journaled, never written.
    await until(() => (site.broker.pubacksFrom(CLIENT_ID) > pubacks ? true : undefined));
    expect(site.broker.deliveriesTo(CLIENT_ID, `${PREFIX}/cmd/v1`).slice(delivered)).toEqual([
      { mid: expect.any(Number) as number, dup: false },
    ]);
    expect(site.stack.pipeline.get({ scope: 'plant', key })).toBeUndefined();
    expect(writes('v1')).toBe(before);
  });

  it('never writes a timed command that waited at the broker past its deadline (I3)', async () => {
    await intake.stop();
    const key = randomUUID();
    const before = writes('v1');
    await queue(`${PREFIX}/cmd/v1`, timed({ action: moveOf('v1'), key, ttlMs: 300 }));
    // The gateway stays away longer than the command's TTL.
    await new Promise((r) => setTimeout(r, 600));

    await startIntake();
    const result = await observer.waitFor(resultFor(key, 'v1'), 10_000, 'result');
    expect(result.json()).toMatchObject({
      state: 'rejected',
      code: 'STALE_COMMAND',
      issuedAtSource: 'issuer',
    });
    expect(site.stack.pipeline.get({ scope: 'plant', key })?.dispatchedAt).toBeNull();
    expect(writes('v1')).toBe(before);
  });

  it('never writes a future-dated command that waited at the broker (CLOCK_SKEW, I3)', async () => {
    await intake.stop();
    const key = randomUUID();
    const before = writes('v1');
    // Issued an hour ahead of the gateway's clock: beyond any issuer skew allowance.
    const issuedAt = new Date(Date.now() + 3_600_000).toISOString();
    await queue(`${PREFIX}/cmd/v1`, { action: moveOf('v1'), key, issuedAt, ttlMs: 30_000 });

    await startIntake();
    const result = await observer.waitFor(resultFor(key, 'v1'), 10_000, 'result');
    expect(result.json()).toMatchObject({ state: 'rejected', code: 'CLOCK_SKEW' });
    expect(site.stack.pipeline.get({ scope: 'plant', key })?.dispatchedAt).toBeNull();
    expect(writes('v1')).toBe(before);
  });

  it('executes once a timed command queued while the intake was away, and a message-expiry one; the broker drops an expired one', async () => {
    await intake.stop();
    const keys = { issued: randomUUID(), expiry: randomUUID(), expired: randomUUID() };
    const before = { v1: writes('v1'), v2: writes('v2'), u1: writes('u1') };
    const delivered = {
      v1: site.broker.deliveriesTo(CLIENT_ID, `${PREFIX}/cmd/v1`).length,
      u1: site.broker.deliveriesTo(CLIENT_ID, `${PREFIX}/cmd/u1`).length,
    };
    await queue(`${PREFIX}/cmd/v1`, timed({ action: moveOf('v1'), key: keys.issued }));
    await queue(
      `${PREFIX}/cmd/u1`,
      { action: moveOf('u1'), key: keys.expired },
      { properties: { messageExpiryInterval: 1 } },
    );
    await queue(
      `${PREFIX}/cmd/v2`,
      { action: moveOf('v2'), key: keys.expiry },
      { properties: { messageExpiryInterval: 60 } },
    );
    // Longer than the u1 command's expiry: the broker must discard it.
    await new Promise((r) => setTimeout(r, 2_100));

    await startIntake();
    const issued = await observer.waitFor(resultFor(keys.issued, 'v1'), 10_000, 'result');
    expect(issued.json()).toMatchObject({ state: 'confirmed', replayed: false });
    const expiry = await observer.waitFor(resultFor(keys.expiry, 'v2'), 10_000, 'result');
    expect(expiry.json()).toMatchObject({ state: 'confirmed', issuedAtSource: 'gateway' });
    expect(writes('v1')).toBe(before.v1 + 1);
    expect(writes('v2')).toBe(before.v2 + 1);
    // The queue is delivered in order, and the messages on either side of the expired one were
    // handled: it was never delivered, never journaled, never written.
    expect(site.broker.deliveriesTo(CLIENT_ID, `${PREFIX}/cmd/v1`)).toHaveLength(delivered.v1 + 1);
    expect(site.broker.deliveriesTo(CLIENT_ID, `${PREFIX}/cmd/u1`)).toHaveLength(delivered.u1);
    expect(site.stack.pipeline.get({ scope: 'plant', key: keys.expired })).toBeUndefined();
    expect(writes('u1')).toBe(before.u1);
  });

  it('with mqtt.acceptUntimedCommands, executes an untimed command queued while away (timed from its receipt)', async () => {
    await intake.stop();
    const key = randomUUID();
    const before = writes('v1');
    const delivered = site.broker.deliveriesTo(CLIENT_ID, `${PREFIX}/cmd/v1`).length;
    await queue(`${PREFIX}/cmd/v1`, { action: moveOf('v1'), key });

    await startIntake({ acceptUntimedCommands: true });
    try {
      const result = await observer.waitFor(resultFor(key, 'v1'), 10_000, 'result');
      expect(result.json()).toMatchObject({
        state: 'confirmed',
        replayed: false,
        issuedAtSource: 'gateway',
      });
      expect(writes('v1')).toBe(before + 1);
      expect(site.broker.deliveriesTo(CLIENT_ID, `${PREFIX}/cmd/v1`)).toHaveLength(delivered + 1);
    } finally {
      // The other tests run with the default (untimed commands refused).
      await intake.stop();
      await startIntake();
    }
  });

  it('withholds the PUBACK while the journal cannot be written, writes nothing, and executes the redelivery once', async () => {
    const key = randomUUID();
    const topic = `${PREFIX}/cmd/v2`;
    const before = writes('v2');
    const pubacks = site.broker.pubacksFrom(CLIENT_ID);
    const refusals = await journalRefusals();
    const journalFailures = (await site.stack.metrics.journalFailures.get()).values[0]?.value ?? 0;
    const statusSeen = observer.on(`${PREFIX}/status`).length;
    lockJournal();
    await issuer.publish(topic, timed({ action: moveOf('v2'), key, ttlMs: 60_000 }));

    // Refused, dropped, reconnected, redelivered (DUP) and refused again: the broker keeps it.
    await until(
      () => (site.broker.deliveriesTo(CLIENT_ID, topic).some((d) => d.dup) ? true : undefined),
      10_000,
      'a redelivery',
    );
    expect(await journalRefusals()).toBeGreaterThan(refusals);
    expect((await site.stack.metrics.journalFailures.get()).values[0]?.value).toBeGreaterThan(
      journalFailures,
    );
    expect(site.broker.pubacksFrom(CLIENT_ID)).toBe(pubacks);
    expect(writes('v2')).toBe(before);
    expect(site.stack.pipeline.get({ scope: 'plant', key })).toBeUndefined();
    // While refusing, the gateway's connection drops: the broker publishes the Last Will.
    const offline = await observer.waitFor(
      (m) => m.topic === `${PREFIX}/status` && m.text === 'offline',
      5_000,
      'offline',
    );
    expect(observer.messages.indexOf(offline)).toBeGreaterThanOrEqual(0);
    expect(observer.on(`${PREFIX}/status`).length).toBeGreaterThan(statusSeen);

    unlockJournal();
    const result = await observer.waitFor(resultFor(key, 'v2'), 15_000, 'result');
    expect(result.json()).toMatchObject({ state: 'confirmed', replayed: false });
    expect(writes('v2')).toBe(before + 1);
    await until(() => (site.broker.pubacksFrom(CLIENT_ID) > pubacks ? true : undefined));
    await until(() => intake.connected() || undefined, 5_000, 'intake reconnected');
    expect(observer.on(`${PREFIX}/status`).at(-1)?.text).toBe('online');
  });

  it('acknowledges nothing and writes nothing while the fsync of a claim stalls, takes the messages behind it meanwhile, then acknowledges all in order on the same connection; each runs once', async () => {
    // mqtt.js handles a connection's packets one at a time: a PUBACK that waited for the
    // fsync held every later message (and the PINGRESPs: the connection timed out and the
    // broker redelivered). The PUBACKs are held by the intake instead (mqtt-acks.ts).
    const devices = ['v2', 'v1', 'u1'];
    const keys = devices.map(() => randomUUID());
    const topics = devices.map((d) => `${PREFIX}/cmd/${d}`);
    const before = devices.map(writes);
    const pubacks = site.broker.pubacksFrom(CLIENT_ID);
    const connections = site.broker.connectionsOf(CLIENT_ID);
    const delivered = topics.map((t) => site.broker.deliveriesTo(CLIENT_ID, t).length);
    // The journal's fdatasync runs on libuv's thread pool: held, it cannot return.
    const pool = holdThreadPool();
    try {
      await issuer.publish(
        topics[0]!,
        timed({ action: moveOf('v2'), key: keys[0], ttlMs: 60_000 }),
      );
      await until(
        () => (site.stack.pipeline.get({ scope: 'plant', key: keys[0]! }) ? true : undefined),
        10_000,
        'the first claim',
      );
      // The first claim's barrier is stalled; the next messages are published behind it.
      for (let i = 1; i < devices.length; i++) {
        await issuer.publish(
          topics[i]!,
          timed({ action: moveOf(devices[i]!), key: keys[i], ttlMs: 60_000 }),
        );
      }
      // Taken and claimed while the first claim's fsync has not returned.
      await until(
        () =>
          keys.every((key) => site.stack.pipeline.get({ scope: 'plant', key }) !== undefined)
            ? true
            : undefined,
        10_000,
        'the claims of the messages behind the stalled one',
      );
      // Claimed, even dispatched (in the journal's own connection), but not on disk: not
      // acknowledged, and no write before the disk has them.
      expect(site.broker.pubacksFrom(CLIENT_ID)).toBe(pubacks);
      expect(devices.map(writes)).toEqual(before);
    } finally {
      await pool.release();
    }
    for (let i = 0; i < devices.length; i++) {
      const result = await observer.waitFor(resultFor(keys[i]!, devices[i]!), 15_000, 'result');
      expect(result.json()).toMatchObject({ state: 'confirmed', replayed: false });
    }
    await until(
      () => (site.broker.pubacksFrom(CLIENT_ID) >= pubacks + devices.length ? true : undefined),
      10_000,
      'the PUBACKs',
    );
    expect(devices.map(writes)).toEqual(before.map((n) => n + 1));
    // One delivery each, acknowledged once, on the connection that was up all along, and the
    // PUBACKs in the order of the deliveries (MQTT 5 §4.6).
    expect(site.broker.connectionsOf(CLIENT_ID)).toBe(connections);
    const mids = topics.map((t, i) => {
      const deliveries = site.broker.deliveriesTo(CLIENT_ID, t);
      expect(deliveries).toHaveLength(delivered[i]! + 1);
      return deliveries.at(-1)!.mid;
    });
    for (const mid of mids)
      expect(perConnection(mid).at(-1)).toEqual({ deliveries: 1, pubacks: 1 });
    const acked = site.broker
      .log()
      .split('\n')
      .flatMap((line) => {
        const m = /Received PUBACK from (\S+) \(Mid: (\d+)/.exec(line);
        return m?.[1] === CLIENT_ID && mids.includes(Number(m[2])) ? [Number(m[2])] : [];
      });
    expect(acked.slice(-mids.length)).toEqual(mids);
  });

  it('has the broker hold back the command messages past its Receive Maximum while their PUBACKs wait for a stalled fsync', async () => {
    // mqtt.receiveMaximum bounds the claims that wait for one fsync (mqtt-acks.ts): the broker
    // sends no more unacknowledged QoS 1 messages than the gateway told it (MQTT 5 §3.3.4).
    await intake.stop();
    await startIntake({ receiveMaximum: 2 });
    const devices = ['v2', 'v1', 'u1'];
    const keys = devices.map(() => randomUUID());
    const before = devices.map(writes);
    const heldBack = `${PREFIX}/cmd/u1`;
    const delivered = site.broker.deliveriesTo(CLIENT_ID, heldBack).length;
    const pool = holdThreadPool();
    try {
      for (let i = 0; i < devices.length; i++) {
        await issuer.publish(
          `${PREFIX}/cmd/${devices[i]!}`,
          timed({ action: moveOf(devices[i]!), key: keys[i], ttlMs: 60_000 }),
        );
      }
      // Behind them a QoS 0 message, which no window holds back: once its answer is out, every
      // message the broker sent before it has been taken.
      const probe = randomUUID();
      await issuer.publish(`${PREFIX}/cmd/v1`, { key: probe, action: 'fly' }, { qos: 0 });
      await observer.waitFor(resultFor(probe, 'v1'), 10_000, 'the QoS 0 answer');
      const claimed = keys.map(
        (key) => site.stack.pipeline.get({ scope: 'plant', key }) !== undefined,
      );
      expect(claimed).toEqual([true, true, false]);
      expect(site.broker.deliveriesTo(CLIENT_ID, heldBack)).toHaveLength(delivered);
      expect(devices.map(writes)).toEqual(before);
    } finally {
      await pool.release();
    }
    // The PUBACKs out, the broker sends the third; each command runs once.
    for (let i = 0; i < devices.length; i++) {
      const result = await observer.waitFor(resultFor(keys[i]!, devices[i]!), 15_000, 'result');
      expect(result.json()).toMatchObject({ state: 'confirmed', replayed: false });
    }
    expect(devices.map(writes)).toEqual(before.map((n) => n + 1));
    expect(site.broker.deliveriesTo(CLIENT_ID, heldBack)).toHaveLength(delivered + 1);
    await intake.stop();
    await startIntake();
  });

  it('answers a QoS 0 command whose claim the journal could not commit (JOURNAL_UNAVAILABLE), writes nothing, keeps the connection; sent again it runs once', async () => {
    const key = randomUUID();
    const topic = `${PREFIX}/cmd/v1`;
    const replyTopic = 'replies/gws/q0';
    const before = writes('v1');
    const connections = (): number => site.broker.connectionsOf(CLIENT_ID);
    const connected = connections();
    await issuer.subscribe('replies/gws/#');
    // The COMMIT of the claim's batch fails, as an I/O error would (none of its writes kept).
    const faults = commitFaults(site.stack.journal);
    const failed = faults.failed;
    const claim = site.stack.journal.claim.bind(site.stack.journal);
    site.stack.journal.claim = (...args) => {
      const outcome = claim(...args);
      if (args[0].key === key) faults.failNext();
      return outcome;
    };
    const command = timed({ action: moveOf('v1'), key });
    try {
      await issuer.publish(topic, command, {
        qos: 0,
        properties: { responseTopic: replyTopic, correlationData: Buffer.from('q0-1') },
      });
      // QoS 0 is never redelivered: the requester is told, on the result and Response Topics.
      const answer = await observer.waitFor(resultFor(key, 'v1'), 10_000, 'answer');
      expect(answer.json()).toMatchObject({ key, device: 'v1', code: 'JOURNAL_UNAVAILABLE' });
      expect(answer.json().detail).toContain('publish it again with the same key');
      const reply = await issuer.waitFor((m) => m.topic === replyTopic, 10_000, 'reply');
      expect(reply.text).toBe(answer.text);
      expect(reply.packet.properties?.correlationData?.toString()).toBe('q0-1');
    } finally {
      site.stack.journal.claim = claim;
    }
    expect(faults.failed).toBe(failed + 1);
    expect(site.stack.journal.get({ scope: 'plant', key })).toBeUndefined();
    expect(writes('v1')).toBe(before);

    // Sent again with the same key: claimed now, and written once.
    await issuer.publish(topic, command, { qos: 0 });
    const result = await observer.waitFor(
      (m) => resultFor(key, 'v1')(m) && m.json().state === 'confirmed',
      10_000,
      'result',
    );
    expect(result.json()).toMatchObject({ replayed: false });
    expect(writes('v1')).toBe(before + 1);
    // Nothing was left for the broker to redeliver: the connection was not dropped.
    expect(connections()).toBe(connected);
    expect(intake.connected()).toBe(true);
  });

  it('journals, runs and answers a QoS 0 command that reached the gateway together with the end of its connection', async () => {
    // A proxy between the intake and the broker ends the intake's connection (FIN) right after
    // the bytes of the QoS 0 command: they arrive with the close. A QoS 1 command before it
    // waits for its fsync (the thread pool held), so the QoS 0 one is handled only after the
    // close: it was received whole, and QoS 0 is never redelivered.
    const q0 = randomUUID();
    const cut = { armed: false, done: false };
    const proxy = createServer((inbound) => {
      const outbound = createConnection({ host: '127.0.0.1', port: site.broker.port });
      const close = (): void => {
        inbound.destroy();
        outbound.destroy();
      };
      inbound.on('error', close).on('close', close);
      outbound.on('error', close).on('close', close);
      inbound.pipe(outbound);
      outbound.on('data', (chunk: Buffer) => {
        inbound.write(chunk);
        if (cut.armed && !cut.done && chunk.includes(q0)) {
          cut.done = true;
          inbound.end();
          outbound.destroy();
        }
      });
    });
    await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
    const address = proxy.address();
    const port = typeof address === 'object' && address !== null ? address.port : 0;
    await intake.stop();
    // A reconnection long after the close: the connection's packets still waiting are handled
    // first (a new connection would make mqtt.js drop them, docs/mqtt-api.md "QoS 0").
    intake = site.intake({
      gatewayId: GATEWAY,
      config: { url: `mqtt://127.0.0.1:${port}`, protocolVersion: 5 },
      reconnect: { minMs: 1_500, maxMs: 1_500 },
    });
    await site.connect(intake);
    try {
      const q1 = randomUUID();
      const before = { v1: writes('v1'), v2: writes('v2') };
      const pool = holdThreadPool();
      try {
        await issuer.publish(`${PREFIX}/cmd/v2`, timed({ action: moveOf('v2'), key: q1 }));
        await until(
          () => site.stack.pipeline.get({ scope: 'plant', key: q1 }),
          10_000,
          'q1 claimed',
        );
        cut.armed = true;
        await issuer.publish(`${PREFIX}/cmd/v1`, timed({ action: moveOf('v1'), key: q0 }), {
          qos: 0,
        });
        await until(() => (cut.done && !intake.connected() ? true : undefined), 10_000, 'cut');
      } finally {
        await pool.release();
      }
      const result = await observer.waitFor(resultFor(q0, 'v1'), 15_000, 'result of q0');
      expect(result.json()).toMatchObject({ state: 'confirmed', replayed: false });
      expect(site.stack.journal.findByKey(q0)).toHaveLength(1);
      expect(writes('v1')).toBe(before.v1 + 1);
      // The QoS 1 command, not acknowledged on the closed connection, is redelivered and runs once.
      await observer.waitFor(resultFor(q1, 'v2'), 15_000, 'result of q1');
      expect(writes('v2')).toBe(before.v2 + 1);
    } finally {
      await intake.stop();
      await new Promise<void>((resolve) => {
        proxy.close(() => {
          resolve();
        });
      });
      await startIntake();
    }
  });

  it('executes once a command redelivered after a broker restart', async () => {
    const key = randomUUID();
    const topic = `${PREFIX}/cmd/u1`;
    const before = writes('u1');
    const refusals = await journalRefusals();
    lockJournal();
    const command = timed({ action: moveOf('u1'), key, ttlMs: 60_000 });
    await issuer.publish(topic, command);
    await until(
      async () => ((await journalRefusals()) > refusals ? true : undefined),
      10_000,
      'a refused claim',
    );
    // The message is in flight to the gateway, unacknowledged, when the broker goes down.
    await site.broker.stop();
    unlockJournal();
    await site.broker.restart();

    await until(
      () =>
        site.stack.pipeline.get({ scope: 'plant', key })?.state === 'confirmed' ? true : undefined,
      15_000,
      'command confirmed',
    );
    const result = await observer.waitFor(resultFor(key, 'u1'), 10_000, 'result');
    expect(result.json()).toMatchObject({ state: 'confirmed', replayed: false });
    expect(writes('u1')).toBe(before + 1);
    // The restarted broker redelivered it from its persistence (DUP set).
    expect(site.broker.deliveriesTo(CLIENT_ID, topic).at(-1)?.dup).toBe(true);

    // An issuer retrying after the outage gets the replay, and nothing moves.
    await issuer.publish(topic, command);
    const replay = await observer.waitFor(
      (m) => resultFor(key, 'u1')(m) && m.json().replayed === true,
      10_000,
      'replay',
    );
    expect(replay.json()).toMatchObject({ state: 'confirmed' });
    expect(writes('u1')).toBe(before + 1);
  });

  it('comes up while the broker is down, and connects and takes commands once it is back', async () => {
    await intake.stop();
    await site.broker.stop();
    intake = newIntake();
    intake.start();
    await until(() => intake.health().lastError ?? undefined, 5_000, 'a connection error');
    expect(intake.connected()).toBe(false);

    await site.broker.restart();
    await until(() => intake.connected() || undefined, 10_000, 'intake connected');
    const key = randomUUID();
    const before = writes('v1');
    await issuer.publish(`${PREFIX}/cmd/v1`, timed({ action: moveOf('v1'), key }));
    const result = await observer.waitFor(resultFor(key, 'v1'), 10_000, 'result');
    expect(result.json()).toMatchObject({ state: 'confirmed' });
    expect(writes('v1')).toBe(before + 1);
    expect(intake.health()).toMatchObject({ connected: true, taking: true, lastError: null });
  });
});
