import { afterAll, describe, expect, it } from 'vitest';
import type { CommandRecord } from '../../src/core/journal.js';
import { mosquittoAvailable } from '../helpers/mosquitto.js';
import { campaignSettings, runSeed } from './campaign-random.js';
import {
  addRun,
  describeFindings,
  newTally,
  summaryTable,
  type GroupTally,
} from './campaign-report.js';
import {
  closeCampaignSite,
  crashRun,
  openCampaignSite,
  planRun,
  sleep,
  thirdPartyWrite,
  type CampaignSite,
  type PlanOptions,
} from './crash-run.js';
import { ScenarioRun } from './crash-scenario.js';
import { CAMPAIGN_TIMING, type SiteOptions } from './site.js';

/**
 * The crash campaign (issue 10): seeded runs on a whole site — the real `sluiced` process, the
 * simulated plant in this process (its write logs survive every kill), a real Mosquitto —
 * in which clients send commands over both intakes and keep retrying (HTTPS: the same
 * Idempotency-Key on network errors, timeouts, 503, 202 and 409 IN_PROGRESS; MQTT: the same
 * QoS 1 message published again; sometimes the same key over both), while the daemon is
 * SIGKILLed at a point of one command's life chosen per run — before its claim commits, after
 * it, after `dispatched`, after the write reached the controller, during travel, after the
 * outcome — found by watching the journal (read-only) and the simulator, not by sleeping.
 * Around the kill the PLC may be power cycled (losing its volatile echo), the broker
 * restarted, a third party may write the PLC, link latency and controller holds delay the
 * write, deadlines may expire during the outage. After the restart, once every client has a
 * terminal answer and the journal has no open command, the run is judged from ground truth:
 * Site.verify() (I1, I2, I3, I5, ATTRIBUTION, OPEN) and the campaign's own checks (I4, HONEST,
 * I5 over MQTT, ANSWER, NO_ANSWER; see crash-run.ts). The named scenarios below replay what
 * an outside campaign hit, each with a fixed seed.
 *
 * Runs: `npm test` runs a bounded campaign (CI_RUNS); `npm run test:reliability` runs 200.
 *   SLUICE_CAMPAIGN_RUNS=N      number of runs (every 4th one on the site with the OPC UA PLC,
 *                               the others alternately on two Modbus-only sites)
 *   SLUICE_CAMPAIGN_SEED=S      campaign seed (default 0x51CE2026; `random` picks and prints one)
 *   SLUICE_CAMPAIGN_ONLY=i,j    only these run indices (a violation prints its index and seed)
 * Replay a violation: SLUICE_CAMPAIGN_SEED=<seed> SLUICE_CAMPAIGN_ONLY=<index> npx vitest run
 * test/reliability/crash-campaign.test.ts. A run's choices are replayed exactly; the real
 * processes' timing is not, and a run replayed alone starts from a fresh plant.
 */

/** Runs in the bounded campaign of `npm test`. */
const CI_RUNS = 12;
const settings = campaignSettings(process.env, CI_RUNS);
const PER_RUN_MS = 120_000;

const groups: GroupTally[] = [];
afterAll(() => {
  if (groups.length > 0) console.log(summaryTable(groups));
});

const MODBUS: PlanOptions = {
  targetDevices: ['mb-valve-1', 'mb-valve-2', 'mb-actuator'],
  devices: ['mb-valve-1', 'mb-valve-2', 'mb-actuator'],
  thirdParty: { plc: 'mb', valves: ['mb-valve-1', 'mb-valve-2'] },
  travelMs: 500,
  guardMs: CAMPAIGN_TIMING.redispatchGuardMs,
};
const WITH_OPCUA: PlanOptions = {
  ...MODBUS,
  targetDevices: ['ua-valve'],
  devices: ['ua-valve', 'mb-valve-1', 'mb-actuator'],
};

const indices = (keep: (i: number) => boolean): number[] =>
  Array.from({ length: settings.runs }, (_, i) => i).filter(
    (i) => keep(i) && (settings.only === null || settings.only.has(i)),
  );
const modbusRuns = indices((i) => i % 4 !== 3);
const opcuaRuns = indices((i) => i % 4 === 3);
/**
 * The Modbus runs go to two sites, alternately, each with its own chain of runs: a run's time
 * is mostly the daemon's restart and recovery, and one chain of all of them was the file's
 * longest test by far (the OPC UA chain has a third as many).
 */
const MODBUS_SITES = 2;
const modbusChains = Array.from({ length: MODBUS_SITES }, (_, n) =>
  modbusRuns.filter((_, position) => position % MODBUS_SITES === n),
);

async function campaign(
  name: string,
  runs: readonly number[],
  opcua: boolean,
  plan: PlanOptions,
): Promise<void> {
  const tally = newTally(name, `0x${settings.seed.toString(16)}`);
  groups.push(tally);
  const failures: string[] = [];
  const cs: CampaignSite = await openCampaignSite(
    { travelMs: plan.travelMs, opcua, timing: { defaultTtlMs: 8_000 } },
    `campaign-${name}`,
  );
  try {
    for (const index of runs) {
      const seed = runSeed(settings.seed, index);
      const result = await crashRun(cs, planRun(cs.site, index, seed, plan));
      addRun(tally, result);
      if (result.findings.length > 0) {
        const text = describeFindings(cs.site, result.findings, {
          campaignSeed: `0x${settings.seed.toString(16)}`,
          plan: result.plan,
          replay: `SLUICE_CAMPAIGN_SEED=0x${settings.seed.toString(16)} SLUICE_CAMPAIGN_ONLY=${index} npx vitest run test/reliability/crash-campaign.test.ts`,
        });
        console.error(text);
        failures.push(text);
      }
    }
  } finally {
    await closeCampaignSite(cs);
  }
  expect(failures).toEqual([]);
}

// The campaigns (two Modbus sites, one OPC UA) and the named scenarios run at the same time,
// each on a site of its own (its own plant, broker, journal and daemon, so each judges its own
// ground truth): a run spends most of its time waiting for travel, outages, deadlines and
// retries, which the others fill.
describe.skipIf(!mosquittoAvailable())(
  'crash campaign: SIGKILL at every point of a command’s life',
  { concurrent: true },
  () => {
    for (const [n, runs] of modbusChains.entries()) {
      it.skipIf(runs.length === 0)(
        `Modbus PLC, site ${n + 1} of ${MODBUS_SITES}: ${runs.length} runs (seed 0x${settings.seed.toString(16)})`,
        async () => {
          await campaign(`modbus-${n + 1}`, runs, false, MODBUS);
        },
        60_000 + runs.length * PER_RUN_MS,
      );
    }

    it.skipIf(opcuaRuns.length === 0)(
      `OPC UA PLC: ${opcuaRuns.length} runs (seed 0x${settings.seed.toString(16)})`,
      async () => {
        await campaign('opcua', opcuaRuns, true, WITH_OPCUA);
      },
      60_000 + opcuaRuns.length * PER_RUN_MS,
    );
  },
);

// ---------------------------------------------------------------------------------------------
// Named scenarios: what an outside campaign hit on an earlier main, each with a fixed seed.

const scenarios = newTally('scenarios', 'fixed');

async function scenario(
  name: string,
  seed: number,
  options: SiteOptions & { readonly warm?: boolean },
  steps: (s: ScenarioRun) => Promise<void>,
  /** Scenario-specific expectations, after the judgement (ground truth first). */
  then: (s: ScenarioRun) => void,
): Promise<void> {
  if (!groups.includes(scenarios)) groups.push(scenarios);
  const cs = await openCampaignSite(options, `scenario-${name}`);
  const s = new ScenarioRun(cs, name, seed);
  // A step or an expectation of the scenario's own that fails says what happened: the journal,
  // the write logs and the daemon's log, which the site removes as it closes (a finding of the
  // judgement prints them itself).
  let judged = false;
  try {
    await steps(s);
    const result = await s.finish();
    addRun(scenarios, result);
    if (result.findings.length > 0) {
      const text = describeFindings(cs.site, result.findings, {
        campaignSeed: `scenario ${name} seed ${seed}`,
        replay: `npx vitest run test/reliability/crash-campaign.test.ts -t '${name}'`,
      });
      console.error(text);
      judged = true;
      expect.fail(text);
    }
    then(s);
  } catch (error) {
    if (!judged) console.error(scenarioHistory(cs, name));
    throw error;
  } finally {
    await closeCampaignSite(cs);
  }
}

/** Every command of the scenario with its history, write log and log lines. */
function scenarioHistory(cs: CampaignSite, name: string): string {
  const lines = [`scenario ${name} failed; what happened:`];
  for (const r of cs.site.records()) {
    lines.push(
      `${r.key} ${r.device} seq ${r.seq ?? '-'}: ${r.state} ${r.code ?? ''} attempts ${r.attempts}`,
    );
    for (const e of cs.watch.history(r)) {
      lines.push(
        `    ${new Date(e.at).toISOString()} ${e.from ?? '-'}→${e.to} [${e.intake}] ${e.detail}`,
      );
    }
    const sim = cs.site.plant.devices().find((d) => d.id === r.device);
    for (const w of r.seq === null || sim === undefined ? [] : sim.writesOfSeq(r.seq)) {
      lines.push(
        `    write log: seq ${w.seq} code ${w.code} received ${new Date(w.receivedAt).toISOString()} → ${w.outcome ?? 'pending'}${w.settledAt === null ? '' : ` at ${new Date(w.settledAt).toISOString()}`}`,
      );
    }
    for (const l of cs.site.logs.filter((line) => line.includes(r.key))) {
      lines.push(`    log ${l.slice(0, 600)}`);
    }
  }
  return lines.join('\n');
}

/** Polls (the simulator, in this process) until the probe holds; bounded. */
async function until(probe: () => boolean, what: string, ms = 5_000): Promise<void> {
  const end = Date.now() + ms;
  while (!probe()) {
    if (Date.now() > end) throw new Error(`${what}: not within ${ms} ms`);
    await sleep(5);
  }
}

/** When (epoch ms) the running life took the command up, by its journal event; bounded. */
async function takeUp(s: ScenarioRun, key: string, ms = 30_000): Promise<number> {
  const end = Date.now() + ms;
  for (;;) {
    const r = s.record(key);
    const event =
      r === undefined
        ? undefined
        : s.cs.watch
            .history(r)
            .findLast((e) => e.intake === 'recovery' && e.detail.startsWith('taken up'));
    if (event !== undefined) return event.at;
    if (Date.now() > end) throw new Error(`${key}: no take-up journaled within ${ms} ms`);
    await sleep(5);
  }
}

/** Polls the journal (read-only) until the probe holds; bounded. */
async function journalUntil(
  s: ScenarioRun,
  key: string,
  probe: (r: CommandRecord) => boolean,
  what: string,
  ms = 15_000,
): Promise<CommandRecord> {
  const end = Date.now() + ms;
  for (;;) {
    const r = s.record(key);
    if (r !== undefined && probe(r)) return r;
    if (Date.now() > end) {
      // What the journal holds instead: a stale rejection and a stuck queue look alike here.
      const held =
        r === undefined
          ? 'not in the journal'
          : `${r.state} ${r.code ?? ''} (${r.detail ?? ''}); history: ${s.cs.watch
              .history(r)
              .map((e) => `${e.to} ${e.detail}`)
              .join(' | ')}`;
      throw new Error(`${key}: ${what} not seen in the journal within ${ms} ms; it is ${held}`);
    }
    await sleep(2);
  }
}

describe.skipIf(!mosquittoAvailable())('named crash scenarios', { concurrent: true }, () => {
  it('frozen: the device image frozen across a restart proves nothing; one write, confirmed once it thaws', async () => {
    await scenario(
      'frozen',
      0xf001,
      { travelMs: 400, warm: true },
      async (s) => {
        const valve = s.cs.site.plant.device('mb-valve-1');
        // The controller runs on (takes the write, opens) but publishes the same old image.
        valve.setFault({ kind: 'frozen' });
        const sent = s.send({
          key: 'frozen-open',
          device: 'mb-valve-1',
          action: 'open',
          via: 'both',
        });
        expect(await s.reach(sent, 'written', 0)).toBe('written');
        const inDoubt = await s.kill();
        await s.restart(inDoubt);
        // Frozen for longer than the redispatch guard and the confirm timeout after the restart.
        await sleep(CAMPAIGN_TIMING.confirmTimeoutMs + 1_000);
        expect(s.record('frozen-open')?.state).toBe('dispatched');
        valve.clearFault('frozen');
      },
      (s) => {
        const r = s.record('frozen-open')!;
        expect(r).toMatchObject({ state: 'confirmed', attempts: 1 });
        expect(s.cs.site.plant.device('mb-valve-1').writesWithSeq(r.seq!)).toBe(1);
      },
    );
  }, 120_000);

  it('second kill during a re-dispatch: the command is never written a third time', async () => {
    await scenario(
      'second-kill',
      0x5ec0,
      { travelMs: 400, warm: true },
      async (s) => {
        const valve = s.cs.site.plant.device('mb-valve-1');
        // The first write is lost on the link: the connection is reset before the PLC sees it.
        valve.setFault({ kind: 'reset', when: 'before', on: 'write' });
        // A deadline far enough off for the second life to re-dispatch: a restart took 20 s on a
        // machine loaded 15-20 deep, past a 15 s deadline. The second write's count, not the
        // deadline, ends the command (src/core/redispatch.ts), so the run is no longer for it.
        const sent = s.send({
          key: 'redo-open',
          device: 'mb-valve-1',
          action: 'open',
          ttlMs: 60_000,
        });
        expect(await s.reach(sent, 'dispatched', 0)).toBe('dispatched');
        // Killed once the write has reached the PLC and been reset (its outcome unknown to the
        // daemon), well inside the guard: the live process has not re-dispatched.
        await until(() => valve.writers.length > 0, 'the first write reset at the PLC', 15_000);
        const first = await s.kill();
        expect(first).toContain('redo-open');
        expect(valve.counters.writesReceived).toBe(0);
        // The re-dispatched write is lost on the link as well. (Held there instead, with the
        // kill timed to fall while it was, the write landed during the outage and its echo
        // settled the command: a third life that wrote again, the cap of two gone, passed.)
        const writers = valve.writers.length;
        await s.restart([]);
        await journalUntil(s, 'redo-open', (r) => r.attempts === 2, 'the re-dispatch');
        await until(
          () => valve.writers.length > writers,
          'the second write reset at the PLC',
          15_000,
        );
        // Killed with the second write's outcome unknown; the link is whole for the third life.
        await s.kill();
        valve.clearFault('reset');
        await s.restart(['redo-open']);
      },
      (s) => {
        const r = s.record('redo-open')!;
        expect(r.attempts).toBe(2);
        // Neither write reached the controller: nothing applied, and said so.
        expect(s.cs.site.plant.device('mb-valve-1').writesWithSeq(r.seq!)).toBe(0);
        expect(r).toMatchObject({ state: 'failed', code: 'DEVICE_UNREACHABLE' });
      },
    );
  }, 120_000);

  it('unreachable at restart for longer than the confirm timeout: settled once the link is back, one write each', async () => {
    await scenario(
      'unreachable',
      0x0dd1,
      { travelMs: 500, warm: true },
      async (s) => {
        const sent = s.send({
          key: 'far-open',
          device: 'mb-valve-1',
          action: 'open',
          via: 'both',
          ttlMs: 12_000,
        });
        // Queued behind it on the same device (claimed after it), and another device. Its
        // deadline must outlast the outage, a restart (20 s on a machine loaded 15-20 deep) and
        // far-open's settling: it is written after them.
        await journalUntil(s, 'far-open', () => true, 'far-open claimed');
        s.send({
          key: 'far-close',
          device: 'mb-valve-1',
          action: 'close',
          via: 'mqtt',
          ttlMs: 60_000,
        });
        s.send(
          { key: 'far-move', device: 'mb-actuator', action: 'move', position: 60, ttlMs: 12_000 },
          20,
        );
        expect(await s.reach(sent, 'readback', 100)).toBe('readback');
        const inDoubt = await s.kill();
        const plc = s.cs.site.plant.plc('mb');
        plc.setFault({ kind: 'reset', when: 'before', on: 'both' });
        await s.restart(inDoubt);
        // Unreachable for longer than the confirm timeout, counted from the new life's take-up
        // of far-open (its window opens there), not from the test's view of the restart: on a
        // loaded machine that came seconds later and the outage ran past the window.
        const takenUp = await takeUp(s, 'far-open');
        await sleep(takenUp + CAMPAIGN_TIMING.confirmTimeoutMs + 2_000 - Date.now());
        expect(s.record('far-open')?.state).toBe('dispatched');
        plc.clearFault('reset');
      },
      (s) => {
        const sim = s.cs.site.plant.device('mb-valve-1');
        for (const key of ['far-open', 'far-close']) {
          const r = s.record(key)!;
          expect(r.state).toBe('confirmed');
          expect(sim.writesWithSeq(r.seq!)).toBe(1);
        }
      },
    );
  }, 120_000);

  it('third party: another Modbus master latches 0x88; never blamed on a bridge command, never a false success', async () => {
    await scenario(
      'third-party',
      0x3a7d,
      // Long travel: the other master's close must find the valve still opening.
      { travelMs: 1_500, warm: true },
      async (s) => {
        const site = s.cs.site;
        const sent = s.send({ key: 'tp-open', device: 'mb-valve-1', action: 'open', via: 'both' });
        expect(await s.reach(sent, 'readback', 100)).toBe('readback');
        // While the bridge is down another master sends close to the opening valve: 0x88. Sent
        // as soon as SIGKILL is (synchronously, in kill()), not after the exit is reaped: on a
        // loaded machine that wait let the valve finish its travel first.
        const killing = s.kill();
        await thirdPartyWrite(site, 'mb-valve-1', 'close', 61_001);
        const inDoubt = await killing;
        const valve = site.plant.device('mb-valve-1');
        await until(() => valve.seqEcho === 61_001, "the other master's command taken");
        expect(valve.snapshot()).toMatchObject({ faultCode: 0x88, state: 'OPENING' });
        s.send({
          key: 'tp-close',
          device: 'mb-valve-1',
          action: 'close',
          via: 'mqtt',
          ttlMs: 40_000,
        });
        await s.restart(inDoubt);
        await journalUntil(
          s,
          'tp-close',
          (r) => r.state === 'confirmed',
          'the close confirmed',
          45_000,
        );
        // Live: the bridge opens mb-valve-2 and the other master refuses travel in its way.
        const again = s.send({
          key: 'tp-open-2',
          device: 'mb-valve-2',
          action: 'open',
          via: 'mqtt',
        });
        expect(await s.reach(again, 'readback', 50)).toBe('readback');
        await thirdPartyWrite(site, 'mb-valve-2', 'close', 61_002);
      },
      (s) => {
        // The bridge's write was taken (it opened); the 0x88 was the other master's.
        for (const key of ['tp-open', 'tp-open-2']) {
          const r = s.record(key)!;
          expect(r.state).toBe('failed');
          expect(r.code).toBe('READBACK_TIMEOUT');
        }
        expect(s.record('tp-close')).toMatchObject({ state: 'confirmed', attempts: 1 });
      },
    );
  }, 120_000);

  it('deadlines expire during the outage: nothing stale is written, every command ends honestly', async () => {
    await scenario(
      'deadlines',
      0xdead,
      { travelMs: 500, warm: true },
      async (s) => {
        const site = s.cs.site;
        const sent = s.send({
          key: 'dl-open',
          device: 'mb-valve-1',
          action: 'open',
          via: 'both',
          ttlMs: 6_000,
        });
        // Accepted behind it (claimed after it, never dispatched before the kill), short-lived.
        await journalUntil(s, 'dl-open', () => true, 'dl-open claimed');
        s.send({
          key: 'dl-close',
          device: 'mb-valve-1',
          action: 'close',
          via: 'mqtt',
          ttlMs: 1_500,
        });
        // Dispatched, its write lost on the link, short-lived.
        site.plant.device('mb-valve-2').setFault({ kind: 'reset', when: 'before', on: 'write' });
        // Long enough to be dispatched on a busy machine (two test files at a time on two cores).
        s.send({ key: 'dl-lost', device: 'mb-valve-2', action: 'open', ttlMs: 4_000 });
        expect(await s.reach(sent, 'readback', 50)).toBe('readback');
        await journalUntil(s, 'dl-lost', (r) => r.seq !== null, 'dl-lost dispatched');
        await journalUntil(s, 'dl-close', () => true, 'dl-close claimed');
        const inDoubt = await s.kill();
        site.plant.device('mb-valve-2').clearFault('reset');
        // Sent while the gateway is down: queued at the broker / refused at the door, retried.
        s.send({
          key: 'dl-queued',
          device: 'mb-valve-2',
          action: 'open',
          via: 'mqtt',
          ttlMs: 1_200,
        });
        s.send({
          key: 'dl-late',
          device: 'mb-actuator',
          action: 'move',
          position: 40,
          ttlMs: 1_200,
        });
        // The outage outlasts every short deadline, dl-lost's included.
        const lostDeadline = s.record('dl-lost')?.deadline ?? Date.now();
        await sleep(Math.max(2_600, lostDeadline - Date.now() + 200));
        await s.restart(inDoubt);
      },
      (s) => {
        const plant = s.cs.site.plant;
        expect(s.record('dl-open')).toMatchObject({ state: 'confirmed', attempts: 1 });
        expect(s.record('dl-close')).toMatchObject({ state: 'rejected', code: 'STALE_COMMAND' });
        expect(s.record('dl-queued')).toMatchObject({ state: 'rejected', code: 'STALE_COMMAND' });
        expect(s.record('dl-late')).toMatchObject({ state: 'rejected', code: 'STALE_COMMAND' });
        const lost = s.record('dl-lost')!;
        expect(lost).toMatchObject({ state: 'failed', code: 'DEVICE_UNREACHABLE' });
        expect(plant.device('mb-valve-2').counters.writesReceived).toBe(0);
        expect(plant.device('mb-actuator').counters.writesReceived).toBe(0);
      },
    );
  }, 120_000);

  it('killed right after the dispatched commit, the write held back on the link: it lands, one write, confirmed', async () => {
    // A guard longer than the link can hold a write (the profile's contract), so that the held
    // write lands after the new process took the command up and before the guard runs out.
    const guardMs = 3_000;
    await scenario(
      'held-write',
      0x4e1d,
      { travelMs: 300, timing: { redispatchGuardMs: guardMs }, warm: true },
      async (s) => {
        const valve = s.cs.site.plant.device('mb-valve-1');
        valve.setFault({ kind: 'latency', ms: 2_000, when: 'before', on: 'write' });
        const sent = s.send({
          key: 'held-open',
          device: 'mb-valve-1',
          action: 'open',
          via: 'both',
          ttlMs: 15_000,
        });
        expect(await s.reach(sent, 'dispatched', 0)).toBe('dispatched');
        // The dispatched commit comes before the write leaves the daemon: killed on the commit, a
        // loaded machine's daemon had not sent it yet. Killed once the PLC's front end holds it.
        await until(() => valve.writers.length > 0, 'the write held on the link', 15_000);
        const killing = s.kill();
        // SIGKILL has been sent (synchronously, above): what the PLC had taken by then.
        const takenAtKill = valve.counters.writesReceived;
        const inDoubt = await killing;
        valve.clearFault('latency');
        expect(takenAtKill).toBe(0);
        await s.restart(inDoubt);
      },
      (s) => {
        const r = s.record('held-open')!;
        expect(s.cs.site.plant.device('mb-valve-1').writesWithSeq(r.seq!)).toBe(1);
        expect(r.state).toBe('confirmed');
      },
    );
  }, 120_000);

  it('power-wiped write: a PLC power cycle loses a write it acknowledged while the daemon is down; not sent again', async () => {
    // Found by this campaign (seed 0x51ce2026, run 429): the PLC showed its power-up echo 0
    // before the write and again after the power cycle had wiped it, and the new daemon
    // "proved" it not applied and sent it again (two writes with one sequence number). Since
    // c88f6b8 the power-up echo proves nothing across a reconnect (src/core/redispatch.ts).
    // The write must still be held when the PLC loses power: the hold spans the daemon's kill
    // and the power cycle. With the campaign's 700 ms guard the hold was 600 ms, which a busy
    // machine overran once in CI (the write was taken before the power cycle, so the scenario's
    // premise failed). A guard of 3 s, as in the held-write scenario, leaves room.
    const guardMs = 3_000;
    await scenario(
      'power-wiped-write',
      0x9a11,
      { travelMs: 400, timing: { redispatchGuardMs: guardMs } },
      async (s) => {
        const valve = s.cs.site.plant.device('mb-valve-1');
        expect(valve.seqEcho).toBe(0);
        // Within the profile's contract: the controller takes a write within the guard.
        valve.setFault({ kind: 'hold', ms: guardMs - 100 });
        const sent = s.send({ key: 'wiped-open', device: 'mb-valve-1', action: 'open' });
        expect(await s.reach(sent, 'written')).toBe('written');
        const inDoubt = await s.kill();
        s.cs.site.plant.plc('mb').powerCycle({ offMs: 0 });
        expect(valve.writeLog.map((w) => w.outcome)).toEqual(['power-cycle']);
        await s.restart(inDoubt);
      },
      (s) => {
        const r = s.record('wiped-open')!;
        const valve = s.cs.site.plant.device('mb-valve-1');
        expect(valve.writesWithSeq(r.seq!)).toBe(1);
        expect(valve.snapshot().state).toBe('CLOSED');
        expect(r).toMatchObject({ state: 'failed', attempts: 1 });
      },
    );
  }, 120_000);
});
