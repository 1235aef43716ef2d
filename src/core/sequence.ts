/**
 * Command sequence numbers (SPEC §8 handshake): 16-bit, per device, 1..65535; 0 is what a
 * controller echoes at power-up. The controller takes a write only when its number differs
 * from the last one it took, and echoes it: that echo is how the bridge tells its own command
 * from anything else (I1, I2).
 */
export const SEQ_MAX = 65_535;
/** What a controller echoes at power-up, before it has taken any command (SPEC §8). */
export const POWER_UP_ECHO = 0;

/**
 * The next sequence number after `last`, wrapping after 65535. It is never
 * - the number the controller echoes now: the controller would ignore the write as a repeat,
 *   and its old echo would look like this command's (a fresh journal, a wrap);
 * - the number of a command still open on the device: after a wrap, a long-open command and
 *   a new one would share an echo, and one could be confirmed by the other's effect.
 * With `former` (Lane.formerSeqs: a renamed device's first dispatch), the number comes after the
 * highest of `last` and `former`, and is none of `former` (also after a wrap): a write of the
 * device's former id that the controller may still take does not share its number, nor its echo.
 */
export function allocateSeq(
  last: number,
  controllerEcho: number | null,
  open: ReadonlySet<number>,
  former: readonly number[] | null = null,
): number {
  let seq = former === null ? last : Math.max(last, ...former);
  for (let i = 0; i < SEQ_MAX; i++) {
    seq = (seq % SEQ_MAX) + 1;
    if (seq !== controllerEcho && !open.has(seq) && former?.includes(seq) !== true) return seq;
  }
  throw new Error('every sequence number is held by an open command on this device');
}
