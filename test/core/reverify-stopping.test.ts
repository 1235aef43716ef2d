import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CommandRecord } from '../../src/core/journal.js';
import type { NamedIdentity } from '../../src/intake/identities.js';
import { until } from '../helpers/mosquitto.js';
import { startStack, type Stack } from '../helpers/stack.js';

/**
 * sluicectl reverify while the daemon stops: the stop has cleared the queues (but for the
 * accepted stops at their head) and lets only the commands in flight settle, so nothing takes
 * a queued close up. The answer said "waiting
 * for the device's command in flight" after the whole wait, as if a worker would come to it;
 * now it says at once that the daemon is stopping and the command stays journaled for the next
 * start. Pipeline, sluice-sim (travel 1.5 s, an open in flight), SQLite journal; ground truth:
 * the journal (the queued close still accepted) and the simulator's write log (the open alone).
 */

let stack: Stack;
let identity: NamedIdentity;

beforeAll(async () => {
  stack = await startStack({ travelMs: 1_500, opcua: false });
  const plant = stack.identities.get('plant');
  if (plant === undefined) throw new Error('no identity plant');
  identity = plant;
}, 30_000);

afterAll(async () => {
  await stack.stop();
}, 30_000);

function submit(key: string, action: 'open' | 'close'): CommandRecord {
  const claim = stack.pipeline.submit({
    key,
    identity,
    intake: 'test',
    request: { device: 'v1', action, position: null, issuedAt: null, ttlMs: 30_000 },
  });
  if (claim.kind !== 'new') throw new Error(`${key}: ${claim.kind}`);
  return claim.record;
}

describe('reverify while the daemon stops', () => {
  it('says the daemon is stopping, at once, of a command no worker will take up', async () => {
    const valve = stack.plant.device('v1');
    const open = submit('stopping-open', 'open');
    await until(
      () => (valve.snapshot().state === 'OPENING' ? true : undefined),
      5_000,
      'v1 OPENING',
    );
    const close = submit('stopping-close', 'close');
    const stopping = stack.pipeline.stop(5_000);

    const asked = performance.now();
    const answer = await stack.pipeline.reverify(close, 'operator', 2_000);
    expect(performance.now() - asked).toBeLessThan(1_000);
    expect(answer.detail).toBe(
      'still accepted: the daemon is stopping and takes no readback now; the command stays journaled and is settled by reading its device at the next start (or resolve it)',
    );

    await stopping;
    expect(stack.journal.get(close)?.state).toBe('accepted');
    expect(stack.journal.get(open)?.state).toBe('confirmed');
    expect(valve.writeLog).toHaveLength(1);
  }, 20_000);
});
