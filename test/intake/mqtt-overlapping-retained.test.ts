import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { mosquittoAvailable, timed, until, useMqttSite } from '../helpers/mqtt-site.js';
import { readFaults } from '../helpers/read-faults.js';
import { recordingLogger } from '../helpers/recording-logger.js';

/**
 * A subscription another client left in the gateway's persistent session beside the command
 * filter, made without retain-as-published (`mosquitto_sub -c -i <gateway's id> -t
 * 'sluice/<gw>/cmd/#'`: mosquitto_sub asks for it only with --retain-as-published). Over MQTT 5
 * Mosquitto sends a message once per matching subscription of the session, each with that
 * subscription's options: a command published retained came twice, flagged retained through the
 * command filter (retain as published) and unflagged through the left one (MQTT 5 §3.3.1.3:
 * without it the flag is cleared). The unflagged copy was run as a fresh command (SPEC §5,
 * docs/spec-notes.md: a retained command is refused). The real intake, Mosquitto, the simulated
 * plant; ground truth: the simulator's write count, the journal, the broker's log.
 */

const available = mosquittoAvailable();

describe.skipIf(!available)('MQTT intake: a retained command through a left filter', () => {
  const site = useMqttSite({}, { opcua: false });

  /**
   * A gateway whose command filter another client replaced while it was away (the tool's own
   * subscription of `{prefix}/cmd/+`, without the gateway's Subscription Identifier), and a
   * command published then: queued for it through that subscription alone. Returns the
   * gateway's parts; the gateway is not connected again yet.
   */
  const awayWithReplacedFilter = async (gateway: string) => {
    const prefix = `sluice/${gateway}`;
    const clientId = `sluice-${gateway}`;
    const topic = `${prefix}/cmd/v1`;
    const { logger, lines } = recordingLogger();
    const newIntake = (): ReturnType<typeof site.intake> =>
      site.intake({
        gatewayId: gateway,
        config: { protocolVersion: 5 },
        logger,
        reconnect: { minMs: 100, maxMs: 400 },
        strayCopyWaitMs: 300,
      });
    const first = newIntake();
    site.cleanups.push(() => first.stop());
    await site.connect(first);
    await first.stop();
    // The tool subscribes the command filter itself: it replaces the gateway's subscription
    // with one of its own options (no Subscription Identifier, no retain-as-published), which
    // the broker queues the commands published while the gateway is away through.
    await site.leaveSubscriptions(clientId, [`${prefix}/cmd/+`], { expirySeconds: 600 });
    const { plant, observer, writes } = await site.plantSide(prefix);
    const action = site.stack.plant.device('v1').published.state === 'CLOSED' ? 'open' : 'close';
    const before = writes();
    const key = randomUUID();
    await plant.publish(topic, timed({ action, key, ttlMs: 60_000 }));
    return { clientId, topic, lines, newIntake, plant, observer, writes, action, before, key };
  };

  it('MQTT 5: a copy the command filter did not deliver is never run', async () => {
    const gateway = 'gwoverret';
    const prefix = `sluice/${gateway}`;
    const clientId = `sluice-${gateway}`;
    const topic = `${prefix}/cmd/v1`;
    const { logger } = recordingLogger();
    const newIntake = (): ReturnType<typeof site.intake> =>
      site.intake({
        gatewayId: gateway,
        config: { protocolVersion: 5 },
        logger,
        reconnect: { minMs: 100, maxMs: 400 },
      });
    let intake = newIntake();
    site.cleanups.push(() => intake.stop());
    await site.connect(intake);
    await intake.stop();

    // The tool: the gateway's client id, a persistent session, a filter beside `cmd/+`,
    // without retain-as-published; it ends after a second.
    await site.leaveSubscriptions(clientId, [`${prefix}/cmd/#`], { expirySeconds: 600 });
    expect(site.broker.log()).toContain(`${clientId} 1 ${prefix}/cmd/#`);

    const { plant, observer, writes } = await site.plantSide(prefix);
    const action = site.stack.plant.device('v1').published.state === 'CLOSED' ? 'open' : 'close';

    intake = newIntake();
    await site.connect(intake);
    const before = writes();
    const key = randomUUID();
    await plant.publish(topic, timed({ action, key, ttlMs: 60_000 }), { retain: true });
    site.cleanups.push(() => plant.publish(topic, '', { retain: true }));
    // Both copies reached the gateway (the broker's log), and it acknowledged both.
    await until(
      () => (site.broker.deliveriesTo(clientId, topic).length >= 2 ? true : undefined),
      5_000,
      'two copies sent',
    );
    const answer = await observer.waitFor((m) => m.json().key === key, 5_000, 'answer');
    expect(answer.json()).toMatchObject({ code: 'INVALID_COMMAND' });
    expect(answer.json()).not.toHaveProperty('state');
    // A later command (not retained) runs once: the left filter was removed meanwhile.
    const later = randomUUID();
    await plant.publish(topic, timed({ action, key: later, ttlMs: 60_000 }));
    const result = await observer.waitFor((m) => m.json().key === later, 10_000, 'result');
    expect(result.json()).toMatchObject({ state: 'confirmed' });
    // Never journaled, never written: the one write is the later command's.
    expect(site.stack.pipeline.get({ scope: 'plant', key })).toBeUndefined();
    expect(writes()).toBe(before + 1);
    // The retained command's answers: refusals only.
    const answers = observer.messages.filter((m) => m.json().key === key).map((m) => m.json());
    for (const a of answers) expect(a).toMatchObject({ code: 'INVALID_COMMAND' });
    await intake.stop();
  }, 30_000);

  it('MQTT 5: a command only another filter delivered is answered, not run', async () => {
    // Its retain flag is the tool's subscription's doing (a broker clears it without
    // retain-as-published; Mosquitto 2.0.11 keeps it on a queued message): the gateway cannot
    // tell a retained command from a fresh one there, and runs neither.
    const { clientId, topic, lines, newIntake, plant, observer, writes, action, before, key } =
      await awayWithReplacedFilter('gwreplaced');
    const intake = newIntake();
    site.cleanups.push(() => intake.stop());
    await site.connect(intake);
    const answer = await observer.waitFor((m) => m.json().key === key, 5_000, 'answer');
    expect(answer.json()).toMatchObject({ code: 'INVALID_COMMAND' });
    expect(String(answer.json().detail)).toContain('not run, nothing was written');
    expect(site.broker.deliveriesTo(clientId, topic)).toHaveLength(1);
    // The gateway's subscription is its own again: a command now runs, once.
    const later = randomUUID();
    await plant.publish(topic, timed({ action, key: later, ttlMs: 60_000 }));
    const result = await observer.waitFor((m) => m.json().key === later, 10_000, 'result');
    expect(result.json()).toMatchObject({ state: 'confirmed' });
    expect(site.stack.pipeline.get({ scope: 'plant', key })).toBeUndefined();
    expect(writes()).toBe(before + 1);
    expect(
      lines.filter((l) => String(l.msg).startsWith('command delivered only through another')),
    ).toHaveLength(1);
    await intake.stop();
  }, 30_000);

  it('MQTT 5: such a command, whose key the journal cannot be read for, is not answered; the gateway goes on', async () => {
    // The answer is made from a timer (the copy's wait for its sibling), outside any handler: a
    // journal read that failed there ended the daemon. One double (test/helpers/read-faults.ts),
    // for a fault no filesystem here can aim at one key: the journal's read of that key fails.
    const { topic, lines, newIntake, plant, observer, writes, action, before, key } =
      await awayWithReplacedFilter('gwreadfails');
    const intake = newIntake();
    site.cleanups.push(() => intake.stop());
    const faults = readFaults(site.stack.journal, new Set([key]));
    try {
      await site.connect(intake);
      await until(
        () =>
          lines.some((l) => String(l.msg).includes('whether its key is journaled cannot be read'))
            ? true
            : undefined,
        5_000,
        'the copy found unreadable',
      );
      expect(faults.failed).toBe(1);
    } finally {
      faults.armed = false;
    }
    // Decided: not answered (whether it was run cannot be told), and nothing written.
    expect(observer.messages.filter((m) => m.json().key === key)).toEqual([]);
    expect(site.stack.pipeline.get({ scope: 'plant', key })).toBeUndefined();
    // The gateway goes on: a command now runs, once.
    const later = randomUUID();
    await plant.publish(topic, timed({ action, key: later, ttlMs: 60_000 }));
    const result = await observer.waitFor((m) => m.json().key === later, 10_000, 'result');
    expect(result.json()).toMatchObject({ state: 'confirmed' });
    expect(writes()).toBe(before + 1);
    await intake.stop();
  }, 30_000);
});
