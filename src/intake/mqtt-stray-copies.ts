import { createHash } from 'node:crypto';

/** Copies delivered by the command subscription remembered, at most (StrayCopies.ours). */
const MAX_OURS = 1_000;
/** Stray copies awaiting their sibling, at most: past it the oldest is answered at once. */
const MAX_AWAITING = 1_000;

/**
 * Why a stray copy is answered: its sibling did not come within the wait, or the connection's
 * probe found that the broker delivers no Subscription Identifiers at all (mqtt-identifier-probe.ts),
 * which made the command subscription's own copy look like a stray one.
 */
export type StrayAnswerReason = 'no_sibling' | 'identifiers_missing';

/** How long a stray copy waits for the command subscription's copy of it, by default. */
export const STRAY_COPY_WAIT_MS = 5_000;

/**
 * Copies of command messages that another subscription of the gateway's persistent session
 * delivered — over MQTT 5, a message without the command subscription's Subscription
 * Identifier (one another client with this client id left beside the command filter,
 * `sluice/gw-1/cmd/#`, `sluice/+/cmd/+`, or a shared subscription). Such a copy is never run:
 * its subscription's options are not the gateway's, and one made without Retain As Published
 * (MQTT 5 §3.8.3.1; mosquitto_sub's default) clears the retain flag of a command published
 * retained (§3.3.1.3), which would then run as a fresh one (SPEC §5: a retained command is
 * refused). The broker sends the command subscription's own copy beside it (Mosquitto: one per
 * matching subscription, one after the other), and that copy is handled as usual. Only when no
 * such sibling comes within `waitMs` — a message queued for the session while its command
 * subscription had no identifier (replaced by another client's identical filter, or queued
 * before the identifier was used) — is the stray copy answered, as not run, so that its issuer
 * is not left waiting. Copies are told apart by topic and payload.
 */
export class StrayCopies {
  /** Copies the command subscription delivered, by topic and payload digest, oldest first. */
  private readonly seen = new Set<string>();
  /** Stray copies awaiting their sibling: the answer to give, and its timer. */
  private readonly awaiting = new Map<
    string,
    { answer: (why: StrayAnswerReason) => void; timer: NodeJS.Timeout }
  >();

  constructor(private readonly waitMs: number = STRAY_COPY_WAIT_MS) {}

  /** A copy the command subscription delivered: a stray copy of it is not answered. */
  ours(topic: string, payload: Buffer): void {
    const id = copyId(topic, payload);
    const pending = this.awaiting.get(id);
    if (pending !== undefined) {
      clearTimeout(pending.timer);
      this.awaiting.delete(id);
    }
    this.seen.delete(id);
    this.seen.add(id);
    for (const oldest of this.seen) {
      if (this.seen.size <= MAX_OURS) break;
      this.seen.delete(oldest);
    }
  }

  /**
   * A stray copy, never run: `answer` is called once `waitMs` has passed without the command
   * subscription's copy of it. Returns whether that copy came already (nothing to answer), or
   * the stray copy now awaits it (`awaiting`; a second stray copy of a message awaiting is
   * `awaiting` too, answered once).
   */
  stray(
    topic: string,
    payload: Buffer,
    answer: (why: StrayAnswerReason) => void,
  ): 'sibling_seen' | 'awaiting' {
    const id = copyId(topic, payload);
    if (this.seen.has(id)) return 'sibling_seen';
    if (this.awaiting.has(id)) return 'awaiting';
    const timer = setTimeout(() => {
      this.awaiting.delete(id);
      answer('no_sibling');
    }, this.waitMs);
    timer.unref();
    this.awaiting.set(id, { answer, timer });
    for (const [oldest, pending] of this.awaiting) {
      if (this.awaiting.size <= MAX_AWAITING) break;
      clearTimeout(pending.timer);
      this.awaiting.delete(oldest);
      pending.answer('no_sibling');
    }
    return 'awaiting';
  }

  /**
   * The broker was found to deliver no Subscription Identifiers: the copies awaiting a sibling
   * were the command subscription's own, acknowledged and not run (I5: a command is journaled
   * before its PUBACK, so it cannot be run now). Answered at once, so that their issuers
   * publish them again, rather than after the wait.
   */
  answerAll(): void {
    const pending = [...this.awaiting.values()];
    this.awaiting.clear();
    for (const { answer, timer } of pending) {
      clearTimeout(timer);
      answer('identifiers_missing');
    }
  }

  /**
   * The intake stops taking commands: a sibling withheld now comes at the next start, so the
   * stray copies awaiting one are not answered (as not run) meanwhile.
   */
  stop(): void {
    for (const pending of this.awaiting.values()) clearTimeout(pending.timer);
    this.awaiting.clear();
  }
}

function copyId(topic: string, payload: Buffer): string {
  return `${topic}\u0000${createHash('sha256').update(payload).digest('hex')}`;
}
