import { readFileSync } from 'node:fs';
import type { IClientOptions } from 'mqtt';
import type { SluiceConfig } from '../config/config.js';

export type MqttConfig = NonNullable<SluiceConfig['mqtt']>;

/**
 * MQTT 5 Maximum Packet Size, told the broker on connect: it must not send the gateway a larger
 * packet (it drops such a message for this client, unanswered). A command is at most 16 KiB
 * (mqtt-message.ts), and a larger one up to this size is still read and answered
 * INVALID_COMMAND; past it the broker, not the gateway, holds the bytes. Without it the broker
 * would deliver up to MQTT's 256 MiB, and the gateway would hold every byte in memory before
 * refusing it. MQTT 3.1.1 has no such property.
 */
export const MAX_PACKET_BYTES = 2 * 1024 * 1024;

/**
 * The MQTT client's options, from which mqtt.js builds each CONNECT (and its parser and
 * publications) at every connection: made from the configuration once, and changed in place by
 * a reload (setTlsFiles, the password) and by the fallback to MQTT 3.1.1 (MqttSession.fallBack).
 */
export function buildClientOptions(o: {
  readonly config: MqttConfig;
  readonly gatewayId: string;
  readonly level: 4 | 5;
  readonly reconnectMinMs: number;
  readonly statusTopic: string;
}): IClientOptions {
  const c = o.config;
  const options: IClientOptions = {
    clientId: c.clientId ?? `sluice-${o.gatewayId}`,
    // A persistent session: the broker keeps the subscription and queues commands while
    // the gateway is away, and redelivers those it sent but never saw acknowledged.
    clean: false,
    protocolVersion: o.level,
    keepalive: c.keepaliveS,
    // Replaced before every reconnection by MqttSession.onClose (jittered, growing).
    reconnectPeriod: o.reconnectMinMs,
    connectTimeout: 10_000,
    // Bad credentials may be fixed on the broker: keep trying, with backoff.
    reconnectOnConnackError: true,
    // MqttSession.onConnect subscribes at every connection (see there), not mqtt.js.
    resubscribe: false,
    will: { topic: o.statusTopic, payload: Buffer.from('offline'), qos: 1, retain: true },
  };
  if (o.level === 5) {
    options.properties = {
      sessionExpiryInterval: c.sessionExpiryS,
      maximumPacketSize: MAX_PACKET_BYTES,
      // Without it the broker's own window bounds the command messages whose PUBACKs wait for
      // the journal (mqtt-acks.ts): 20 in Mosquitto, unbounded in a broker set so.
      receiveMaximum: c.receiveMaximum,
    };
  }
  if (c.username !== undefined) options.username = c.username;
  if (c.passwordFile !== undefined) {
    const password = readFileSync(c.passwordFile, 'utf8').trim();
    if (password.length === 0) throw new Error(`mqtt.passwordFile: ${c.passwordFile} is empty`);
    options.password = password;
  }
  if (c.caFile !== undefined) options.ca = readFileSync(c.caFile);
  if (c.certFile !== undefined) options.cert = readFileSync(c.certFile);
  if (c.keyFile !== undefined) options.key = readFileSync(c.keyFile);
  return options;
}

/** TLS files (PEM text, checked by the caller: src/config/preflight.ts); undefined: unchanged. */
export interface TlsFiles {
  readonly ca: string | undefined;
  readonly cert: string | undefined;
  readonly key: string | undefined;
}

/**
 * Sets `files` in `options`, for the connections made from them from now on. Over `wss://`
 * MQTT.js copies `ca`, `cert` and `key` into `options.wsOptions` at the first connection and
 * makes every later one from that copy (mqtt/build/lib/connect/ws.js): set there too. Until
 * 2026-12-07 only `options` was set, and over `wss://` a reload was logged done while every
 * connection went on with the files of the start.
 */
export function setTlsFiles(options: IClientOptions, files: TlsFiles): void {
  const ws = options.wsOptions as Record<string, unknown> | undefined;
  for (const target of ws === undefined ? [options] : [options, ws]) {
    if (files.ca !== undefined) target.ca = files.ca;
    if (files.cert !== undefined) target.cert = files.cert;
    if (files.key !== undefined) target.key = files.key;
  }
}
