import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  mosquittoAvailable,
  timed,
  until,
  useMqttSite,
  type TestClient,
} from '../helpers/mqtt-site.js';
import { recordingLogger } from '../helpers/recording-logger.js';
import { slowFdatasync } from '../helpers/slow-fdatasync.js';
import { StrippingProxy } from '../helpers/stripping-proxy.js';

/**
 * A broker path that announces Subscription Identifiers in its CONNACK and delivers none: a
 * broker that misbehaves, or a bridge or proxy on the way that drops the property. The gateway
 * tells a command copy another subscription of its session delivered by the missing identifier
 * (mqtt-stray-copies.ts) and never runs it: on such a path every MQTT 5 command was refused, each
 * after the stray copy's wait. Mosquitto cannot be made to drop identifiers, so the gateway
 * reaches the real Mosquitto through StrippingProxy below, a TCP proxy that removes property
 * 0x0B (Subscription Identifier) from every PUBLISH the broker sends: the one double here, for
 * the fault (test/helpers/stripping-proxy.ts). Everything else is real: Mosquitto, the intake, the journal, the simulated plant
 * (ground truth: its write count, the journal).
 */

const available = mosquittoAvailable();

describe.skipIf(!available)(
  'MQTT intake: a broker path that drops Subscription Identifiers',
  () => {
    const site = useMqttSite({}, { opcua: false });

    /** A StrippingProxy in front of the broker (closed at the test's end). */
    async function strippingProxy(): Promise<StrippingProxy> {
      const proxy = await StrippingProxy.open(site.broker.port);
      site.cleanups.push(() => proxy.close());
      return proxy;
    }

    /** Every answer the observer has for `keys` is a confirmation (none answered as not run). */
    function expectOnlyConfirmed(observer: TestClient, keys: readonly string[]): void {
      const answers = observer.messages.filter((m) => keys.includes(String(m.json().key)));
      for (const a of answers) expect(a.json()).toMatchObject({ state: 'confirmed' });
    }

    /**
     * A gateway `gateway` reaching the broker through a StrippingProxy, one run of it made its
     * session (its command subscription) and stopped; a plant client to publish commands, an
     * observer of its results; `nextRun` starts the next run (stopped at the test's end), the
     * proxy holding back the probe's read-back of the status `holdStatusMs` if given; `held`
     * counts the copies the runs held for the probe's verdict; `written` the writes since; `key`
     * and `action` a fresh command that moves the valve.
     */
    async function afterFirstRun(
      gateway: string,
      options: { readonly strayCopyWaitMs?: number; readonly maxHeldCopies?: number },
    ) {
      const prefix = `sluice/${gateway}`;
      const proxy = await strippingProxy();
      const { logger, lines } = recordingLogger();
      const newIntake = (): ReturnType<typeof site.intake> => {
        const intake = site.intake({
          gatewayId: gateway,
          config: { protocolVersion: 5, url: `mqtt://127.0.0.1:${proxy.port}` },
          logger,
          reconnect: { minMs: 100, maxMs: 200 },
          ...(options.strayCopyWaitMs === undefined
            ? {}
            : { strayCopyWaitMs: options.strayCopyWaitMs }),
          identifierProbe: { graceMs: 200 },
          ...(options.maxHeldCopies === undefined ? {} : { maxHeldCopies: options.maxHeldCopies }),
        });
        site.cleanups.push(() => intake.stop());
        return intake;
      };
      const first = newIntake();
      await site.connect(first);
      await first.stop();
      const nextRun = (holdStatusMs?: number): ReturnType<typeof site.intake> => {
        if (holdStatusMs !== undefined)
          proxy.holdTopic = { topic: `${prefix}/status`, ms: holdStatusMs };
        const intake = newIntake();
        intake.start();
        return intake;
      };
      const held = (): number =>
        lines.filter((l) => String(l.msg).startsWith('command copy without the command')).length;
      const { plant, observer, writes } = await site.plantSide(prefix);
      const before = writes();
      const action = site.stack.plant.device('v1').published.state === 'CLOSED' ? 'open' : 'close';
      return {
        clientId: `sluice-${gateway}`,
        topic: `${prefix}/cmd/v1`,
        proxy,
        lines,
        nextRun,
        held,
        plant,
        observer,
        written: (): number => writes() - before,
        key: randomUUID(),
        action,
      };
    }

    it('MQTT 5: found by the probe, said, and commands run once', async () => {
      const gateway = 'gwnoids';
      const prefix = `sluice/${gateway}`;
      const topic = `${prefix}/cmd/v1`;
      const proxy = await strippingProxy();
      const { logger, lines } = recordingLogger();
      const intake = site.intake({
        gatewayId: gateway,
        config: { protocolVersion: 5, url: `mqtt://127.0.0.1:${proxy.port}` },
        logger,
        reconnect: { minMs: 100, maxMs: 200 },
        // Short, so that the code before the probe answers within the test's wait.
        strayCopyWaitMs: 300,
        identifierProbe: { graceMs: 200 },
      });
      site.cleanups.push(() => intake.stop());
      const { plant, observer, writes } = await site.plantSide(prefix);
      const device = (): string => site.stack.plant.device('v1').published.state;
      const before = writes();

      await site.connect(intake);
      // The proxy stripped the identifier off PUBLISH packets, the probe's copy of `online` too.
      await until(() => (proxy.stripped > 0 ? true : undefined), 5_000, 'an identifier stripped');
      await until(
        () => (intake.health().subscriptionIdentifiers === 'missing' ? true : undefined),
        5_000,
        'identifiers found missing',
      );
      expect(intake.protocol().summary).toContain('delivers none');
      expect(
        lines.filter((l) =>
          String(l.msg).startsWith('the MQTT broker announced Subscription Identifiers but'),
        ),
      ).toHaveLength(1);

      const key = randomUUID();
      const action = device() === 'CLOSED' ? 'open' : 'close';
      await plant.publish(topic, timed({ action, key, ttlMs: 60_000 }));
      const result = await observer.waitFor((m) => m.json().key === key, 10_000, 'result');
      expect(result.json()).toMatchObject({ state: 'confirmed' });
      expect(site.stack.pipeline.get({ scope: 'plant', key })?.state).toBe('confirmed');
      expect(writes()).toBe(before + 1);

      // A command queued while the gateway is away arrives on the next connection before that
      // connection's probe answers: the verdict found before holds until then, and it runs once.
      proxy.down();
      await until(() => (intake.connected() ? undefined : true), 5_000, 'disconnected');
      const queued = randomUUID();
      const next = action === 'open' ? 'close' : 'open';
      await plant.publish(topic, timed({ action: next, key: queued, ttlMs: 60_000 }));
      proxy.up();
      const second = await observer.waitFor((m) => m.json().key === queued, 10_000, 'result');
      expect(second.json()).toMatchObject({ state: 'confirmed' });
      expect(writes()).toBe(before + 2);
      expectOnlyConfirmed(observer, [key, queued]);
      await intake.stop();
    }, 30_000);

    /**
     * The first connection of a run on such a path: the commands queued for the gateway come
     * before the probe can answer. They were taken for copies another filter delivered,
     * acknowledged, and answered INVALID_COMMAND once the probe found identifiers missing (not
     * run: acknowledged already, I5). Now each waits, unacknowledged, for the verdict, and then
     * runs as on a broker without identifiers.
     */
    it('MQTT 5: commands queued for the first connection of a run wait for the probe and run once', async () => {
      const { topic, nextRun, held, plant, observer, written, key, action } = await afterFirstRun(
        'gwnoidsq',
        { strayCopyWaitMs: 300 },
      );
      await plant.publish(topic, timed({ action, key, ttlMs: 60_000 }));

      // The next run: its probe knows nothing yet, and the queued command comes first.
      const intake = nextRun();
      const result = await observer.waitFor((m) => m.json().key === key, 10_000, 'result');
      expect(result.json()).toMatchObject({ state: 'confirmed' });
      expect(intake.health().subscriptionIdentifiers).toBe('missing');
      expect(site.stack.pipeline.get({ scope: 'plant', key })?.state).toBe('confirmed');
      expect(written()).toBe(1);
      // It came before the verdict (held, not taken for another filter's copy).
      expect(held()).toBeGreaterThan(0);
      expectOnlyConfirmed(observer, [key]);
      await intake.stop();
    }, 30_000);

    /**
     * A copy held for the probe's verdict was received when it came, not when the verdict let it
     * go: a command timed by its receipt (no issuedAt; an MQTT 5 Message Expiry Interval) has its
     * deadline from then (SPEC §2, I3). The proxy holds back the probe's read-back of the status
     * for 2 s, the command's ttlMs is 1 s: it is never written.
     */
    it('MQTT 5: a held command timed by its receipt is not run past its deadline', async () => {
      const { topic, nextRun, held, plant, observer, written, key, action } = await afterFirstRun(
        'gwnoidsttl',
        { strayCopyWaitMs: 300 },
      );
      await plant.publish(
        topic,
        { action, key, ttlMs: 1_000 },
        { properties: { messageExpiryInterval: 600 } },
      );

      // The next run: the queued command comes first and waits for the probe's late verdict.
      const intake = nextRun(2_000);
      const result = await observer.waitFor((m) => m.json().key === key, 10_000, 'result');
      expect(result.json()).toMatchObject({
        state: 'rejected',
        code: 'STALE_COMMAND',
        issuedAtSource: 'gateway',
      });
      expect(intake.health().subscriptionIdentifiers).toBe('missing');
      expect(held()).toBeGreaterThan(0);
      expect(site.stack.pipeline.get({ scope: 'plant', key })?.dispatchedAt).toBeNull();
      expect(written()).toBe(0);
      await intake.stop();
    }, 30_000);

    /**
     * A held copy whose connection ends before the probe answers is let go unacknowledged: the
     * broker redelivers it on the next connection, where it waits again and runs once (I5: no
     * PUBACK before its claim; I1). The proxy holds back the probe's read-back of the status so
     * that the connection can be cut while the command waits.
     */
    it('MQTT 5: a copy held when its connection ends is redelivered and runs once', async () => {
      const { clientId, topic, proxy, nextRun, held, plant, observer, written, key, action } =
        await afterFirstRun('gwnoidscut', {});
      await plant.publish(topic, timed({ action, key, ttlMs: 60_000 }));

      const intake = nextRun(5_000);
      await until(() => (held() >= 1 ? true : undefined), 10_000, 'the command held');
      await until(
        () => (site.broker.deliveriesTo(clientId, topic).length === 1 ? true : undefined),
        5_000,
        'one delivery in the broker log',
      );
      proxy.down();
      proxy.holdTopic = null;
      proxy.up();
      const result = await observer.waitFor((m) => m.json().key === key, 10_000, 'result');
      expect(result.json()).toMatchObject({ state: 'confirmed' });
      // Sent again by the broker (not acknowledged on the first connection), run once.
      const deliveries = site.broker.deliveriesTo(clientId, topic);
      expect(deliveries.length).toBeGreaterThanOrEqual(2);
      expect(deliveries.some((d) => d.dup)).toBe(true);
      expect(held()).toBeGreaterThanOrEqual(2);
      expect(site.stack.journal.findByKey(key)).toHaveLength(1);
      expect(written()).toBe(1);
      await intake.stop();
    }, 30_000);

    /**
     * Past the hold limit (1,000 copies; 1 here, through maxHeldCopies), a further copy without
     * the command subscription's identifier that came before the probe's verdict was handled as
     * it came, as one another filter of the session delivered: acknowledged (PUBACK) and, once
     * the probe found identifiers missing, answered INVALID_COMMAND "not run": a command the plant
     * system sent was lost. Now it is left with the broker (no PUBACK) and, once the verdict is
     * known and the copies held are handled, the connection is dropped so that the broker sends
     * it again, where it waits for that connection's verdict and runs once. Two commands queued
     * for the gateway between two runs; the proxy holds back the probe's read-back of the status
     * so that both come first.
     */
    it('MQTT 5: a copy past the hold limit is left with the broker and runs once, not answered as not run', async () => {
      const { clientId, topic, lines, nextRun, held, plant, observer, written, key, action } =
        await afterFirstRun('gwnoidsfull', { strayCopyWaitMs: 300, maxHeldCopies: 1 });
      const second = randomUUID();
      const next = action === 'open' ? 'close' : 'open';
      await plant.publish(topic, timed({ action, key, ttlMs: 60_000 }));
      await plant.publish(topic, timed({ action: next, key: second, ttlMs: 60_000 }));

      const intake = nextRun(500);
      for (const k of [key, second] as const) {
        const result = await observer.waitFor((m) => m.json().key === k, 15_000, `result of ${k}`);
        expect(result.json()).toMatchObject({ state: 'confirmed' });
        expect(site.stack.journal.findByKey(k)).toHaveLength(1);
      }
      expect(written()).toBe(2);
      // Nothing answered as not run: every answer for either key is its confirmation.
      expectOnlyConfirmed(observer, [key, second]);
      // The broker sent the second again (not acknowledged on the first connection).
      const deliveries = site.broker.deliveriesTo(clientId, topic);
      expect(deliveries.length).toBeGreaterThanOrEqual(3);
      expect(deliveries.some((d) => d.dup)).toBe(true);
      // The copy held and claimed on that connection was acknowledged on it before the drop: the
      // broker sent it once and never again. Its PUBACK, written into mqtt.js's corked stream,
      // went with the stream destroyed in the same turn: sent again, that copy came first on the
      // next connection and filled the hold again, the copy left behind it left again, for as
      // long as its command was in flight.
      const first = deliveries[0]?.mid;
      expect(deliveries.filter((d) => d.mid === first)).toHaveLength(1);
      expect(site.broker.log()).toMatch(
        new RegExp(`Received PUBACK from ${clientId} \\(Mid: ${first}[,)]`),
      );
      expect(held()).toBeGreaterThan(0);
      expect(
        lines.some((l) => String(l.msg).startsWith('command copies without the command')),
      ).toBe(true);
      await intake.stop();
    }, 40_000);

    /**
     * A copy left with the broker past the hold limit (1 here) is the gateway's to time as a held
     * one is (f90b135): a command without issuedAt is timed from when it first came, not from its
     * redelivery on the connection after the drop. It was timed afresh there, and a command whose
     * ttlMs had run out while the gateway left it with the broker was written (I3). The proxy
     * holds back the probe's read-back 1 s on each connection: the second command comes at once,
     * is sent again ~1.3 s later and handled ~1.2 s after that, past its 1.5 s from first coming
     * and within 1.5 s of its redelivery.
     */
    it('MQTT 5: a copy left past the hold limit is timed from when it first came', async () => {
      const { clientId, topic, nextRun, plant, observer, written, key, action } =
        await afterFirstRun('gwnoidslate', { strayCopyWaitMs: 300, maxHeldCopies: 1 });
      const second = randomUUID();
      await plant.publish(topic, timed({ action, key, ttlMs: 60_000 }));
      await plant.publish(
        topic,
        { action: action === 'open' ? 'close' : 'open', key: second, ttlMs: 1_500 },
        { properties: { messageExpiryInterval: 600 } },
      );

      const intake = nextRun(1_000);
      const firstResult = await observer.waitFor((m) => m.json().key === key, 15_000, 'first');
      expect(firstResult.json()).toMatchObject({ state: 'confirmed' });
      const result = await observer.waitFor((m) => m.json().key === second, 15_000, 'second');
      expect(result.json()).toMatchObject({
        state: 'rejected',
        code: 'STALE_COMMAND',
        issuedAtSource: 'gateway',
      });
      // It was left on the first connection and sent again (DUP) on the next.
      const deliveries = site.broker.deliveriesTo(clientId, topic);
      expect(deliveries.filter((d) => d.dup).length).toBeGreaterThanOrEqual(1);
      expect(site.stack.journal.findByKey(second)).toHaveLength(1);
      expect(site.stack.pipeline.get({ scope: 'plant', key: second })?.dispatchedAt).toBeNull();
      expect(written()).toBe(1);
      await intake.stop();
    }, 40_000);

    /**
     * A copy held for the probe's verdict when the broker stops (SIGTERM: it closes the
     * connection, saves the session and sends the copy again, DUP, once it is back) goes with its
     * connection, unacknowledged, as one whose connection is cut does. The session's close handler
     * runs before mqtt.js marks the client disconnected: the copy was handled there as if its
     * verdict were known (none yet in this run: identifiers trusted), taken for another filter's
     * copy and answered INVALID_COMMAND "not run … publish it again" once the stray-copy wait ran
     * out (300 ms here, 5 s by default; the broker away longer), though the broker then sent it
     * again and it ran: a plant system that published it again would have moved the valve twice.
     */
    it('MQTT 5: a copy held when the broker stops is not answered as not run, and runs once', async () => {
      const { clientId, topic, nextRun, held, plant, observer, written, key, action } =
        await afterFirstRun('gwnoidsstop', { strayCopyWaitMs: 300 });
      await plant.publish(topic, timed({ action, key, ttlMs: 60_000 }));

      const intake = nextRun(1_500);
      await until(() => (held() >= 1 ? true : undefined), 10_000, 'the command held');
      await site.broker.stop();
      // Away longer than the stray-copy wait (twice it).
      await new Promise((resolve) => setTimeout(resolve, 600));
      await site.broker.restart();
      const result = await observer.waitFor((m) => m.json().key === key, 15_000, 'result');
      expect(result.json()).toMatchObject({ state: 'confirmed' });
      // Anything published while the broker was away went out before the result.
      expectOnlyConfirmed(observer, [key]);
      const deliveries = site.broker.deliveriesTo(clientId, topic);
      expect(deliveries.some((d) => d.dup)).toBe(true);
      expect(site.stack.journal.findByKey(key)).toHaveLength(1);
      expect(written()).toBe(1);
      await intake.stop();
    }, 40_000);

    /**
     * A copy held for the probe's verdict whose connection ends first (here the broker restarted,
     * SIGTERM: it saves the session and sends the copy again, DUP, on the next connection) is the
     * gateway's to time as a held one is (f90b135) and one left past the hold limit is (cf37c45):
     * a command without issuedAt is timed from when it first came. It was timed afresh from its
     * redelivery, and one whose ttlMs had run out while the gateway held it and the broker was
     * away was written (I3). The proxy holds back the probe's read-back 1 s on each connection;
     * the broker is away 1 s: handled ~1.1 s after its redelivery, past its 1.8 s from first
     * coming (at least the 1 s away and the 1 s held after it).
     */
    it('MQTT 5: a copy held when the broker restarts is timed from when it first came', async () => {
      const { clientId, topic, nextRun, held, plant, observer, written, key, action } =
        await afterFirstRun('gwnoidsrestart', { strayCopyWaitMs: 300 });
      await plant.publish(
        topic,
        { action, key, ttlMs: 1_800 },
        { properties: { messageExpiryInterval: 600 } },
      );

      const intake = nextRun(1_000);
      await until(() => (held() >= 1 ? true : undefined), 10_000, 'the command held');
      await site.broker.stop();
      await new Promise((resolve) => setTimeout(resolve, 1_000));
      await site.broker.restart();
      const result = await observer.waitFor((m) => m.json().key === key, 15_000, 'result');
      expect(result.json()).toMatchObject({
        state: 'rejected',
        code: 'STALE_COMMAND',
        issuedAtSource: 'gateway',
      });
      // Sent again by the restarted broker (DUP), held again, and never written.
      const deliveries = site.broker.deliveriesTo(clientId, topic);
      expect(deliveries.some((d) => d.dup)).toBe(true);
      expect(held()).toBeGreaterThanOrEqual(2);
      expect(site.stack.journal.findByKey(key)).toHaveLength(1);
      expect(site.stack.pipeline.get({ scope: 'plant', key })?.dispatchedAt).toBeNull();
      expect(written()).toBe(0);
      await intake.stop();
    }, 40_000);

    /**
     * Once a copy is left with the broker past the hold limit (1 here), a command published later
     * to the same device reaches the gateway after the probe's verdict and before the drop (while
     * the claims of the copies held commit): it was handled as it came, claimed and run, and the
     * older command left with the broker ran after it on the next connection, so the valve took
     * the plant system's two commands in the opposite order (MQTT 5 §4.6 keeps a topic's order;
     * the device's queue runs commands in the order they were accepted). A slow flush (the
     * fdatasync double: each 1 s late) keeps that window open; the third command is published
     * once the verdict is known. Now every later copy on that connection is left too, and the
     * valve is written A, B, C: ends in C's state.
     */
    it('MQTT 5: a command published after copies were left does not run before them', async () => {
      const { clientId, topic, nextRun, plant, observer, written, key, action } =
        await afterFirstRun('gwnoidsorder', { strayCopyWaitMs: 300, maxHeldCopies: 1 });
      const next = action === 'open' ? 'close' : 'open';
      const second = randomUUID();
      const third = randomUUID();
      await plant.publish(topic, timed({ action, key, ttlMs: 60_000 }));
      await plant.publish(topic, timed({ action: next, key: second, ttlMs: 60_000 }));

      const disk = slowFdatasync(1_000);
      let intake: ReturnType<typeof nextRun>;
      try {
        intake = nextRun(500);
        await until(
          () => (intake.health().subscriptionIdentifiers === 'missing' ? true : undefined),
          10_000,
          "this connection's verdict",
        );
        await plant.publish(topic, timed({ action, key: third, ttlMs: 60_000 }));
        await until(
          () => (site.broker.deliveriesTo(clientId, topic).length >= 3 ? true : undefined),
          5_000,
          'the third command sent to the gateway',
        );
      } finally {
        disk.restore();
      }
      for (const k of [key, second, third] as const) {
        const result = await observer.waitFor((m) => m.json().key === k, 20_000, `result of ${k}`);
        expect(result.json()).toMatchObject({ state: 'confirmed' });
        expect(site.stack.journal.findByKey(k)).toHaveLength(1);
      }
      // The valve's own log: one write each, in the order the plant system published them.
      const seqOf = (k: string): number | null | undefined =>
        site.stack.pipeline.get({ scope: 'plant', key: k })?.seq;
      const log = site.stack.plant.device('v1').writeLog.map((w) => w.seq);
      expect(log.slice(-3)).toEqual([seqOf(key), seqOf(second), seqOf(third)]);
      expect(written()).toBe(3);
      expect(site.stack.plant.device('v1').published.state).toBe(
        action === 'open' ? 'OPEN' : 'CLOSED',
      );
      await intake.stop();
    }, 60_000);

    /**
     * An earlier connection found identifiers missing; the path delivers them again (the proxy no
     * longer strips them) when a command is published retained while the gateway's session holds
     * a filter another client left beside the command filter, without retain-as-published: its
     * copy comes unflagged (MQTT 5 §3.3.1.3) and without the command subscription's identifier,
     * before the new connection's probe answers. The last verdict (missing) had it taken as the
     * command subscription's and run as a fresh command. Now it waits for this connection's
     * verdict (delivered), and is then known for another filter's copy: never run. The proxy holds
     * back the probe's read-back of the status (a slow path) so that the command comes first.
     */
    it('MQTT 5: after a verdict of missing, a copy through a left filter waits for the new verdict', async () => {
      const gateway = 'gwnoidsret';
      const prefix = `sluice/${gateway}`;
      const clientId = `sluice-${gateway}`;
      const topic = `${prefix}/cmd/v1`;
      const proxy = await strippingProxy();
      const { logger } = recordingLogger();
      const intake = site.intake({
        gatewayId: gateway,
        config: { protocolVersion: 5, url: `mqtt://127.0.0.1:${proxy.port}` },
        logger,
        reconnect: { minMs: 100, maxMs: 200 },
        identifierProbe: { graceMs: 200 },
      });
      site.cleanups.push(() => intake.stop());
      await site.connect(intake);
      await until(
        () => (intake.health().subscriptionIdentifiers === 'missing' ? true : undefined),
        5_000,
        'identifiers found missing',
      );
      // The gateway away (its attempts refused by the proxy), another client leaves a filter.
      proxy.down();
      await until(() => (intake.connected() ? undefined : true), 5_000, 'disconnected');
      await site.leaveSubscriptions(clientId, [`${prefix}/cmd/#`], { expirySeconds: 600 });
      expect(site.broker.log()).toContain(`${clientId} 1 ${prefix}/cmd/#`);
      proxy.strip = false;
      proxy.holdTopic = { topic: `${prefix}/status`, ms: 2_000 };
      proxy.up();
      await until(() => intake.connected() || undefined, 10_000, 'connected again');

      const { plant, observer, writes } = await site.plantSide(prefix);
      const before = writes();
      const action = site.stack.plant.device('v1').published.state === 'CLOSED' ? 'open' : 'close';
      const key = randomUUID();
      await plant.publish(topic, timed({ action, key, ttlMs: 60_000 }), { retain: true });
      site.cleanups.push(() => plant.publish(topic, '', { retain: true }));
      await until(
        () => (site.broker.deliveriesTo(clientId, topic).length >= 2 ? true : undefined),
        5_000,
        'two copies sent',
      );
      expect(intake.health().subscriptionIdentifiers).toBe('missing');
      await until(
        () => (intake.health().subscriptionIdentifiers === 'delivered' ? true : undefined),
        10_000,
        'identifiers found delivered',
      );
      // The command filter's copy (retained) refused; the other never journaled nor written.
      const answer = await observer.waitFor((m) => m.json().key === key, 5_000, 'answer');
      expect(answer.json()).toMatchObject({ code: 'INVALID_COMMAND' });
      expect(site.stack.pipeline.get({ scope: 'plant', key })).toBeUndefined();
      // A later command runs once: the only write.
      const later = randomUUID();
      await plant.publish(topic, timed({ action, key: later, ttlMs: 60_000 }));
      const result = await observer.waitFor((m) => m.json().key === later, 10_000, 'result');
      expect(result.json()).toMatchObject({ state: 'confirmed' });
      expect(site.stack.pipeline.get({ scope: 'plant', key })).toBeUndefined();
      expect(writes()).toBe(before + 1);
      await intake.stop();
    }, 30_000);

    it('MQTT 5: on a path that keeps them, the probe says they are delivered', async () => {
      const gateway = 'gwids';
      const { logger } = recordingLogger();
      const intake = site.intake({
        gatewayId: gateway,
        config: { protocolVersion: 5 },
        logger,
        identifierProbe: { graceMs: 200 },
      });
      site.cleanups.push(() => intake.stop());
      await site.connect(intake);
      await until(
        () => (intake.health().subscriptionIdentifiers === 'delivered' ? true : undefined),
        5_000,
        'identifiers found delivered',
      );
      expect(intake.protocol().summary).toBe('MQTT 5');
      // The probe's subscription is gone: the broker's log shows its unsubscription.
      await until(
        () =>
          site.broker.log().includes(`Received UNSUBSCRIBE from sluice-${gateway}`)
            ? true
            : undefined,
        5_000,
        'probe unsubscribed',
      );
      await intake.stop();
    }, 30_000);
  },
);
