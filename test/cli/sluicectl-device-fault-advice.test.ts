import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mosquittoAvailable, until } from '../helpers/mosquitto.js';
import { Site } from '../reliability/site.js';
import { sluicectl } from './helpers.js';

/**
 * `sluicectl show` of a command that ended failed DEVICE_FAULT because the controller went to
 * FAULT carrying it out (a valve stuck in travel: fault 0x81, travel timeout) says what to do,
 * as it does for a command refused in FAULT: the fault's meaning and the command that clears it.
 * It said nothing: the device, left in FAULT, refuses every command but a reset, and the
 * operator reading the story learnt neither. Real sluiced, sluice-sim over Modbus TCP; ground
 * truth: the journal, the simulator's valve state and write counter; the advice is then followed
 * and works.
 */
const real = mosquittoAvailable();
const VALVE = 'mb-valve-1';
let site: Site;

describe.skipIf(!real)('a command that sent its device to FAULT', () => {
  beforeAll(async () => {
    site = await Site.start({ gatewayId: 'fault-advice' });
    await site.startDaemon();
  }, 90_000);
  afterAll(async () => {
    await site.kill();
    await site.close();
  });

  it('is shown with the fault, its meaning and the way out, which works', async () => {
    const valve = site.plant.device(VALVE);
    const writes = valve.counters.writesReceived;
    valve.setFault({ kind: 'stuck-travel' });
    const open = await site.postCommand('stuck-1', { device: VALVE, action: 'open' }, 'wait=10');
    expect(open.status, open.body).toBe(502);
    // Ground truth: written once, the valve in FAULT 0x81; on file, failed DEVICE_FAULT.
    expect(valve.counters.writesReceived).toBe(writes + 1);
    expect(valve.snapshot()).toMatchObject({ state: 'FAULT', fault: '0x81' });
    expect(site.records().find((r) => r.key === 'stuck-1')).toMatchObject({
      state: 'failed',
      code: 'DEVICE_FAULT',
      faultCode: '0x81',
    });

    const [shown, json] = await Promise.all([
      sluicectl(['--config', site.configPath, '--no-color', 'show', 'stuck-1'], {
        timeoutMs: 30_000,
      }),
      sluicectl(['--config', site.configPath, '--json', 'show', 'stuck-1'], {
        timeoutMs: 30_000,
      }),
    ]);
    expect(shown.code, shown.stderr).toBe(0);
    expect(shown.stdout).toMatch(
      /^ {2}what to do +the device went to FAULT \(fault 0x81: travel timeout\) carrying out this command; once its cause is fixed, clear it: sluicectl --config \S+ send mb-valve-1 reset; then send the command again if it is still wanted$/m,
    );
    expect(json.json<{ advice: string | null }>().advice).toMatch(
      /^the device went to FAULT \(fault 0x81: travel timeout\)/,
    );

    // The advice works: the cause fixed, a reset clears the fault, and the open goes through.
    valve.clearFault('stuck-travel');
    const reset = await site.postCommand('reset-1', { device: VALVE, action: 'reset' }, 'wait=10');
    expect(reset.status, reset.body).toBe(200);
    await until(() => (valve.snapshot().state !== 'FAULT' ? true : undefined), 5_000);
    const again = await site.postCommand('open-2', { device: VALVE, action: 'open' }, 'wait=10');
    expect(again.status, again.body).toBe(200);
    expect(valve.snapshot().state).toBe('OPEN');
    expect(valve.counters.writesReceived).toBe(writes + 3);
  }, 60_000);
});
