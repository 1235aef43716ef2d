import { closeSync, fsyncSync, openSync, readFileSync, renameSync, writeSync } from 'node:fs';
import type { IPublishPacket } from 'mqtt';
import type { Logger } from '../core/logger.js';
import type { RetainedReader } from './mqtt-retained-state.js';
import type { GatewayTopics } from './mqtt-topics.js';

/** What the sweep needs of the publisher: an empty retained message, and whether it was taken. */
export interface RetainedClearer {
  /** Resolves true once the broker acknowledged it, false when it was not sent or not taken. */
  clearRetained(topic: string): Promise<boolean>;
}

export interface FormerRootSweepOptions {
  readonly topics: GatewayTopics;
  readonly reader: RetainedReader;
  readonly clearer: RetainedClearer;
  /**
   * The file, in the state folder, that lists the topic roots this gateway has published its
   * retained topics under and not yet cleared.
   */
  readonly path: string;
  readonly logger: Logger;
}

/** The record's content: one gateway id, and its roots that may hold retained topics. */
interface RootsRecord {
  readonly gatewayId: string;
  readonly topicRoots: readonly string[];
}

/** One former root being read: the retained topics it brought, each being cleared. */
interface Reading {
  readonly root: string;
  readonly stateFilter: string;
  readonly statePrefix: string;
  readonly status: string;
  readonly clears: Promise<boolean>[];
}

/** The longest part of a topic that is logged. */
const LOGGED_TOPIC_CHARS = 512;

/**
 * The retained topics a gateway left under a topic root the site no longer uses. After
 * `mqtt.topicRoot` changes, `{old root}/{gatewayId}/state/{device}` and `{old root}/{gatewayId}
 * /status` stay retained on the broker: a plant system still subscribed there would be shown,
 * forever, the state of valves as Sluice last drove them and the gateway `offline` (or
 * `online`), as if it were current. MQTT cannot list retained topics, and nothing on the broker
 * says which roots a gateway used, so the gateway writes them down: a small file in its state
 * folder lists the roots it may have retained topics under, the current one added before
 * anything is published there. At a connection, every other root in it is read as the retained
 * state of removed devices is (mqtt-retained-state.ts): the retained messages of
 * `{root}/{gatewayId}/state/+` and `{root}/{gatewayId}/status` are cleared (an empty retained
 * message, MQTT 5 §3.3.1.3), and once the broker has acknowledged every clearing, the root is
 * struck from the file. Only those topics of this gateway id: another gateway's, and deeper
 * topics under `state/`, are never touched. A root whose reading the broker refuses (an ACL) is
 * logged and struck; one whose connection ends first is read again on the next.
 */
export class FormerRootSweep {
  private readonly topics: GatewayTopics;
  private readonly reader: RetainedReader;
  private readonly clearer: RetainedClearer;
  private readonly path: string;
  private readonly logger: Logger;
  /** The roots in the record, the current one included. */
  private recorded: string[] = [];
  private reading: Reading | null = null;
  private sweeping = false;

  constructor(options: FormerRootSweepOptions) {
    this.topics = options.topics;
    this.reader = options.reader;
    this.clearer = options.clearer;
    this.path = options.path;
    this.logger = options.logger;
  }

  /**
   * Reads the record and adds the current root to it, before the session connects: the root
   * is on disk before the first retained message is published under it.
   */
  start(): void {
    const record = this.read();
    const roots =
      record === null || record.gatewayId !== this.topics.gatewayId ? [] : [...record.topicRoots];
    if (!roots.includes(this.topics.root)) {
      roots.push(this.topics.root);
      this.recorded = roots;
      this.write();
    } else {
      this.recorded = roots;
    }
  }

  /** A connection is up: reads and clears the former roots, one after another. */
  connected(): void {
    if (this.sweeping) return;
    this.sweeping = true;
    void this.sweep().finally(() => {
      this.sweeping = false;
    });
  }

  /**
   * A message from the broker: true when it is one the reading of a former root brought (it is
   * then done with), false for any other.
   */
  receive(packet: IPublishPacket): boolean {
    const reading = this.reading;
    if (reading === null) return false;
    const topic = packet.topic;
    const isState =
      topic.startsWith(reading.statePrefix) &&
      topic.length > reading.statePrefix.length &&
      !topic.slice(reading.statePrefix.length).includes('/');
    if (!isState && topic !== reading.status) return false;
    // An empty one is a clearing (ours, sent back by an MQTT 3.1.1 broker), and a message
    // without the retain flag a live publication, not what the root kept.
    if (packet.retain && packet.payload.length > 0) {
      reading.clears.push(this.clearer.clearRetained(topic));
      this.logger.info(
        { topic: topic.slice(0, LOGGED_TOPIC_CHARS), root: reading.root },
        'retained topic under a topic root this gateway no longer uses: cleared',
      );
    }
    return true;
  }

  private async sweep(): Promise<void> {
    for (const root of this.recorded.filter((r) => r !== this.topics.root)) {
      const prefix = `${root}/${this.topics.gatewayId}`;
      const reading: Reading = {
        root,
        stateFilter: `${prefix}/state/+`,
        statePrefix: `${prefix}/state/`,
        status: `${prefix}/status`,
        clears: [],
      };
      this.reading = reading;
      let outcome: 'read' | 'refused' | 'lost';
      try {
        outcome = await this.reader.readRetained(reading.stateFilter);
        if (outcome !== 'lost') {
          const status = await this.reader.readRetained(reading.status);
          if (status !== 'read') outcome = status;
        }
      } finally {
        this.reading = null;
      }
      if (outcome === 'lost') return;
      const taken = await Promise.all(reading.clears);
      // A clearing not taken (the connection ended first) is made again on the next one.
      if (taken.includes(false)) return;
      if (outcome === 'refused') {
        // Not retried: an ACL that forbids reading there stays so.
        this.logger.warn(
          { root, filters: [reading.stateFilter, reading.status] },
          'the broker refused a subscription to the retained topics under a topic root this gateway no longer uses: they are not cleared',
        );
      }
      this.recorded = this.recorded.filter((r) => r !== root);
      this.write();
    }
  }

  private read(): RootsRecord | null {
    let text: string;
    try {
      text = readFileSync(this.path, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') {
        this.logger.warn(
          { err: error, path: this.path },
          'the record of former MQTT topic roots cannot be read: their retained topics are not cleared',
        );
      }
      return null;
    }
    try {
      const value = JSON.parse(text) as Partial<RootsRecord>;
      if (
        typeof value.gatewayId === 'string' &&
        Array.isArray(value.topicRoots) &&
        value.topicRoots.every((root) => typeof root === 'string' && root.length > 0)
      ) {
        return { gatewayId: value.gatewayId, topicRoots: value.topicRoots };
      }
    } catch {
      // Reported below, as any other content that is not a record.
    }
    this.logger.warn(
      { path: this.path },
      'the record of former MQTT topic roots is not one: it is written anew, and the retained topics of roots it named are not cleared',
    );
    return null;
  }

  /** Replaces the record: written whole to a temporary file, synced, renamed over it. */
  private write(): void {
    const record: RootsRecord = { gatewayId: this.topics.gatewayId, topicRoots: this.recorded };
    const temporary = `${this.path}.tmp`;
    try {
      const fd = openSync(temporary, 'w', 0o600);
      try {
        writeSync(fd, `${JSON.stringify(record)}\n`);
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
      renameSync(temporary, this.path);
    } catch (error) {
      // Housekeeping of the broker's retained topics: commands do not depend on it.
      this.logger.warn(
        { err: error, path: this.path },
        'the record of MQTT topic roots cannot be written: retained topics under a root given up later may stay on the broker',
      );
    }
  }
}
