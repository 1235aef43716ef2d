import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { startPlant, type Plant, type SimDevice } from '../../simulators/plant.js';
import { nodeArgs } from '../helpers/entry.js';
import { tempDir } from '../helpers/fixtures.js';
import type { Inventory } from '../../src/drivers/inventory.js';
import { inventoryFor } from '../helpers/plant-inventory.js';
import { WARM_ECHO } from '../helpers/sim-harness.js';

/**
 * I1 and I5 across a real crash: a separate daemon-like process (journal, real drivers,
 * pipeline) is killed with SIGKILL in the middle of a command, and a new one settles the
 * command by recovery — by reading the controller — without a second write.
 */

const PLANT = {
  control: { host: '127.0.0.1' as const, port: 0 },
  plcs: {
    mb: {
      protocol: 'modbus' as const,
      host: '127.0.0.1',
      port: 0,
      devices: { 'mb-valve': { profile: 'valve' as const, base: 0, travelMs: 1500 } },
    },
    ua: {
      protocol: 'opcua' as const,
      host: '127.0.0.1',
      port: 0,
      devices: { 'ua-valve': { profile: 'valve' as const, travelMs: 1500 } },
    },
  },
};

let plant: Plant;
let dir: string;
let cleanup: () => void;
const children: ChildProcess[] = [];

beforeAll(async () => {
  plant = await startPlant(PLANT, { ephemeralPorts: true });
  ({ dir, cleanup } = tempDir());
});
afterEach(() => {
  for (const c of children.splice(0)) c.kill('SIGKILL');
});
afterAll(async () => {
  await plant.stop();
  cleanup();
});

interface Daemon {
  child: ChildProcess;
  ready: Promise<number>;
  submit(key: string, body: Record<string, unknown>): void;
}

/**
 * The plant's inventory cut to one PLC (`mb` or `ua`) and its devices: a daemon of a Modbus
 * case then never loads node-opcua, which took most of the 2 s each of its starts waited for.
 */
function inventoryOf(plc: 'mb' | 'ua'): Inventory {
  const whole = inventoryFor(plant);
  return {
    plcs: { [plc]: whole.plcs[plc]! },
    devices: Object.fromEntries(Object.entries(whole.devices).filter(([, d]) => d.plc === plc)),
  };
}

function startDaemon(journal: string, plc: 'mb' | 'ua'): Daemon {
  const child = spawn(
    process.execPath,
    [
      ...nodeArgs('test/helpers/pipeline-process.ts'),
      JSON.stringify({
        journal,
        pkiDir: join(dir, 'pki'),
        inventory: inventoryOf(plc),
        // A lost write is sent again once the guard has passed: 0.7 s (above the inventory's
        // request timeouts, 300 and 500 ms), not the shipped 2.5 s; what is sent, and how
        // often, does not depend on its length. After the restart an earlier life's lost write
        // is proven not applied no sooner than the confirm timeout from the journal lock: 2.5 s
        // (above the 1.5 s travel and 500 + 700 + 500 + 100 ms), not the shipped 8 s.
        timing: { redispatchGuardMs: 700, confirmTimeoutMs: 2_500 },
      }),
    ],
    { stdio: ['pipe', 'pipe', 'inherit'] },
  );
  children.push(child);
  const lines = createInterface({ input: child.stdout });
  const ready = new Promise<number>((resolve, reject) => {
    lines.on('line', (line) => {
      if (!line.startsWith('{')) return;
      const message = JSON.parse(line) as { ready?: number };
      if (message.ready !== undefined) resolve(message.ready);
    });
    child.once('exit', (code) => {
      reject(new Error(`daemon exited with ${code}`));
    });
  });
  return {
    child,
    ready,
    submit: (key, body) => child.stdin.write(`${JSON.stringify({ submit: { key, body } })}\n`),
  };
}

async function until<T>(probe: () => T | undefined, ms = 30_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const value = probe();
    if (value !== undefined) return value;
    if (Date.now() > end) throw new Error('condition not reached');
    await new Promise((r) => setTimeout(r, 20));
  }
}

function stateOf(path: string, key: string): string | undefined {
  const journal = SqliteJournal.open({ path });
  try {
    return journal.get({ scope: 'plant', key })?.state;
  } finally {
    journal.close();
  }
}

async function killed(child: ChildProcess): Promise<void> {
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGKILL');
  await exited;
}

/**
 * The valve switched to LOCAL, closed by hand and switched back to REMOTE: CLOSED, as each case
 * needs it, whatever a case before it left (an open confirmed by the other case of its device).
 */
async function closedByHand(device: SimDevice): Promise<void> {
  device.setLocal(true, 0);
  await until(() => (device.published.state === 'LOCAL' ? true : undefined));
  device.setLocal(false);
  await until(() => (device.published.state === 'CLOSED' ? true : undefined));
}

describe.each(['mb', 'ua'] as const)('SIGKILL mid-command (%s)', (prefix) => {
  const deviceId = `${prefix}-valve`;

  it('a command whose write was sent is confirmed by recovery, never re-written', async () => {
    const device = plant.device(deviceId);
    await closedByHand(device);
    device.resetCounters();
    const journal = join(dir, `${prefix}-written.db`);
    const first = startDaemon(journal, prefix);
    expect(await first.ready).toBe(0);
    first.submit('k1', { device: deviceId, action: 'open' });
    await until(() => (device.counters.writesReceived === 1 ? true : undefined));
    await killed(first.child);
    expect(stateOf(journal, 'k1')).toBe('dispatched');
    // The write received is taken at the controller's next scan: travelling (1.5 s) from then.
    await until(() => (device.published.state === 'OPENING' ? true : undefined), 5_000);

    const second = startDaemon(journal, prefix);
    expect(await second.ready).toBe(1);
    await until(() => (stateOf(journal, 'k1') === 'confirmed' ? true : undefined));
    expect(device.counters.writesReceived).toBe(1);
    expect(device.published.state).toBe('OPEN');
    await killed(second.child);
  }, 60_000);

  if (prefix === 'mb') {
    it('a command journaled dispatched whose write never arrived is sent exactly once', async () => {
      const device = plant.device(deviceId);
      await closedByHand(device);
      // The controller has run a while, as before any real crash: it took another master's
      // command (a stop, a no-op at rest), so its echo is that command's sequence number, not
      // the power-up 0. Recovery can prove the write lost only then: a controller showing its
      // power-up echo over a new connection may have restarted and lost a write it had taken
      // (src/core/redispatch.ts), and recovery rightly leaves such a command unwritten.
      device.receiveWrite({ code: 3, setpoint: 0, seq: WARM_ECHO });
      await until(() => (device.published.seqEcho === WARM_ECHO ? true : undefined));
      device.resetCounters();
      // Every write is lost on the way (the link resets before the PLC reads it).
      device.setFault({ kind: 'reset', when: 'before', on: 'write' });
      const journal = join(dir, `${prefix}-lost.db`);
      const first = startDaemon(journal, prefix);
      await first.ready;
      first.submit('k2', { device: deviceId, action: 'close' });
      first.submit('k3', { device: deviceId, action: 'open' });
      await until(() => (stateOf(journal, 'k3') === 'dispatched' ? true : undefined));
      await killed(first.child);
      device.clearFault('reset');
      expect(device.counters.writesReceived).toBe(0);

      const second = startDaemon(journal, prefix);
      expect(await second.ready).toBe(1);
      // Settled either way: a recovery that refused to send it again fails here once the command
      // ends otherwise, not at the wait's bound.
      const settled = await until(() => {
        const state = stateOf(journal, 'k3');
        return state === 'accepted' || state === 'dispatched' ? undefined : state;
      });
      expect(settled).toBe('confirmed');
      expect(device.counters.writesReceived).toBe(1);
      expect(stateOf(journal, 'k2')).toBe('confirmed');
      await killed(second.child);
    }, 60_000);
  }
});
