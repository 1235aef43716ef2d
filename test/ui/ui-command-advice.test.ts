import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { until } from '../helpers/mosquitto.js';
import { call, login, startUiSite, TOKENS, type UiSite } from './ui-site.js';

/**
 * The status page's story of a command gives what to do about its outcome, as `sluicectl show`
 * does (`what to do`; views/command-advice.ts): a command refused because its valve is in FAULT
 * names the fault, its meaning and the command that clears it. The page's story, "the same
 * story as sluicectl show", had the rule alone ("open is not a legal transition from FAULT").
 * Real daemon and status page over TLS, sluice-sim's position-sensor fault; ground truth: the
 * simulator's valve (in FAULT 0x82, nothing written).
 */

let site: UiSite;

beforeAll(async () => {
  site = await startUiSite({ mqtt: false, opcua: false, drainTravelMs: 300 });
}, 60_000);

afterAll(async () => {
  await site.stop();
});

describe('a refused command on the status page', () => {
  it('is shown with what to do, as sluicectl show says it', async () => {
    const valve = site.plant.device('drain-valve');
    const writes = valve.counters.writesReceived;
    valve.setFault({ kind: 'position-sensor' });
    await until(() => (valve.snapshot().state === 'FAULT' ? true : undefined), 5_000);
    const sent = await call(
      site,
      'POST',
      '/v1/commands',
      {
        authorization: `Bearer ${TOKENS.scada}`,
        'idempotency-key': 'faulted-1',
        'content-type': 'application/json',
        prefer: 'wait=10',
      },
      JSON.stringify({ device: 'drain-valve', action: 'open' }),
    );
    expect(sent.status, sent.body).toBe(409);
    expect(valve.counters.writesReceived).toBe(writes);
    expect(valve.snapshot()).toMatchObject({ state: 'FAULT', fault: '0x82' });

    const { cookie } = await login(site, TOKENS.ops);
    const story = await call(site, 'GET', '/ui/api/commands/scada/faulted-1', { cookie });
    expect(story.status, story.body).toBe(200);
    expect(story.json<{ code: string; advice: string | null }>()).toMatchObject({
      code: 'ILLEGAL_TRANSITION',
      advice:
        'the device is in FAULT (fault 0x82: position sensor disagreement), where it refuses open; once its cause is fixed, clear it: sluicectl send drain-valve reset; then send the command again',
    });
    valve.clearFaults();
  }, 30_000);
});
