import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { connectAsync, type IClientOptions, type MqttClient } from 'mqtt';
import { withoutPassword } from '../config/config.js';
import { CliError, messageOf } from './errors.js';
import { isResultDocument } from './result-view.js';
import { refused, retryHint, type Delivery, type SendTarget } from './send-common.js';
import { readConfiguredFile } from './unit-environment.js';

/**
 * `send --via mqtt` (docs/mqtt-api.md): subscribe to the device's result topic, publish the
 * command with QoS 1 and its `issuedAt` — or, for a rerun of a key first timed by the gateway's
 * receipt, a Message Expiry Interval (untimed MQTT commands are refused, SPEC §5) — and wait
 * for the result — or the replay, or the error document — that carries this key.
 */

/** CONNACK refusals meaning "not this protocol version" (as the intake reads them). */
const PROTOCOL_REFUSALS = new Set([0x01, 0x84]);

function clientOptions(target: SendTarget, version: 4 | 5): IClientOptions {
  const mqtt = target.config.mqtt;
  if (mqtt === undefined) throw new CliError('--via mqtt: the configuration has no mqtt section');
  const { options } = target;
  const read = (file: string, what: string): Buffer => {
    try {
      return readFileSync(file);
    } catch (error) {
      throw new CliError(`cannot read ${what} ${file}: ${messageOf(error)}`);
    }
  };
  return {
    protocolVersion: version,
    clientId: `sluicectl-${hostname().slice(0, 32)}-${randomBytes(4).toString('hex')}`,
    clean: true,
    reconnectPeriod: 0,
    connectTimeout: 5_000,
    ...(options.mqttUsername === undefined ? {} : { username: options.mqttUsername }),
    ...(options.mqttPasswordFile === undefined
      ? {}
      : {
          password: read(options.mqttPasswordFile, '--mqtt-password-file').toString('utf8').trim(),
        }),
    // Under ${CREDENTIALS_DIRECTORY} on an installed gateway: read where the unit takes it from.
    ...(mqtt.caFile === undefined ? {} : { ca: readConfiguredFile(mqtt.caFile, 'mqtt.caFile') }),
    // Its own certificate, not the daemon's (mqtt.certFile): the broker tells the operator's
    // tool from the gateway, as --mqtt-username does for a password login.
    ...(options.mqttCert === undefined || options.mqttKey === undefined
      ? {}
      : { cert: read(options.mqttCert, '--mqtt-cert'), key: read(options.mqttKey, '--mqtt-key') }),
  };
}

async function connect(target: SendTarget): Promise<MqttClient> {
  const url = target.config.mqtt?.url ?? '';
  // Its files read before any connection: one that cannot be read is not the broker's refusal.
  const options = clientOptions(target, 5);
  try {
    return await connectAsync(url, options);
  } catch (error) {
    const code = (error as { code?: unknown }).code;
    if (typeof code === 'number' && PROTOCOL_REFUSALS.has(code)) {
      // A 3.1.1-only broker (the demo's embedded one): the command needs nothing of MQTT 5.
      try {
        return await connectAsync(url, { ...options, protocolVersion: 4 });
      } catch (again) {
        throw new CliError(
          `cannot connect to the MQTT broker ${withoutPassword(url)}: ${messageOf(again)}`,
        );
      }
    }
    throw new CliError(
      `cannot connect to the MQTT broker ${withoutPassword(url)}: ${messageOf(error)}`,
    );
  }
}

export async function sendMqtt(target: SendTarget): Promise<Delivery> {
  const { config, key, command, options, ctx } = target;
  const mqtt = config.mqtt;
  if (mqtt === undefined) throw new CliError('--via mqtt: the configuration has no mqtt section');
  const prefix = `${mqtt.topicRoot}/${config.gatewayId}`;
  const resultTopic = `${prefix}/result/${command.device}`;
  const statusTopic = `${prefix}/status`;
  const client = await connect(target);
  // Until the broker has acknowledged the command, the connection is ended without waiting for
  // that acknowledgement (mqtt.js would wait for it for ever).
  let acked = false;
  let timer: NodeJS.Timeout | undefined;
  try {
    const expiry = target.messageExpiryS;
    if (expiry !== undefined && client.options.protocolVersion !== 5) {
      // Without issuedAt and without an expiry the intake refuses the command as untimed.
      throw new CliError(
        `key ${key} was first sent without issuedAt (timed by the gateway's receipt), and the broker speaks MQTT 3.1.1, which has no message expiry to time it instead: send it again over https (--via https), or with a new key`,
      );
    }
    // Everything after the connection is bounded by --wait and ends with the connection: a
    // broker that stalls (no SUBACK or PUBACK) or goes away must neither hold sluicectl past
    // --wait nor end it without a word (mqtt.js neither fails nor retries what was in flight on
    // a connection it does not reconnect, and the process would exit with nothing pending).
    const link: { why: string | null } = { why: null };
    /** `the connection closed (read ECONNRESET)`: what closed it, when mqtt.js said. */
    const closed = (what: string): string => `${what}${link.why === null ? '' : ` (${link.why})`}`;
    const lost = new Promise<{ kind: 'lost' }>((resolve) => {
      client.on('error', (error) => {
        link.why ??= messageOf(error);
      });
      client.once('close', () => {
        resolve({ kind: 'lost' });
      });
    });
    const timeUp = new Promise<{ kind: 'time' }>((resolve) => {
      timer = setTimeout(() => {
        resolve({ kind: 'time' });
      }, options.waitMs);
    });
    let warned = false;
    const answer = new Promise<{ kind: 'answer'; doc: Record<string, unknown> }>((resolve) => {
      client.on('message', (topic, payload) => {
        const text = payload.toString('utf8');
        if (topic === statusTopic) {
          if (text === 'offline' && !warned) {
            warned = true;
            ctx.warn(
              `sluiced is offline (${statusTopic}): the command waits at the broker until it is back or its deadline passes`,
            );
          }
          return;
        }
        if (topic !== resultTopic) return;
        try {
          const doc = JSON.parse(text) as unknown;
          if (typeof doc === 'object' && doc !== null && (doc as { key?: unknown }).key === key) {
            resolve({ kind: 'answer', doc: doc as Record<string, unknown> });
          }
        } catch {
          // Not JSON: not an answer to this command.
        }
      });
    });
    // As the broker is shown everywhere: a password in it as *** (the configuration refuses
    // such a URL; the terminal would keep it).
    const broker = withoutPassword(mqtt.url);
    // Subscribed before the command goes out: results are not retained.
    const subscribed = await Promise.race([
      client.subscribeAsync([resultTopic, statusTopic], { qos: 1 }).then(
        () => ({ kind: 'subscribed' as const }),
        (error: unknown) => ({ kind: 'failed' as const, error }),
      ),
      lost,
      timeUp,
    ]);
    if (subscribed.kind !== 'subscribed') {
      const failure =
        subscribed.kind === 'failed'
          ? messageOf(subscribed.error)
          : subscribed.kind === 'lost'
            ? closed('the connection closed')
            : `no SUBACK within ${options.waitMs} ms`;
      throw new CliError(
        `cannot subscribe to ${resultTopic} at the MQTT broker ${broker} (${failure}); nothing was sent`,
      );
    }
    // The topic names the device; the payload carries the key (MQTT 3.1.1 has no user properties).
    const payload = {
      key,
      action: command.action,
      ...(command.position === undefined ? {} : { position: command.position }),
      ...(command.issuedAt === undefined ? {} : { issuedAt: command.issuedAt }),
      ...(command.ttlMs === undefined ? {} : { ttlMs: command.ttlMs }),
    };
    const published = client
      .publishAsync(`${prefix}/cmd/${command.device}`, JSON.stringify(payload), {
        qos: 1,
        ...(expiry === undefined ? {} : { properties: { messageExpiryInterval: expiry } }),
      })
      .then(
        () => ({ kind: 'acked' as const }),
        (error: unknown) => ({ kind: 'refused' as const, error }),
      );
    // The result may come before the PUBACK (one lost or late on the way back): it answers.
    const first = await Promise.race([published, answer, lost, timeUp]);
    if (first.kind === 'refused') {
      // A PUBACK with an error reason code (MQTT 5): the broker did not take the command.
      const code = (first.error as { code?: unknown }).code;
      if (typeof code === 'number') {
        throw new CliError(
          `the MQTT broker ${broker} refused the command (${messageOf(first.error)}); it did not reach the daemon`,
        );
      }
    }
    if (first.kind === 'refused' || first.kind === 'lost' || first.kind === 'time') {
      const failure =
        first.kind === 'refused'
          ? messageOf(first.error)
          : first.kind === 'lost'
            ? closed('the connection to the broker was lost')
            : `no PUBACK from the broker within ${options.waitMs} ms`;
      return {
        result: null,
        replayed: false,
        httpStatus: null,
        note:
          `${failure}, after the command was published to ${broker}: whether it reached the daemon is unknown ` +
          `(it may be journaled, and the valve may move); ${retryHint(target)}`,
        lost: true,
      };
    }
    if (first.kind === 'acked') acked = true;
    const settled = first.kind === 'answer' ? first : await Promise.race([answer, lost, timeUp]);
    if (settled.kind === 'time') {
      return {
        result: null,
        replayed: false,
        httpStatus: null,
        note: 'no result on the result topic; the broker took the command (PUBACK) and the daemon answers when it is terminal',
      };
    }
    if (settled.kind === 'lost') {
      return {
        result: null,
        replayed: false,
        httpStatus: null,
        note:
          `${closed('the connection to the broker was lost while waiting for the result')}; ` +
          `the broker took the command (PUBACK) and the daemon settles it on its own; ${retryHint(target)}`,
        lost: true,
      };
    }
    const doc = settled.doc;
    if (!isResultDocument(doc)) {
      const code = typeof doc.code === 'string' ? doc.code : 'ERROR';
      const detail = typeof doc.detail === 'string' ? doc.detail : JSON.stringify(doc);
      throw refused(code, detail, target, null);
    }
    return { result: doc, replayed: doc.replayed === true, httpStatus: null, note: null };
  } finally {
    clearTimeout(timer);
    await client.endAsync(!acked).catch(() => undefined);
  }
}
