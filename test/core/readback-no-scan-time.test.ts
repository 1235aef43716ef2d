import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { parseYamlText } from '../../src/config/yaml-text.js';
import { parseProfile, type DeviceProfile } from '../../src/core/profile.js';
import { PROFILES, ROOT } from '../helpers/fixtures.js';
import { SimHarness } from '../helpers/sim-harness.js';

/**
 * An OPC UA valve whose profile maps no `ScanTime` (allowed: docs/device-profiles.md, "OPC UA
 * node ids"): a readback's source time is then the newest SourceTimestamp, the last change,
 * which does not move on while the valve rests. Confirmation works as with a scan time:
 * - a reset from FAULT is confirmed once a later scan shows the fault gone, judged by the read
 *   order when the source time stands still (it waited for a later source time until
 *   READBACK_TIMEOUT);
 * - on a controller that echoes no sequence number, a stop taken as a no-op at OPEN (the travel
 *   ended between the stop's read and its write) is confirmed on OPEN, although the last change
 *   came before the write (it waited for a later source time until READBACK_TIMEOUT).
 *
 * Real parts: the pipeline with the real OPC UA driver against sluice-sim's OPC UA valve `u1`
 * over real sockets (test/helpers/sim-harness.ts), a real journal. Ground truth: the
 * simulator's write log.
 */

let h: SimHarness | undefined;
const valve = PROFILES.get('valve')!;
afterEach(async () => {
  PROFILES.set('valve', valve);
  await h?.close();
  h = undefined;
});

/** The shipped valve profile, changed by `edit` on its YAML and loaded as the daemon loads it. */
function valveWith(edit: (data: ValveYaml) => void): DeviceProfile {
  const yaml = parseYamlText(readFileSync(join(ROOT, 'devices', 'profiles', 'valve.yaml'), 'utf8'));
  if (!yaml.ok) throw new Error(yaml.errors.join('; '));
  const data = yaml.value as ValveYaml;
  edit(data);
  return parseProfile(data, 'valve');
}

/** Until the driver has its OPC UA session (slow to open on a busy machine). */
async function connected(harness: SimHarness): Promise<void> {
  const driver = harness.drivers.bindings.find((b) => b.id === 'u1')!.driver;
  await harness.until(() => driver.health().connected, 30_000, 'the OPC UA session');
}

interface ValveYaml {
  controller: { echoesSeq: boolean };
  modbus: { status: { seqEcho?: unknown } };
  opcua: { status: { seqEcho?: string; time?: string } };
}

describe('an OPC UA valve whose profile maps no ScanTime', () => {
  it('a reset from FAULT is confirmed once the fault has cleared', async () => {
    PROFILES.set(
      'valve',
      valveWith((data) => {
        delete data.opcua.status.time;
      }),
    );
    h = await SimHarness.start({ opcua: true, warm: true });
    const u1 = h.device('u1');
    await connected(h);
    // A sensor fault puts the valve in FAULT 0x82; repaired, it stays in FAULT until a reset.
    u1.setFault({ kind: 'position-sensor' });
    await h.until(() => u1.published.state === 'FAULT', 5_000, 'FAULT');
    u1.clearFault('position-sensor');
    h.submit('r', { device: 'u1', action: 'reset' });
    const r = await h.settled('r', 15_000);
    // Ground truth: the controller took the reset and left FAULT for good.
    expect(u1.log.map((e) => [e.outcome, e.from, e.to])).toEqual([['accepted', 'FAULT', 'CLOSED']]);
    expect(u1.published.state).toBe('CLOSED');
    expect(r).toMatchObject({ state: 'confirmed', code: 'OK', observed: { state: 'CLOSED' } });
  }, 60_000);

  it('without an echo, a stop the controller takes as a no-op at OPEN is confirmed', async () => {
    // The controller takes each new CommandSeq and echoes nothing (echoesSeq: false).
    PROFILES.set(
      'valve',
      valveWith((data) => {
        data.controller.echoesSeq = false;
        delete data.modbus.status.seqEcho;
        delete data.opcua.status.seqEcho;
        delete data.opcua.status.time;
      }),
    );
    h = await SimHarness.start({ opcua: true, travelMs: 2_000 });
    const u1 = h.device('u1');
    await connected(h);
    // Another master opens the valve.
    u1.receiveWrite({ code: 1, setpoint: 0, seq: 50_000 });
    await h.until(
      () => u1.published.state === 'OPENING' && u1.published.position >= 92,
      5_000,
      'opening past 92 %',
    );
    // The stop's read shows OPENING, answered 250 ms later (within the harness's OPC UA request
    // timeout, 350 ms), when the travel has ended (at most 160 ms on): the stop is written to a
    // valve at OPEN, which the controller takes as a no-op.
    u1.setFault({ kind: 'latency', ms: 250, on: 'read', when: 'after' });
    h.submit('s', { device: 'u1', action: 'stop' });
    await h.until(() => u1.published.state === 'OPEN', 5_000, 'OPEN');
    u1.clearFault('latency');
    const s = await h.settled('s', 15_000);
    // Ground truth: the stop was written once, after the travel ended, and taken as a no-op.
    expect(u1.log.map((e) => [e.seq, e.outcome, e.from, e.to])).toEqual([
      [50_000, 'accepted', 'CLOSED', 'OPENING'],
      [s.seq, 'noop', 'OPEN', 'OPEN'],
    ]);
    expect(s).toMatchObject({ state: 'confirmed', code: 'OK', observed: { state: 'OPEN' } });
  }, 60_000);
});
