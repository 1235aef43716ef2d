import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { createServer } from 'node:net';
import type { Counter } from 'prom-client';
import type { Logger } from 'pino';
import { describe, expect, it } from 'vitest';
import { MqttIntake } from '../../src/intake/mqtt.js';
import { intakeConfig } from '../helpers/mosquitto.js';
import { mosquittoAvailable, TestClient, timed, until, useMqttSite } from '../helpers/mqtt-site.js';
import { recordingLogger } from '../helpers/recording-logger.js';

/**
 * Another client connects with the gateway's client id: here a stray `mosquitto_sub -i
 * <gateway's id> -c`, as an operator might run it to look at the traffic. The broker closes the
 * older connection each time the newer one connects (Mosquitto 2.0.11 sends no DISCONNECT, over
 * MQTT 5 either; its log says "Client <id> already connected, closing old connection"); both
 * reconnect, and the link flaps. The gateway must say why (warn, with the client id and the
 * count, once rather than at every flap) and /readyz's reason must name it. The commands
 * published meanwhile go to whichever client holds the session: those the stray tool takes are
 * acknowledged by it and never reach the gateway. Ground truth: the simulator's write log (one
 * write per journaled command, none for the others), the journal, what the stray printed and
 * the broker's log.
 */

const available = mosquittoAvailable();
const GATEWAY = 'gwdup';
const PREFIX = `sluice/${GATEWAY}`;
const CLIENT_ID = `sluice-${GATEWAY}`;
const SUSPECTED = 'most likely another client connects with this client id';

describe.skipIf(!available)('MQTT intake: another client connects with its client id', () => {
  const site = useMqttSite({}, { opcua: false });

  /** An intake as `gatewayId` on `clientId`, connected (stopped at the test's end). */
  async function connectedIntake(
    protocolVersion: 4 | 5,
    clientId: string,
    gatewayId: string,
    logger: Logger,
  ): Promise<MqttIntake> {
    const intake = site.intake({
      config: { protocolVersion, clientId },
      gatewayId,
      logger,
      reconnect: { minMs: 100, maxMs: 400 },
    });
    site.cleanups.push(() => intake.stop());
    await site.connect(intake);
    return intake;
  }

  /**
   * A stray `mosquitto_sub` on the broker, `args` after its host and port (stopped at the test's
   * end, or by `stop`); with `printed`, each line it prints is added there.
   */
  function stray(
    args: readonly string[],
    printed?: string[],
  ): { readonly stop: () => Promise<void> } {
    const child: ChildProcess = spawn(
      'mosquitto_sub',
      ['-h', '127.0.0.1', '-p', String(site.broker.port), ...args],
      { stdio: printed === undefined ? 'ignore' : ['ignore', 'pipe', 'ignore'] },
    );
    const exited = new Promise<void>((resolve) => {
      child.once('exit', () => {
        resolve();
      });
    });
    const stop = async (): Promise<void> => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      await exited;
    };
    site.cleanups.push(stop);
    child.stdout?.on('data', (chunk: Buffer) => {
      printed?.push(
        ...chunk
          .toString('utf8')
          .split('\n')
          .filter((l) => l !== ''),
      );
    });
    return { stop };
  }

  /** How many times the broker's log says it closed `clientId`'s older connection. */
  const closedOld = (clientId: string): number =>
    site.broker
      .log()
      .split('\n')
      .filter((l) => l.includes(`Client ${clientId} already connected, closing old`)).length;

  /** sluice_mqtt_session_takeovers_suspected_total by evidence. */
  const counted = async (): Promise<Takeovers> => ({
    clean_session: await takeoversCounted(site.stack.metrics, 'clean_session'),
    pattern: await takeoversCounted(site.stack.metrics, 'pattern'),
    disconnect: await takeoversCounted(site.stack.metrics, 'disconnect'),
  });

  /**
   * A clean-session client (MQTT 5) takes the session of `clientId`'s gateway, until counted
   * clean_session (then `whileTaken` runs); it goes, and the gateway connects again. The counts
   * before it.
   */
  async function cleanSessionTakeover(
    intake: MqttIntake,
    clientId: string,
    whileTaken: () => void = () => undefined,
  ): Promise<Takeovers> {
    const before = await counted();
    const clean = stray(['-i', clientId, '-q', '1', '-t', 'tools/debug', '-V', 'mqttv5']);
    await until(
      async () => ((await counted()).clean_session > before.clean_session ? true : undefined),
      10_000,
      'the clean-session takeover counted',
    );
    whileTaken();
    await clean.stop();
    await until(() => intake.connected() || undefined, 10_000, 'the gateway connected again');
    return before;
  }

  /**
   * A client that keeps the session takes `clientId`'s once (no Will, the status still `online`,
   * a close that alone shows nothing), and goes; the gateway back, its close judged from the
   * status it read back before subscribing.
   */
  async function takenOnceKeepingSession(intake: MqttIntake, clientId: string): Promise<void> {
    const connections = site.broker.connectionsOf(clientId);
    const keeping = stray(['-i', clientId, '-q', '1', '-t', 'tools/debug', '-V', 'mqttv311', '-c']);
    await until(
      () => (site.broker.connectionsOf(clientId) > connections ? true : undefined),
      10_000,
      "the stray's connection in the broker's log",
    );
    await keeping.stop();
    await until(
      () =>
        site.broker.connectionsOf(clientId) > connections + 1 && intake.connected()
          ? true
          : undefined,
      10_000,
      'the gateway connected after the stray',
    );
  }

  it('says so once with the client id and the count, names it in the readiness reason, and keeps one write per key', async () => {
    const { logger, lines } = recordingLogger();
    const intake = await connectedIntake(5, CLIENT_ID, GATEWAY, logger);
    const issuer = await TestClient.connect(site.broker.url);
    site.cleanups.push(() => issuer.end());

    // The stray tool: a persistent session on the gateway's id (it takes over the gateway's
    // session, subscription and queued commands), printing what it receives; libmosquitto
    // reconnects a second after the broker closes it.
    const printed: string[] = [];
    const tool = stray(
      [
        ...['-V', 'mqttv5'],
        ...['-i', CLIENT_ID, '-c', '-x', '600', '-q', '1', '-t', 'tools/debug', '-v'],
      ],
      printed,
    );

    // Commands published while the link flaps, one at a time: open, close, open… (one lost to
    // the stray tool makes the next a no-op, nothing written).
    const device = site.stack.plant.device('v1');
    const first = device.published.state === 'CLOSED' ? 'open' : 'close';
    const second = first === 'open' ? 'close' : 'open';
    const before = device.counters.writesReceived;
    const keys: string[] = [];
    const suspected = (): Record<string, unknown>[] =>
      lines.filter((l) => String(l.msg).includes(SUSPECTED));
    for (let i = 1; suspected().length === 0; i += 1) {
      if (i > 40)
        throw new Error(
          `no takeover warning after 40 commands: ${JSON.stringify(lines.filter((l) => Number(l.level) >= 30).map((l) => [l.msg, l.connectedForMs, l.err]))}`,
        );
      const key = randomUUID();
      keys.push(key);
      await issuer.publish(
        `${PREFIX}/cmd/v1`,
        timed({ key, action: i % 2 === 1 ? first : second }),
      );
      await new Promise((resolve) => setTimeout(resolve, 150));
    }
    const warning = suspected()[0];
    expect(warning).toMatchObject({ level: 40, clientId: CLIENT_ID });
    expect(warning?.shortConnections).toBeGreaterThanOrEqual(3);
    expect(String(warning?.msg)).toContain(
      `Client ${CLIENT_ID} already connected, closing old connection`,
    );
    // The broker's log says it is the takeover.
    expect(site.broker.log()).toContain(`Client ${CLIENT_ID} already connected, closing old`);
    // Counted: the streak's closes, from the third (sluice_mqtt_session_takeovers_suspected_total).
    expect(await takeoversCounted(site.stack.metrics, 'pattern')).toBeGreaterThanOrEqual(3);

    // While disconnected, the readiness reason (/readyz, sluicectl health) names the cause.
    await until(
      () =>
        !intake.connected() && intake.health().lastError?.includes(SUSPECTED) === true
          ? true
          : undefined,
      10_000,
      'the reason while disconnected',
    );

    // Rate-limited: six more connections of the id (the flapping goes on), still one warning.
    const connections = site.broker.connectionsOf(CLIENT_ID);
    await until(
      () => (site.broker.connectionsOf(CLIENT_ID) >= connections + 6 ? true : undefined),
      20_000,
      'six more connections',
    );
    expect(suspected()).toHaveLength(1);

    // The stray tool goes; the gateway gets its session back and everything left in it.
    await tool.stop();
    await until(() => intake.connected() || undefined, 10_000, 'the gateway connected again');
    const takenByStray = (key: string): boolean => printed.some((l) => l.includes(key));
    await until(
      () =>
        keys.every(
          (key) =>
            takenByStray(key) ||
            site.stack.journal.findByKey(key).some((r) => r.settledAt !== null),
        )
          ? true
          : undefined,
      20_000,
      'every command settled or taken by the stray tool',
    );

    // One write per journaled command that was written, none for the others (I1).
    let written = 0;
    for (const key of keys) {
      const records = site.stack.journal.findByKey(key);
      expect(records.length).toBeLessThanOrEqual(1);
      const seq = records[0]?.seq ?? null;
      if (seq === null) continue;
      written += 1;
      expect(device.writesWithSeq(seq)).toBe(1);
    }
    expect(device.counters.writesReceived - before).toBe(written);
    // A command the gateway never journaled was taken by the stray tool, which acknowledged it
    // (it may also have been handed one the gateway had claimed and not yet acknowledged when
    // it was thrown off: a redelivery, run once).
    const lost = keys.filter((key) => site.stack.journal.findByKey(key).length === 0);
    for (const key of lost) expect(takenByStray(key)).toBe(true);
  }, 90_000);
  /**
   * Over MQTT 3.1.1 only the pattern tells, and each short close is judged once the gateway is
   * back by its retained status (StatusReadback): at a takeover Mosquitto publishes no Will, the
   * status still says `online`, and the close counts (a restart's Will would not).
   */
  it('MQTT 3.1.1: says so too, the status read back still online', async () => {
    const clientId = `${CLIENT_ID}-v4`;
    const { logger, lines } = recordingLogger();
    const intake = await connectedIntake(4, clientId, `${GATEWAY}v4`, logger);
    const tool = stray([
      ...['-V', 'mqttv311'],
      ...['-i', clientId, '-c', '-q', '1', '-t', 'tools/debug'],
    ]);
    await until(
      () => (lines.some((l) => String(l.msg).includes(SUSPECTED)) ? true : undefined),
      20_000,
      'the takeover warning',
    );
    expect(site.broker.log()).toContain(`Client ${clientId} already connected, closing old`);
    expect(saidRestarted(lines)).toEqual([]);
    await tool.stop();
    await intake.stop();
  }, 30_000);

  /**
   * A client that starts a clean session on the gateway's client id (`mosquitto_sub -i <id>`
   * without `-c`): Mosquitto 2.0.11 discards the gateway's session with the takeover and
   * publishes its Will, as a broker that stops does, so the status read back says `offline`
   * and each close was taken for a restart, the takeover never said. What tells them apart is
   * the session: a restarted broker that kept the retained status kept the session too
   * (persistence), and one that lost it lost the status as well; after such a takeover the
   * status says `offline` and the CONNACK says no session is present. Said at once. Over MQTT
   * 3.1.1 and MQTT 5 alike (Mosquitto sends no DISCONNECT 0x8E either way).
   */
  for (const version of [4, 5] as const) {
    it(`MQTT ${version === 4 ? '3.1.1' : '5'}: a takeover by a clean-session client is said at once, not taken for a restart`, async () => {
      const clientId = `${CLIENT_ID}-clean${version}`;
      const { logger, lines } = recordingLogger();
      const intake = await connectedIntake(version, clientId, `${GATEWAY}clean${version}`, logger);
      const connections = site.broker.connectionsOf(clientId);
      const tool = stray([
        ...['-V', version === 4 ? 'mqttv311' : 'mqttv5'],
        ...['-i', clientId, '-q', '1', '-t', 'tools/debug'],
      ]);
      const said = (): Record<string, unknown>[] =>
        lines.filter((l) => String(l.msg).includes('starting a clean session'));
      await until(() => (said().length > 0 ? true : undefined), 10_000, 'the takeover said');
      expect(said()[0]).toMatchObject({ level: 40, clientId });
      // The broker's log: the stray's connection closed the gateway's, and the gateway's next
      // one found no session.
      expect(site.broker.connectionsOf(clientId)).toBeGreaterThanOrEqual(connections + 2);
      expect(site.broker.log()).toContain(`Client ${clientId} already connected, closing old`);
      expect(saidRestarted(lines)).toEqual([]);
      await tool.stop();
      await intake.stop();
    }, 30_000);
  }

  /**
   * sluice_mqtt_session_takeovers_suspected_total{evidence}: in a streak already known for a
   * takeover by a clean-session client, a later short close that shows nothing by itself (no
   * reason, the status as the gateway left it: here a stray `mosquitto_sub -c` that keeps the
   * session) is counted because of that streak, under its evidence. It was counted under
   * `pattern`, which docs/mqtt-api.md defines as three or more such closes in a row, with only two
   * closes in the streak. Ground truth for each takeover: the broker's log (the stray's
   * connection on the gateway's client id, the older one closed).
   */
  it('MQTT 5: a later close in a streak known from a clean session counts under that evidence, not pattern', async () => {
    const clientId = `${CLIENT_ID}-known`;
    const intake = await connectedIntake(5, clientId, `${GATEWAY}known`, recordingLogger().logger);

    // A clean-session client takes the session: counted clean_session, the streak known.
    const before = await cleanSessionTakeover(intake, clientId);
    const known = await counted();
    expect(known.pattern).toBe(before.pattern);

    // Within 30 s, a client that keeps the session takes it once.
    await takenOnceKeepingSession(intake, clientId);
    expect(closedOld(clientId)).toBeGreaterThanOrEqual(2);
    // Counted under the streak's evidence (at least once more: a last flap of the first stray
    // judged late would add one too), never under pattern.
    const after = await counted();
    expect(after.pattern).toBe(known.pattern);
    expect(after.disconnect).toBe(known.disconnect);
    expect(after.clean_session).toBeGreaterThan(known.clean_session);
    await intake.stop();
  }, 30_000);

  /**
   * A streak's evidence ends with the streak. A takeover by a clean-session client (counted
   * clean_session, said at warn), then the broker stopped (an attempt fails: the broker was
   * away) and started again, then one close that shows nothing by itself (no reason, the status
   * as the gateway left it: here a stray `mosquitto_sub -c` that keeps the session, once), which
   * docs/mqtt-api.md counts only from the third in a row (`pattern`). The failed attempt ended
   * the streak's count but not its evidence, so that close was counted under clean_session and
   * taken for a takeover. Ground truth for the closes: the broker's log (the strays' connections
   * on the gateway's client id, the older one closed) and the gateway's failed attempt while the
   * broker was stopped.
   */
  it('MQTT 5: a clean-session takeover streak ends with a broker restart; a later single close is not called a takeover', async () => {
    const clientId = `${CLIENT_ID}-ended`;
    const { logger, lines } = recordingLogger();
    const intake = await connectedIntake(5, clientId, `${GATEWAY}ended`, logger);
    const takeoverSaid = (from: number): Record<string, unknown>[] =>
      lines
        .slice(from)
        .filter((l) => Number(l.level) >= 40 && String(l.msg).includes('another client connect'));

    // A clean-session client takes the session: counted clean_session and said, the streak known.
    await cleanSessionTakeover(intake, clientId, () => {
      expect(takeoverSaid(0).length).toBeGreaterThan(0);
    });

    // The broker stopped until the gateway has found it away (an attempt refused), then started
    // again: the streak ends.
    const failedAttempts = (): number =>
      lines.filter((l) => l.msg === 'MQTT connection attempt failed').length;
    const failed = failedAttempts();
    await site.broker.stop();
    await until(() => (failedAttempts() > failed ? true : undefined), 10_000, 'attempt failed');
    await site.broker.restart();
    await until(() => intake.connected() || undefined, 10_000, 'the gateway connected again');
    const restarted = await counted();
    const from = lines.length;
    const closed = closedOld(clientId);

    // One close that shows nothing by itself: a client that keeps the session takes it once.
    await takenOnceKeepingSession(intake, clientId);
    expect(closedOld(clientId)).toBe(closed + 1);
    expect(await counted()).toEqual(restarted);
    expect(takeoverSaid(from)).toEqual([]);
    await intake.stop();
  }, 30_000);
  /**
   * MQTT 5 lets a broker say it: DISCONNECT with reason 0x8E Session taken over before it closes
   * the older connection. Mosquitto 2.0.11 does not send it (measured: it closes the socket
   * without a DISCONNECT, over MQTT 5 as over 3.1.1), so a few bytes stand in for a broker that
   * does: each CONNECT answered with a CONNACK, then that DISCONNECT, then the socket closed.
   */
  it('says so plainly at the first one, with the client id, and names it as the reason', async () => {
    const server = createServer((socket) => {
      let buffered = Buffer.alloc(0);
      socket.on('data', (chunk: Buffer) => {
        buffered = Buffer.concat([buffered, chunk]);
        for (;;) {
          const packet = nextPacket(buffered);
          if (packet === null) return;
          buffered = buffered.subarray(packet.length);
          const type = packet.first >> 4;
          if (type === 1) {
            // CONNECT: CONNACK (MQTT 5: no session present, reason 0, no properties); a moment
            // later, as another client's CONNECT would come, DISCONNECT 0x8E and the socket
            // closed.
            socket.write(Buffer.from([0x20, 0x03, 0x00, 0x00, 0x00]));
            setTimeout(() => socket.end(Buffer.from([0xe0, 0x02, 0x8e, 0x00])), 100);
          } else if (type === 3 && ((packet.first >> 1) & 3) === 1) {
            // A QoS 1 PUBLISH (the `online`): PUBACK it, or mqtt.js, which sends it again on
            // the next connection and takes that connection as up only once it is
            // acknowledged, would never say it connected again.
            const topicLength = packet.body.readUInt16BE(0);
            const id = packet.body.subarray(2 + topicLength, 4 + topicLength);
            socket.write(Buffer.concat([Buffer.from([0x40, 0x02]), id]));
          }
        }
      });
      socket.on('error', () => undefined);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const address = server.address();
    const port = typeof address === 'object' && address !== null ? address.port : 0;
    const { logger, lines } = recordingLogger();
    const intake = new MqttIntake({
      config: intakeConfig(`mqtt://127.0.0.1:${port}`, { protocolVersion: 5, clientId: CLIENT_ID }),
      gatewayId: GATEWAY,
      pipeline: site.stack.pipeline,
      identities: site.stack.identities,
      metrics: site.stack.metrics,
      logger,
      reconnect: { minMs: 100, maxMs: 200 },
      retentionHours: 48,
    });
    try {
      intake.start();
      const takenOver = (): Record<string, unknown>[] =>
        lines.filter((l) => String(l.msg).includes('DISCONNECT 0x8E Session taken over'));
      await until(() => (takenOver().length > 0 ? true : undefined), 10_000, 'the 0x8E said');
      expect(takenOver()[0]).toMatchObject({ level: 40, clientId: CLIENT_ID, shortConnections: 1 });
      expect(String(takenOver()[0]?.msg)).toContain('another client connected with this client id');
      const disconnected = lines.find((l) => l.msg === 'disconnected from the MQTT broker');
      expect(disconnected).toMatchObject({ reasonCode: '0x8e' });
      expect(intake.health().lastError).toContain('DISCONNECT 0x8E Session taken over');
      expect(await takeoversCounted(site.stack.metrics, 'disconnect')).toBeGreaterThanOrEqual(1);
      // Three more connections taken over: still said once.
      const more = (): number =>
        lines.filter((l) => l.msg === 'disconnected from the MQTT broker').length;
      await until(() => (more() >= 4 ? true : undefined), 10_000, 'three more');
      expect(takenOver()).toHaveLength(1);
    } finally {
      await intake.stop();
      await new Promise((resolve) => server.close(resolve));
    }
  });
});

/** The first MQTT packet in `bytes` (fixed header, remaining length, body), or null if partial. */
function nextPacket(
  bytes: Buffer,
): { readonly first: number; readonly body: Buffer; readonly length: number } | null {
  if (bytes.length < 2) return null;
  let remaining = 0;
  let multiplier = 1;
  let offset = 1;
  for (;;) {
    const byte = bytes[offset];
    if (byte === undefined) return null;
    remaining += (byte & 0x7f) * multiplier;
    multiplier *= 128;
    offset += 1;
    if ((byte & 0x80) === 0) break;
  }
  const length = offset + remaining;
  if (bytes.length < length) return null;
  return { first: bytes[0] ?? 0, body: bytes.subarray(offset, length), length };
}

/** sluice_mqtt_session_takeovers_suspected_total's counts by evidence. */
type Takeovers = Record<'clean_session' | 'pattern' | 'disconnect', number>;

/** What the gateway logged of a broker restart: it should have logged nothing. */
function saidRestarted(lines: readonly Record<string, unknown>[]): Record<string, unknown>[] {
  return lines.filter((l) => String(l.msg).startsWith('the MQTT broker was restarted'));
}

/** sluice_mqtt_session_takeovers_suspected_total{evidence} as the stack's metrics hold it. */
async function takeoversCounted(
  metrics: { readonly mqttTakeoversSuspected: Counter<'evidence'> },
  evidence: string,
): Promise<number> {
  const { values } = await metrics.mqttTakeoversSuspected.get();
  return values.find((v) => v.labels.evidence === evidence)?.value ?? 0;
}
