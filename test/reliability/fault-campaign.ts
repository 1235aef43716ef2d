import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect } from 'vitest';
import { TestClient, mosquittoAvailable, type Received } from '../helpers/mosquitto.js';
import { Site } from './site.js';
import {
  mountTmpfs,
  settledResult,
  tmpfsAvailable,
  unmount,
  until,
  writesOf,
  type ResultDoc,
} from './support.js';

/**
 * The site of the fault campaign (issue 10; faults.test.ts, faults-journal.test.ts): the real
 * `sluiced` process against sluice-sim (Modbus, and OPC UA where the file asks for it) and a
 * real Mosquitto, with the journal on a small real tmpfs (as root) that a test can fill or make
 * read-only, and two persistent MQTT sessions (a watcher of results and status, a publisher).
 * Every verdict is taken from ground truth: the simulators' write logs (per sequence number)
 * and the journal. The campaign is two files, each on a site of its own, so that they go to
 * two workers at once.
 */

export const real = mosquittoAvailable();
export const tmpfs = real && tmpfsAvailable();

export const GW = 'campaign';
export const RESULTS = `sluice/${GW}/result/`;
export const DAEMON_CLIENT = `sluice-${GW}`;

export interface Tally {
  readonly commands: number;
  readonly writes: number;
  readonly duplicates: number;
  readonly foreign: number;
}

/** One file's campaign: its site, clients and helpers, valid from beforeAll on. */
export interface FaultCampaign {
  readonly site: Site;
  readonly stateDir: string;
  readonly watcher: TestClient;
  /** A result published on the result topic for a key (replay or not, when asked). */
  readonly mqttResult: (key: string, replayed?: boolean, ms?: number) => Promise<ResultDoc>;
  readonly publish: (
    device: string,
    payload: Record<string, unknown>,
    options?: Parameters<TestClient['publish']>[2],
  ) => Promise<void>;
  /** A command over HTTPS that must end confirmed, with exactly one write (or none: a no-op). */
  readonly confirmed: (key: string, command: Record<string, unknown>) => Promise<ResultDoc>;
  readonly startTally: () => Tally;
  /** A scenario's line: journaled commands, the bridge's controller writes, duplicates absorbed. */
  readonly report: (start: Tally, scenario: string, outcome: string) => void;
}

/** What a file's site holds besides the Modbus PLC (valves mb-valve-1, mb-valve-2, mb-actuator). */
export interface CampaignOptions {
  /**
   * An OPC UA PLC too (valve `ua-valve`). Only where a scenario uses it: with an OPC UA PLC in
   * its configuration every start of sluiced loads node-opcua (seconds of CPU), and the plant
   * starts an OPC UA server.
   */
  readonly opcua: boolean;
}

/**
 * A describe block on a site of its own. Each scenario starts from a plant without faults,
 * every valve in REMOTE, a daemon running; the block's summary is printed at its end.
 */
export function faultCampaign(
  title: string,
  options: CampaignOptions,
  body: (f: FaultCampaign) => void,
): void {
  describe.runIf(real)(title, () => {
    let site: Site;
    let stateDir: string;
    let watcher: TestClient;
    let publisher: TestClient;
    const releasers: (() => Promise<void>)[] = [];
    /** One line per scenario for the summary printed at the end. */
    const summary: {
      scenario: string;
      commands: number;
      writes: number;
      duplicates: number;
      outcome: string;
    }[] = [];

    beforeAll(async () => {
      site = await Site.start({ opcua: options.opcua, gatewayId: GW });
      releasers.push(() => site.close());
      stateDir = join(site.dir, 'state');
      if (tmpfs) {
        // The journal lives on a small real filesystem that the test can fill or make read-only.
        mkdirSync(stateDir);
        mountTmpfs(stateDir, '16m');
        releasers.push(async () => {
          await site.kill();
          unmount(stateDir);
        });
      }
      await site.startDaemon();
      // Persistent sessions: they keep their subscriptions and queued messages across a broker
      // restart (mosquitto persists them).
      watcher = await TestClient.connect(site.broker.url, {
        clientId: 'campaign-watcher',
        clean: false,
        properties: { sessionExpiryInterval: 3_600 },
      });
      releasers.push(() => watcher.end());
      await watcher.subscribe(`${RESULTS}#`);
      await watcher.subscribe(`sluice/${GW}/status`);
      publisher = await TestClient.connect(site.broker.url, {
        clientId: 'campaign-publisher',
        clean: false,
        properties: { sessionExpiryInterval: 3_600 },
      });
      releasers.push(() => publisher.end());
      await ready(site);
    }, 90_000);

    afterEach(async () => {
      for (const plc of site.plant.plcs) plc.clearFaults();
      for (const device of site.plant.devices()) {
        device.clearFaults();
        device.setLocal(false);
      }
      if (!site.running) await site.startDaemon();
    }, 60_000);

    afterAll(async () => {
      // Last in, first out: clients, then the daemon and the tmpfs, then the site.
      for (let r = releasers.pop(); r !== undefined; r = releasers.pop()) await r();
      if (summary.length > 0) {
        console.log(
          [
            `${title} (violations of I1, I2, I3, I5, attribution: 0 — each scenario asserts it)`,
            `  ${'scenario'.padEnd(50)} commands  writes  dups  outcome`,
            ...summary.map(
              (s) =>
                `  ${s.scenario.padEnd(50)} ${String(s.commands).padStart(8)} ${String(s.writes).padStart(7)} ${String(s.duplicates).padStart(5)}  ${s.outcome}`,
            ),
          ].join('\n'),
        );
      }
    }, 60_000);

    const foreignWrites = (): number =>
      [...site.foreignWrites.values()].reduce((n, seqs) => n + seqs.size, 0);

    body({
      get site() {
        return site;
      },
      get stateDir() {
        return stateDir;
      },
      get watcher() {
        return watcher;
      },
      mqttResult: async (key, replayed = false, ms = 30_000) => {
        const message = await watcher.waitFor(
          (m) => isResult(m) && m.json().key === key && m.json().replayed === replayed,
          ms,
          `MQTT result for ${key}${replayed ? ' (replay)' : ''}`,
        );
        return message.json() as unknown as ResultDoc;
      },
      publish: async (device, payload, options = {}) => {
        await publisher.publish(`sluice/${GW}/cmd/${device}`, payload, options);
      },
      confirmed: async (key, command) => {
        const answer = await site.postCommand(key, command);
        expect([200, 202], answer.body).toContain(answer.status);
        const result = await settledResult(site, key);
        expect(result, JSON.stringify(result)).toMatchObject({ state: 'confirmed', code: 'OK' });
        expect(writesOf(site, result.device, result.seq)).toBe(result.seq === null ? 0 : 1);
        return result;
      },
      startTally: () => {
        return { ...site.counts(), foreign: foreignWrites() };
      },
      report: (start, scenario, outcome) => {
        const now = site.counts();
        summary.push({
          scenario,
          commands: now.commands - start.commands,
          writes: now.writes - start.writes - (foreignWrites() - start.foreign),
          duplicates: now.duplicates - start.duplicates,
          outcome,
        });
      },
    });
  });
}

function isResult(m: Received): boolean {
  return m.topic.startsWith(RESULTS);
}

/** Until /readyz shows MQTT connected and every device read. */
async function ready(site: Site): Promise<void> {
  await until(
    async () => {
      const answer = await site.https('GET', '/readyz');
      const body = JSON.parse(answer.body) as { checks: Record<string, { ok: boolean }> };
      return Object.entries(body.checks).every(([name, c]) => c.ok || name === 'journal')
        ? true
        : undefined;
    },
    30_000,
    'the daemon ready',
    100,
  );
}
