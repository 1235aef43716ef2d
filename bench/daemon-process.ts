/**
 * `sluiced` as the bench runs it: the daemon's own composition root (Daemon.start) on a site
 * file, in a process of its own, with the probes of probes.ts on the journal and the Modbus
 * endpoint, and the fsync shim preloaded when the bench could build it. On request it reports
 * its event-loop utilisation, CPU time and the probes since the last `mark`, and keeps the
 * probes' events (a timeline) between `timelineStart` and `timelineTake`.
 */
import { ServerResponse } from 'node:http';
import { performance, type EventLoopUtilization } from 'node:perf_hooks';
import { MqttClient } from 'mqtt';
import { loadConfig } from '../src/config/config.js';
import { Daemon } from '../src/daemon/daemon.js';
import { daemonLogger } from '../src/daemon/log.js';
import { ModbusEndpoint } from '../src/drivers/modbus.js';
import { SqliteJournal } from '../src/journal/sqlite-journal.js';
import { GroupCommit } from '../src/journal/group-commit.js';
import { onStop, ready, serve } from './child-ipc.js';
import {
  instrumentAnswers,
  instrumentMethods,
  instrumentModbusEndpoint,
  probeReport,
  resetProbes,
  type ProbeReport,
} from './probes.js';
import { startTimeline, takeTimeline, writeTraceAtExit, type ProbeEvent } from './trace.js';

export interface DaemonReady {
  readonly https: { readonly host: string; readonly port: number } | null;
  /** Wall-clock ms at which Daemon.start resolved. */
  readonly startedAt: number;
}

export interface DaemonStats {
  readonly elapsedMs: number;
  /** Share of the elapsed time the event loop was busy (perf_hooks). */
  readonly eventLoopUtilisation: number;
  readonly cpuUserMs: number;
  readonly cpuSystemMs: number;
  readonly heapUsedMiB: number;
  readonly probes: ProbeReport;
}

const configPath = process.argv[2];
if (configPath === undefined) throw new Error('usage: daemon-process.ts <site file>');

writeTraceAtExit('daemon');
instrumentMethods(SqliteJournal.prototype);
// The journal's durable() hands on to its group commit's: counted once, as the journal's.
instrumentMethods(GroupCommit.prototype, ['durable']);
instrumentModbusEndpoint(ModbusEndpoint.prototype);
instrumentAnswers(ServerResponse.prototype, MqttClient.prototype);

const config = loadConfig(configPath, { env: {} });
// The logger sluiced makes (src/daemon/cli.ts), at the site's level: the shipped default, so
// that the lines a command logs (accepted, dispatched, settled, answered) are paid for here
// as on a gateway. stdout is the daemon's log file (bench/children.ts).
const daemon = await Daemon.start(config, { logger: await daemonLogger(config.log.level) });
const startedAt = Date.now();

let markAt = performance.now();
let markElu: EventLoopUtilization = performance.eventLoopUtilization();
let markCpu = process.cpuUsage();

serve({
  mark: () => {
    resetProbes();
    markAt = performance.now();
    markElu = performance.eventLoopUtilization();
    markCpu = process.cpuUsage();
  },
  stats: (): DaemonStats => {
    const elu = performance.eventLoopUtilization(markElu);
    const cpu = process.cpuUsage(markCpu);
    return {
      elapsedMs: performance.now() - markAt,
      eventLoopUtilisation: elu.utilization,
      cpuUserMs: cpu.user / 1000,
      cpuSystemMs: cpu.system / 1000,
      heapUsedMiB: process.memoryUsage().heapUsed / 1048576,
      probes: probeReport(),
    };
  },
  // Every probe event from now on, kept until taken (bench/phases/steps.ts).
  timelineStart: () => {
    startTimeline();
  },
  timelineTake: (): ProbeEvent[] => takeTimeline(),
});

onStop(() => daemon.stop());

const info: DaemonReady = { https: daemon.https, startedAt };
ready(info);
