import type { IPublishPacket } from 'mqtt';
import type { Logger } from '../core/logger.js';
import type { GatewayTopics } from './mqtt-topics.js';

/** What the sweep needs of the session: the retained messages of a filter, read once. */
export interface RetainedReader {
  readRetained(filter: string): Promise<'read' | 'refused' | 'lost'>;
}

/** What the sweep needs of the publisher. */
export interface StateClearer {
  clearState(device: string): void;
}

export interface RetainedStateSweepOptions {
  readonly topics: GatewayTopics;
  readonly reader: RetainedReader;
  readonly clearer: StateClearer;
  /** Whether the site configures a device (the pipeline's devices). */
  readonly configured: (device: string) => boolean;
  readonly logger: Logger;
}

/** The longest part of a device name, and of a topic, that is logged. */
const LOGGED_DEVICE_CHARS = 256;
const LOGGED_TOPIC_CHARS = 512;

/**
 * The retained state of devices the site no longer configures. `{prefix}/state/{device}` is
 * retained (SPEC §5): the broker keeps the last one until it is replaced, so a valve removed from
 * the site would go on showing, to every dashboard that subscribes, the state it had when Sluice
 * last drove it, as if it still did. Once per run, at a connection, the retained messages of
 * `{prefix}/state/+` are read and those of devices not configured are cleared (an empty retained
 * message, MQTT 5 §3.3.1.3), each logged. Only this gateway's state topics are read, so another
 * gateway's are never touched.
 */
export class RetainedStateSweep {
  private readonly topics: GatewayTopics;
  private readonly reader: RetainedReader;
  private readonly clearer: StateClearer;
  private readonly configured: (device: string) => boolean;
  private readonly logger: Logger;
  private swept = false;
  private reading = false;

  constructor(options: RetainedStateSweepOptions) {
    this.topics = options.topics;
    this.reader = options.reader;
    this.clearer = options.clearer;
    this.configured = options.configured;
    this.logger = options.logger;
  }

  /** A connection is up: reads the state topics, until one reading is complete. */
  connected(): void {
    if (this.swept || this.reading) return;
    this.reading = true;
    void this.reader.readRetained(this.topics.stateFilter).then((outcome) => {
      this.reading = false;
      switch (outcome) {
        case 'read':
          this.swept = true;
          return;
        case 'refused':
          // Not retried: an ACL that allows publishing state but not reading it stays so.
          this.swept = true;
          this.logger.warn(
            { topic: this.topics.stateFilter },
            'the broker refused a subscription to the state topics: the retained state of devices no longer configured, if any, is not cleared',
          );
          return;
        case 'lost':
          // The connection ended first: the next one reads again.
          return;
      }
    });
  }

  /**
   * A message on a state topic of this gateway: the retained ones the reading brings (an MQTT
   * 3.1.1 broker also sends the gateway's own state publications back, without the retain flag).
   */
  receive(packet: IPublishPacket): void {
    if (!packet.retain || packet.payload.length === 0) return;
    const device = this.topics.stateDevice(packet.topic);
    if (device === null || this.configured(device)) return;
    this.clearer.clearState(device);
    this.logger.info(
      {
        device: device.slice(0, LOGGED_DEVICE_CHARS),
        topic: packet.topic.slice(0, LOGGED_TOPIC_CHARS),
      },
      'retained state of a device no longer configured: cleared',
    );
  }
}
