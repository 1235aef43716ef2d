import type { ProfileTiming } from './profile.js';
import { STAMP_QUANTUM_MS, type SkewEstimate } from './skew.js';

/** The shortest pause before reading a late scan's image again (setTimeout's resolution). */
const MIN_RETRY_MS = 1;

/**
 * Reads at most, back to back, while a scan's window is open and the image is still the old
 * one: each waits for the controller's round trip, so they follow the scan closely without a
 * timer, and a round trip that is very short (a controller next door) cannot make them many.
 */
const WINDOW_READS = 4;

/**
 * When to read back next, after a write (issue 14, SPEC §6).
 *
 * A controller publishes a new image once per scan: a readback requested before the next image
 * is produced can only repeat the last one. When the readbacks carry the image's source time
 * and the controller's skew is known, the next scan is known to come within a window: the image
 * time plus one scan, give or take a margin for the whole millisecond the controller stamps and
 * for how closely its stamps are placed on the gateway's clock (the skew's `stamp`, which several
 * clock readings narrow). The next readback is timed for the middle of that window; while the
 * window is open and a readback still shows the old image, the next one is requested as soon as
 * it returns (at most `WINDOW_READS` of them), so that the scan is seen within a round trip of
 * coming rather than after the window's end and the timer's whole millisecond. A scan that has
 * not come by the window's end is late: it is looked for again shortly, then less and less often.
 * Without an image time or a skew the readbacks come one scan apart, as the profile's
 * `timing.scanMs` says.
 *
 * Either way the quick pace lasts eight scans, long enough for a command that needs no travel
 * and for short travel; then the pauses double up to `timing.pollIntervalMs` for travel that
 * takes longer. Only when to read changes here: what a readback proves is judged elsewhere
 * (readback.ts), so a misplaced readback costs time or a read, never correctness.
 */
export class ReadbackPacer {
  private readonly scanMs: number;
  private readonly pollIntervalMs: number;
  private readonly quick: number;
  private readonly quickUntil: number;
  private pause: number;
  private lastSourceTime: number | null = null;
  /** Readbacks in a row that showed the same image after its successor's window closed. */
  private repeats = 0;
  /** The window in which the next scan comes: its end, and the reads made in it back to back. */
  private window: { readonly end: number; reads: number } | null = null;

  constructor(timing: Pick<ProfileTiming, 'scanMs' | 'pollIntervalMs'>, startMono: number) {
    this.scanMs = timing.scanMs;
    this.pollIntervalMs = timing.pollIntervalMs;
    this.quick = Math.min(timing.scanMs, timing.pollIntervalMs);
    this.quickUntil = startMono + 8 * this.quick;
    this.pause = this.quick;
  }

  /**
   * The pause before the first readback after a write sent at `writeSentMono`. `before` is the
   * image the command was checked against, when its time is known: the controller takes the
   * write at its first scan after the write arrived, so reading sooner than that scan shows
   * nothing new. Without it, the first readback follows at once.
   */
  first(
    nowMono: number,
    writeSentMono: number,
    before: { readonly sourceTime: number | null } | null,
    skew: SkewEstimate | null,
  ): number {
    const image = before === null ? null : this.imageMono(before, skew);
    if (image === null || before === null) return 0;
    this.lastSourceTime = before.sourceTime;
    // The controller's scans fall on its cadence from the image, within ± the margin. The
    // first one at or after the write is counted from the latest of those phases: counted
    // from the middle, a write sent within the margin of a scan would be placed a whole scan
    // late when that scan is the one that takes it, whereas a readback that comes before the
    // taking scan costs a read or two more (next() follows it in the window, or at the scan
    // after), never a scan.
    const latest = image.at + image.margin;
    const scans = Math.max(0, Math.ceil((writeSentMono - latest) / this.scanMs));
    return this.placed(nowMono, image.at + scans * this.scanMs, image.margin);
  }

  /** The pause before the next readback, given the one just taken (null: the read failed). */
  next(
    nowMono: number,
    readback: { readonly sourceTime: number | null } | null,
    skew: SkewEstimate | null,
  ): number {
    if (nowMono >= this.quickUntil) {
      this.pause = Math.min(Math.max(this.pause, this.quick) * 2, this.pollIntervalMs);
      return this.pause;
    }
    const image = readback === null ? null : this.imageMono(readback, skew);
    if (image === null || readback === null) return this.quick;
    const repeated = readback.sourceTime === this.lastSourceTime;
    this.lastSourceTime = readback.sourceTime;
    const nextScan = image.at + this.scanMs;
    if (!repeated) {
      this.repeats = 0;
      return this.placed(nowMono, nextScan, image.margin);
    }
    // The same image again: the read came before the next scan (early, or the scan is late).
    // Within the scan's window, read again as soon as this one is back.
    const window = this.window;
    if (window !== null && nowMono < window.end && window.reads < WINDOW_READS) {
      window.reads += 1;
      return 0;
    }
    // A read before the next scan's window opened (it followed the scan the write came after).
    if (nowMono < nextScan - image.margin) return this.placed(nowMono, nextScan, image.margin);
    // The window has closed without the scan: it is late. Look again shortly.
    this.window = null;
    this.repeats += 1;
    return this.retryMs();
  }

  /**
   * The pause until the middle of the window in which the scan due at `scanMono` comes (± the
   * margin), which opens for back-to-back reads.
   */
  private placed(nowMono: number, scanMono: number, margin: number): number {
    const pause = this.bounded(scanMono - nowMono, margin);
    // A scan predicted further away than the next can be (see bounded()) opens no window.
    this.window =
      pause === this.quick && scanMono - nowMono > this.scanMs + margin
        ? null
        : { end: scanMono + margin, reads: 0 };
    return pause;
  }

  /**
   * A predicted pause, never negative and never longer than a scan and the margin: the next
   * image cannot be further away than that, so a longer pause means the image time and the skew
   * disagree (a controller clock that stepped since the estimate) and the plain pace is used.
   */
  private bounded(pause: number, margin: number): number {
    if (pause > this.scanMs + margin) return this.quick;
    return Math.max(0, pause);
  }

  /**
   * A scan came late: look again soon, not a whole scan later — first after a twentieth of a
   * scan (a millisecond at least: the event loop's timers fire in whole milliseconds), then
   * twice as long each time the image is still the same, up to a scan. A scan a little late (a
   * controller's cycle varies) is seen soon after it comes; a controller whose image stopped
   * changing (stopped, overloaded) is read a few times during the quick pace, not every
   * millisecond of it (a pause of an eighth of a scan, as before, read it 64 times).
   */
  private retryMs(): number {
    const first = Math.max(MIN_RETRY_MS, this.scanMs / 20);
    return Math.min(first * 2 ** Math.max(0, this.repeats - 1), Math.max(first, this.scanMs));
  }

  /**
   * The gateway monotonic time at which the image was produced, and the margin to add to a
   * scan predicted from it; null without an image time or a skew estimate.
   */
  private imageMono(
    readback: { readonly sourceTime: number | null },
    skew: SkewEstimate | null,
  ): { readonly at: number; readonly margin: number } | null {
    if (readback.sourceTime === null || skew === null) return null;
    // The image's stamp is its scan rounded to a whole millisecond (± half of one), and the
    // stamps are placed on the gateway's clock within ± the skew's stamp uncertainty (skew.ts).
    const margin = STAMP_QUANTUM_MS / 2 + skew.stamp.uncertaintyMs;
    // Known no better than to half a scan, the image's time does not place the next scan: the
    // skew was measured over a slow round trip.
    if (margin >= this.scanMs / 2) return null;
    return { at: readback.sourceTime - skew.stamp.monoOffsetMs, margin };
  }
}
