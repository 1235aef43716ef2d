import { afterEach, expect, it } from 'vitest';
import { lockHolder } from '../helpers/journal-lock.js';
import { recordingLogger } from '../helpers/recording-logger.js';
import { SimHarness } from '../helpers/sim-harness.js';

/**
 * A retry of a journaled key while another process holds the journal's write lock is answered
 * from the journal as read, and the daemon says so in its log: with the command's key and its
 * device, as every line about a command is (SPEC §9). The line carried the key alone. The pipeline with the real Modbus driver against
 * sluice-sim, on a real SQLite journal whose lock a second process holds; ground truth: the
 * pipeline's log lines as written.
 */

let harness: SimHarness | undefined;
let release: (() => void) | undefined;
afterEach(async () => {
  release?.();
  await harness?.close();
});

it('logs the retry answered from the journal with its key and device', async () => {
  const { logger, lines } = recordingLogger();
  const h = await SimHarness.start({ busyTimeoutMs: 300, logger });
  harness = h;
  const locker = await lockHolder(h.path);
  release = () => {
    locker.close();
  };
  expect(h.submit('k1', { device: 'v1', action: 'open' }).kind).toBe('new');
  expect((await h.settled('k1')).state).toBe('confirmed');
  // Held until the retry has been answered, not for a fixed time (1.5 s), which a loaded
  // machine could spend before the retry's write waited on it.
  await locker.hold();
  // The retry's hit cannot be journaled: answered from the journal as read.
  expect(h.submit('k1', { device: 'v1', action: 'open' }).kind).toBe('duplicate');
  await locker.release();
  const said = lines.filter(
    (l) => typeof l.msg === 'string' && l.msg.includes('a retry of a journaled key is answered'),
  );
  expect(said).toEqual([expect.objectContaining({ key: 'k1', device: 'v1' })]);
});
