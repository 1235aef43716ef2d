import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mosquittoAvailable } from '../helpers/mosquitto.js';
import { Site } from '../reliability/site.js';

/**
 * A graceful stop of the real sluiced while its MQTT broker is away. Results published while
 * disconnected are held in memory for the next connection and go with the process
 * (docs/mqtt-api.md: the journal keeps them); the stop used to say nothing of them, so an
 * operator could not tell that clients on the result topic missed outcomes.
 */

const real = mosquittoAvailable();
const VALVE = 'mb-valve-1';
const HELD_LINE =
  'stopped while disconnected from the MQTT broker: the results held for it were not published';
let site: Site;

beforeAll(async () => {
  if (!real) return;
  site = await Site.start({ gatewayId: 'held-at-stop' });
}, 60_000);

afterAll(async () => {
  if (!real) return;
  await site.kill();
  if (!site.broker.running()) await site.broker.restart();
  await site.close();
});

function entries(): { msg?: string; level?: number; held?: number }[] {
  return site.logs.flatMap((line) => {
    try {
      return [JSON.parse(line.replace(/^\[\d+!?\] /, '')) as { msg?: string }];
    } catch {
      return [];
    }
  });
}

describe.runIf(real)('a stop while the MQTT broker is away', () => {
  it('says how many results held for the broker it leaves unpublished', async () => {
    await site.startDaemon();
    await site.broker.stop();
    const { state } = site.plant.device(VALVE).snapshot().published;
    const answer = await site.postCommand('held-1', {
      device: VALVE,
      action: state === 'OPEN' ? 'close' : 'open',
    });
    expect(answer.status).toBe(202);
    await site.settled(20_000);
    // Ground truth: the outcome is in the journal, and the broker was down all along.
    expect(site.records().find((r) => r.key === 'held-1')?.state).toBe('confirmed');
    expect(site.broker.running()).toBe(false);

    expect(await site.stop()).toBe(0);
    const said = entries().filter((e) => e.msg?.startsWith(HELD_LINE) === true);
    expect(said).toHaveLength(1);
    expect(said[0]!.level).toBe(40);
    expect(said[0]!.held).toBeGreaterThanOrEqual(1);
  }, 90_000);

  it('says nothing of the kind when the broker took every result', async () => {
    await site.broker.restart();
    await site.startDaemon();
    const { state } = site.plant.device(VALVE).snapshot().published;
    await site.postCommand('held-2', {
      device: VALVE,
      action: state === 'OPEN' ? 'close' : 'open',
    });
    await site.settled(20_000);
    const before = entries().filter((e) => e.msg?.startsWith(HELD_LINE) === true).length;
    expect(await site.stop()).toBe(0);
    expect(entries().some((e) => e.msg === 'MQTT intake stopped')).toBe(true);
    expect(entries().filter((e) => e.msg?.startsWith(HELD_LINE) === true)).toHaveLength(before);
  }, 90_000);
});
