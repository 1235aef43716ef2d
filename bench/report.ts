import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { format, resolveConfig } from 'prettier';
import { BENCH_DIR } from './paths.js';
import { STEPS, type StepName } from './phases/steps.js';
import type { DaemonLoad, Results, Skipped, StepTime, Target, Throughput } from './results.js';
import { isSkipped } from './results.js';
import type { Distribution } from './stats.js';
import { round } from './stats.js';

/**
 * The bench's report: the targets of issue 14 judged on the run's figures, the tables (the
 * same rows on the terminal and in docs/PERFORMANCE.md) and the document itself, whose prose
 * lives in bench/PERFORMANCE.template.md and whose numbers come from the run.
 */

interface Table {
  readonly head: readonly string[];
  readonly rows: readonly (readonly string[])[];
}

const MB = 1e6;
const MiB = 2 ** 20;

function n(value: number | null | undefined, unit = ''): string {
  if (value === null || value === undefined || Number.isNaN(value)) return '—';
  const v = round(value);
  const text = Math.abs(v) >= 10_000 ? v.toLocaleString('en-US') : String(v);
  return unit === '' ? text : `${text} ${unit}`;
}

const pp = (d: Distribution): string => `${n(d.p50)} / ${n(d.p99)}`;

function target(
  name: string,
  goal: string,
  measured: number | null,
  unit: string,
  pass: (v: number) => boolean,
): Target {
  if (measured === null || Number.isNaN(measured)) {
    return { name, target: goal, measured: 'not measured', pass: null };
  }
  return { name, target: goal, measured: n(measured, unit), pass: pass(measured) };
}

/** Every target of issue 14, with the run's measured value. */
export function evaluateTargets(r: Omit<Results, 'targets'>): Target[] {
  const t: Target[] = [];
  const intakes = [
    ['HTTPS', r.endToEnd.https, r.replay.https],
    ['MQTT', r.endToEnd.mqtt, r.replay.mqtt],
  ] as const;
  for (const [name, e2e, replay] of intakes) {
    if (isSkipped(e2e)) {
      t.push({ name: `${name}: confirmed result`, target: '—', measured: e2e.skipped, pass: null });
      continue;
    }
    t.push(
      target(`${name}: confirmed result p50`, '≤ 10 ms', e2e.latencyMs.p50, 'ms', (v) => v <= 10),
    );
    t.push(
      target(`${name}: confirmed result p99`, '≤ 25 ms', e2e.latencyMs.p99, 'ms', (v) => v <= 25),
    );
    t.push(
      target(`${name}: ratio to the raw driver, p50`, '≤ 1.25', e2e.ratioP50, '', (v) => v <= 1.25),
    );
    if (!isSkipped(replay)) {
      t.push(target(`${name}: replay p99`, '≤ 2 ms', replay.latencyMs.p99, 'ms', (v) => v <= 2));
      t.push(
        target(
          `${name}: controller writes during replays`,
          '0',
          replay.controllerWrites,
          '',
          (v) => v === 0,
        ),
      );
    }
  }
  t.push(
    target(
      'throughput, 100 valves, durable journal',
      '≥ 2 000 confirmed/s',
      r.throughput.confirmedPerSecond,
      '/s',
      (v) => v >= 2000,
    ),
  );
  const tm = r.throughputMqtt;
  if (tm !== undefined) {
    t.push(
      isSkipped(tm)
        ? { name: 'throughput over MQTT', target: '—', measured: tm.skipped, pass: null }
        : target(
            'throughput over MQTT (one connection), 100 valves, durable journal',
            '≥ 2 000 confirmed/s',
            tm.confirmedPerSecond,
            '/s',
            (v) => v >= 2000,
          ),
    );
  }
  t.push({
    name: 'fsyncs per confirmed command',
    target: 'only what durability needs',
    measured:
      r.throughput.fsyncsPerCommand === null ? r.fsyncCounting : n(r.throughput.fsyncsPerCommand),
    pass: null,
  });
  const s = r.journalScale;
  t.push(
    target(
      `journal size per retained command (${n(s.large.keys)} keys)`,
      '≤ 1 KB',
      s.large.bytesPerCommand,
      'B',
      (v) => v <= 1024,
    ),
  );
  t.push(
    target(
      `lookup p99, ${n(s.large.keys)} vs ${n(s.small.keys)} keys`,
      '≤ 2×',
      s.lookupP99Ratio,
      '×',
      (v) => v <= 2,
    ),
  );
  t.push(
    target(
      `daemon RSS at ${n(s.large.keys)} keys`,
      '≤ 200 MB',
      (s.daemon.rssMiB * MiB) / MB,
      'MB',
      (v) => v <= 200,
    ),
  );
  const rec = r.recovery;
  const settledTarget = (x: Results['recovery'], judged: boolean): Target => {
    const name = `recovery: ${n(x.commands)} open commands all settled${boundSaid(x)}`;
    const row =
      x.allSettledMs === null
        ? {
            name,
            target: '≤ 10 s',
            measured: `${n(x.stillOpen)} still open after ${x.timeoutSeconds} s (${n(x.settledPerSecond)} settled/s)`,
            pass: false,
          }
        : target(name, '≤ 10 s', x.allSettledMs / 1000, 's', (v) => v <= 10);
    return judged ? row : { ...row, pass: null };
  };
  t.push(settledTarget(rec, true));
  // The shipped profile as it is, beside it: shown, not judged (its bound is the confirm
  // timeout, which a plant whose controller takes every write at its next scan need not wait).
  const shipped = r.recoveryShipped;
  if (shipped !== undefined && !isSkipped(shipped)) t.push(settledTarget(shipped, false));
  t.push({
    name: 'recovery: HTTPS answers before the backlog is worked off',
    target: 'listens first',
    measured:
      rec.listenMs === null
        ? 'no answer'
        : `answered after ${n(rec.listenMs, 'ms')} (empty journal: ${n(rec.listenEmptyMs, 'ms')}); backlog ${rec.allSettledMs === null ? `not done within ${rec.timeoutSeconds} s` : `done after ${n(rec.allSettledMs, 'ms')}`}`,
    pass:
      rec.listenMs === null
        ? false
        : rec.allSettledMs === null
          ? true
          : rec.listenMs < rec.allSettledMs,
  });
  return t;
}

function journalRows(load: DaemonLoad, per: number, unit: string): string[][] {
  return Object.entries(load.journal)
    .sort((a, b) => b[1].totalMs - a[1].totalMs)
    .map(([name, m]) => [
      name,
      n(m.calls / per),
      n(m.meanMs, 'ms'),
      n(m.totalMs / per, `ms/${unit}`),
    ]);
}

function modbusRows(load: DaemonLoad, per: number, unit: string): string[][] {
  const m = load.modbus;
  return [
    ['Modbus reads', n(m.reads / per, `/${unit}`)],
    ['Modbus writes', n(m.writes / per, `/${unit}`)],
    [
      'wait in the PLC connection’s queue, p50 / p99',
      m.queueWaitMs === null ? '—' : `${pp(m.queueWaitMs)} ms`,
    ],
    [
      'request round trip (event loop included), p50 / p99',
      m.roundTripMs === null ? '—' : `${pp(m.roundTripMs)} ms`,
    ],
  ];
}

function fsyncRows(load: DaemonLoad, per: number, unit: string): string[][] {
  if (isSkipped(load.fsyncs)) return [['fsyncs', load.fsyncs.skipped]];
  const f = load.fsyncs;
  return [
    ['fsyncs (all threads)', n((f.mainCalls + f.otherCalls) / per, `/${unit}`)],
    ['fsync time on the main thread', n(f.mainMs / per, `ms/${unit}`)],
    ['fsync time on other threads', n(f.otherMs / per, `ms/${unit}`)],
  ];
}

/** Every table of the report, by name. */
export function tables(r: Results): Record<string, Table> {
  const b = r.baseline;
  const m = r.machine;
  const e2e = r.endToEnd;
  const t = r.throughput;
  const s = r.journalScale;
  const rec = r.recovery;
  const out: Record<string, Table> = {};
  out.machine = {
    head: ['', ''],
    rows: [
      ['cores', String(m.cores)],
      ['CPU', m.cpuModel],
      ['memory', `${m.memoryGiB} GiB`],
      ['kernel', m.kernel],
      ['Node', m.node],
      ['SQLite', m.sqlite],
      ['scratch filesystem (journals)', m.filesystem],
      ['load average (1 min) at start / end', `${m.loadAtStart} / ${m.loadAtEnd}`],
      [
        'CPU time stolen by the hypervisor (steal, /proc/stat)',
        m.stealShare === null || m.stealShare === undefined ? 'not known' : pct(m.stealShare),
      ],
      [
        'wall clock against the monotonic clock over the run',
        m.wallClockStepMs === null || m.wallClockStepMs === undefined
          ? 'not known'
          : Math.abs(m.wallClockStepMs) < 5
            ? `${m.wallClockStepMs} ms: steady`
            : `${m.wallClockStepMs} ms: the wall clock stepped (see below)`,
      ],
      ['run', `${r.startedAt}, ${n(r.durationSeconds, 's')}`],
      ['fsync counting', r.fsyncCounting],
      [
        'every fsync made to last at least (an emulated slower disk, --fsync-delay-ms)',
        typeof r.settings.fsyncDelayMs === 'number' && r.settings.fsyncDelayMs > 0
          ? `${r.settings.fsyncDelayMs} ms: the figures are this disk's, not the machine's`
          : 'no: the disk as it is',
      ],
    ],
  };
  const opcua = isSkipped(b.opcua)
    ? [['raw OPC UA driver: write, read back until confirmed', b.opcua.skipped, '', '']]
    : [
        [
          'raw OPC UA driver: write, read back until confirmed',
          pp(b.opcua.confirmMs),
          n(b.opcua.confirmMs.n),
          `ack ${n(b.opcua.ackMs.p50, 'ms')}; ${n(b.opcua.readsPerCommand)} reads`,
        ],
      ];
  out.baseline = {
    head: ['', 'p50 / p99 (ms)', 'samples', ''],
    rows: [
      [
        'simulator alone: one Modbus read (FC3, 8 registers)',
        pp(b.simulator.readMs),
        n(b.simulator.readMs.n),
        'one connection',
      ],
      [
        'simulator capacity',
        '—',
        '—',
        `${n(b.simulator.capacity.requestsPerSecond, 'requests/s')} over ${b.simulator.capacity.connections} connections, ${n(b.simulator.capacity.cpuCores)} cores`,
      ],
      ...(b.disk === undefined
        ? []
        : [
            [
              `disk alone: ${n(b.disk.bytes / 1024)} KiB (a commit's WAL frames) written over, then fsync`,
              pp(b.disk.fsyncMs),
              n(b.disk.fsyncMs.n),
              `max ${n(b.disk.fsyncMs.max, 'ms')}; the journals' filesystem`,
            ],
            ...(b.disk.fsyncAfterIdleMs === undefined || b.disk.idleMs === undefined
              ? []
              : [
                  [
                    `disk alone, the same after ${n(b.disk.idleMs, 'ms')} idle (a scan's wait)`,
                    pp(b.disk.fsyncAfterIdleMs),
                    n(b.disk.fsyncAfterIdleMs.n),
                    `max ${n(b.disk.fsyncAfterIdleMs.max, 'ms')}; as a lone command's settlement`,
                  ],
                ]),
          ]),
      [
        'raw Modbus driver: write, read back until confirmed',
        pp(b.modbus.confirmMs),
        n(b.modbus.confirmMs.n),
        `ack ${n(b.modbus.ackMs.p50, 'ms')}; ${n(b.modbus.readsPerCommand)} reads`,
      ],
      ...opcua,
      [
        'plant: write received → scan that takes it (write log)',
        pp(b.plant.takeWaitMs),
        n(b.plant.takeWaitMs.n),
        `scan ${b.plant.scanMs} ms`,
      ],
      [
        'plant: expected share (½ scan to be taken + the travel in whole scans)',
        `${n(b.plant.expectedMeanMs)} mean, ${n(b.plant.expectedMaxMs)} max`,
        '—',
        `travel ${b.plant.travelMs} ms`,
      ],
    ],
  };
  const e2eRow = (name: string, x: Results['endToEnd']['https'] | { skipped: string }): string[] =>
    isSkipped(x)
      ? [name, x.skipped, '', '', '', '']
      : [
          name,
          pp(x.latencyMs),
          `${n(x.ratioP50)} / ${n(x.ratioP99)}`,
          `${n(x.overheadP50Ms)} / ${n(x.overheadP99Ms)}`,
          n(x.latencyMs.n),
          n(x.notConfirmed),
        ];
  out.e2e = {
    head: [
      'confirmed command',
      'p50 / p99 (ms)',
      '÷ raw driver, p50 / p99',
      'bridge’s own ms, p50 / p99',
      'commands',
      'not confirmed',
    ],
    rows: [e2eRow('HTTPS (keep-alive)', e2e.https), e2eRow('MQTT (QoS 1)', e2e.mqtt)],
  };
  const stage = (x: Results['endToEnd']['https'] | { skipped: string }): string[] => {
    if (isSkipped(x)) return ['—', '—', '—', '—', '—', '—'];
    if (isSkipped(x.stages)) return [x.stages.skipped, '', '', '', '', ''];
    const maybe = (v: number | null | undefined): string => (v == null ? '—' : n(v));
    return [
      n(x.stages.intakeMs),
      n(x.stages.acceptedToDispatchedMs),
      n(x.stages.dispatchedToSettledMs),
      maybe(x.stages.dispatchedToTakenMs),
      maybe(x.stages.takenToSettledMs),
      n(x.stages.settledToAnswerMs),
    ];
  };
  const hs = stage(e2e.https);
  const ms = stage(e2e.mqtt);
  out.ratioFloor = ratioFloor(r);
  out.stages = {
    head: ['stage (mean ms, from the journal’s timestamps)', 'HTTPS', 'MQTT'],
    rows: [
      ['client sends → accepted (intake, parse, auth)', hs[0] ?? '', ms[0] ?? ''],
      ['accepted → dispatched (claim commit, queue, fresh read, checks)', hs[1] ?? '', ms[1] ?? ''],
      ['dispatched → settled (dispatch commit, write, plant, readbacks)', hs[2] ?? '', ms[2] ?? ''],
      ['  of which: dispatched → taken by a scan (write log)', hs[3] ?? '', ms[3] ?? ''],
      ['  of which: taken by a scan → settled (readback, settle)', hs[4] ?? '', ms[4] ?? ''],
      ['settled → client has the answer (settle commit, answer/publish)', hs[5] ?? '', ms[5] ?? ''],
    ],
  };
  out.steps = stepsTable(e2e);
  if (!isSkipped(e2e.https)) {
    const per = e2e.https.latencyMs.n;
    out.e2eDaemon = {
      head: ['per HTTPS command, one at a time', 'calls', 'mean', 'total'],
      rows: [
        ...journalRows(e2e.https.daemon, per, 'cmd'),
        ...fsyncRows(e2e.https.daemon, per, 'cmd').map((row) => [
          row[0] ?? '',
          '',
          '',
          row[1] ?? '',
        ]),
        ...modbusRows(e2e.https.daemon, per, 'cmd').map((row) => [
          row[0] ?? '',
          '',
          '',
          row[1] ?? '',
        ]),
        ['event-loop utilisation', '', '', n(e2e.https.daemon.eventLoopUtilisation)],
      ],
    };
  }
  const replayRow = (
    name: string,
    x: Results['replay']['https'] | { skipped: string },
  ): string[] =>
    isSkipped(x)
      ? [name, x.skipped, '', '', '', '', '', '']
      : [
          name,
          pp(x.latencyMs),
          n(x.latencyMs.n),
          n(x.notReplayed),
          n(x.controllerWrites),
          isSkipped(x.daemon.fsyncs)
            ? '—'
            : n((x.daemon.fsyncs.mainCalls + x.daemon.fsyncs.otherCalls) / x.latencyMs.n),
          isSkipped(x.cpuWait)
            ? '—'
            : `${n(x.cpuWait.overTarget)} (${n(x.cpuWait.overTargetWaited)})`,
          isSkipped(x.cpuWait)
            ? x.cpuWait.skipped
            : `${pp(x.cpuWait.withoutWaitMs)} (${n(x.cpuWait.withoutWaitMs.n)})`,
        ];
  out.replay = {
    head: [
      'replay of a settled key',
      'p50 / p99 (ms)',
      'replays',
      'not replayed',
      'controller writes',
      'fsyncs/replay',
      'over 2 ms (of them, waited for a CPU)',
      'p50 / p99 without a CPU wait (replays)',
    ],
    rows: [replayRow('HTTPS', r.replay.https), replayRow('MQTT', r.replay.mqtt)],
  };
  out.throughput = throughputTable(t, r.settings.warmupSeconds);
  const tm = r.throughputMqtt ?? { skipped: 'not measured (results from before 2026-12-04)' };
  out.throughputMqtt = isSkipped(tm)
    ? { head: ['', ''], rows: [['confirmed commands per second', tm.skipped]] }
    : throughputTable(tm, r.settings.warmupSeconds);
  out.throughputJournal = {
    head: ['journal method (throughput)', 'calls/command', 'mean', 'time/command'],
    rows: journalRows(t.daemon, Math.max(1, t.confirmed), 'cmd'),
  };
  const point = (x: Results['journalScale']['small']): string[] => [
    n(x.keys),
    n(x.bytesPerCommand, 'B'),
    n(x.fileBytes / MiB, 'MiB'),
    pp(x.claimMs),
    pp(x.dispatchMs),
    pp(x.settleMs),
    pp(x.lookupMs),
  ];
  out.scale = {
    head: [
      'retained keys',
      'journal per command',
      'journal file',
      'claim p50 / p99 (ms)',
      'dispatch p50 / p99',
      'settle p50 / p99',
      'lookup p50 / p99',
    ],
    rows: [point(s.small), point(s.large)],
  };
  out.scaleDaemon = {
    head: ['', ''],
    rows: [
      [
        `daemon RSS / peak RSS at ${n(s.large.keys)} keys`,
        `${n(s.daemon.rssMiB, 'MiB')} / ${n(s.daemon.peakRssMiB, 'MiB')}`,
      ],
      ['HTTPS answers after start', n(s.daemon.listenMs, 'ms')],
      [
        `confirmed command over HTTPS, p50 / p99 (${s.daemon.commands})`,
        `${pp(s.daemon.commandLatencyMs)} ms`,
      ],
      [
        `GET /v1/commands/{random retained key}, p50 / p99 (${s.daemon.lookups})`,
        `${pp(s.daemon.lookupLatencyMs)} ms`,
      ],
      [
        'lookup p99 ratio / claim p99 ratio (large ÷ small)',
        `${n(s.lookupP99Ratio)} / ${n(s.claimP99Ratio)}`,
      ],
      ['fill', `${n(s.templates)} templates; ${s.fill.method}; ${n(s.fill.seconds, 's')}`],
    ],
  };
  out.recovery = recoveryTable(rec, r.recoveryShipped);
  out.targets = {
    head: ['target (issue 14)', 'goal', 'measured', ''],
    rows: r.targets.map((x) => [
      x.name,
      x.target,
      x.measured,
      x.pass === null ? '—' : x.pass ? 'PASS' : 'MISS',
    ]),
  };
  return out;
}

function markdownTable(t: Table): string {
  const esc = (s: string): string => s.replace(/\|/g, '\\|');
  const lines = [
    `| ${t.head.map(esc).join(' | ')} |`,
    `|${t.head.map(() => '---').join('|')}|`,
    ...t.rows.map((row) => `| ${row.map(esc).join(' | ')} |`),
  ];
  return lines.join('\n');
}

function textTable(title: string, t: Table): string {
  const rows = [t.head, ...t.rows];
  const widths = t.head.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  const line = (r: readonly string[]): string =>
    r
      .map((cell, i) => cell.padEnd(widths[i] ?? 0))
      .join('  ')
      .trimEnd();
  const head = t.head.some((h) => h !== '') ? [line(t.head)] : [];
  return [title, ...head, ...t.rows.map(line), ''].join('\n');
}

/** What each step of a command is (bench/phases/steps.ts), as the report's rows say it. */
const STEP_LABELS: Record<StepName, string> = {
  intake: 'client sends → claim begins (TLS and HTTP, or the broker; parse, auth)',
  claim: 'claim (journal insert, in the turn’s batch)',
  toFreshRead: 'claim → fresh read sent (the valve’s worker, the PLC queue)',
  freshRead: 'fresh read: Modbus round trip',
  checks: 'fresh read → dispatch (state machine, freshness, clocks)',
  dispatchWrite: 'dispatch (journal update with the sequence number)',
  dispatchBarrier: 'dispatch barrier: the batch’s COMMIT, fdatasync of the WAL',
  toWrite: 'barrier → write sent',
  write: 'write: Modbus round trip',
  plant: 'write acknowledged → taken by a scan (write log, ± 0.5 ms)',
  readbackPlacement: 'taken → confirming readback sent (its placement)',
  readback: 'confirming readback: Modbus round trip',
  settle: 'readback → settled (judged, journal update)',
  settleBarrier: 'settle barrier: the batch’s COMMIT, fdatasync of the WAL',
  answer: 'barrier → client has the answer (HTTP answer, or publish and broker)',
};

function stepsTable(e2e: Results['endToEnd']): Table {
  const of = (x: Results['endToEnd']['https'] | Skipped): Map<string, StepTime> | string => {
    if (isSkipped(x)) return x.skipped;
    if (isSkipped(x.steps)) return x.steps.skipped;
    return new Map(x.steps.steps.map((t) => [t.step, t]));
  };
  const columns = [of(e2e.https), of(e2e.mqtt)];
  const cell = (c: Map<string, StepTime> | string, step: StepName): string => {
    if (typeof c === 'string') return '—';
    const t = c.get(step);
    return t === undefined ? '—' : `${n(t.p50Ms)} / ${n(t.meanMs)}`;
  };
  const sum = (c: Map<string, StepTime> | string): string =>
    typeof c === 'string'
      ? c
      : `${n([...c.values()].reduce((total, t) => total + t.meanMs, 0))} (mean)`;
  const followed = (x: Results['endToEnd']['https'] | Skipped): string =>
    isSkipped(x) || isSkipped(x.steps)
      ? '—'
      : `${x.steps.commands} of ${x.latencyMs.n}; ${n(x.steps.latencyMeanMs)} (mean)`;
  return {
    head: ['step of a confirmed command (ms), p50 / mean', 'HTTPS', 'MQTT'],
    rows: [
      ...STEPS.map((step) => [STEP_LABELS[step], ...columns.map((c) => cell(c, step))]),
      ['all steps: the sum of their means', ...columns.map(sum)],
      ['commands followed; their latency', followed(e2e.https), followed(e2e.mqtt)],
      [
        'per command: the steps that wait for another party, p50 / mean',
        ...[e2e.https, e2e.mqtt].map((x) =>
          isSkipped(x) || isSkipped(x.steps)
            ? '—'
            : `${n(x.steps.waitsMs.p50)} / ${n(x.steps.waitsMs.mean)}`,
        ),
      ],
      [
        'per command: the daemon’s own steps, p50 / mean',
        ...[e2e.https, e2e.mqtt].map((x) =>
          isSkipped(x) || isSkipped(x.steps)
            ? '—'
            : `${n(x.steps.ownMs.p50)} / ${n(x.steps.ownMs.mean)}`,
        ),
      ],
    ],
  };
}

const TITLES: Record<string, string> = {
  machine: 'Machine',
  baseline: 'Baseline (no bridge)',
  e2e: 'End to end',
  ratioFloor: 'The ratio’s floor on this machine',
  stages: 'Where a command’s time goes',
  steps: 'A command step by step',
  e2eDaemon: 'Inside the daemon, per HTTPS command',
  replay: 'Replays',
  throughput: 'Throughput',
  throughputMqtt: 'Throughput over MQTT',
  throughputJournal: 'Journal time per command under load',
  scale: 'Journal scale',
  scaleDaemon: 'The daemon on the large journal',
  recovery: 'Recovery',
  targets: 'Targets',
};

export function renderTable(r: Results): string {
  const all = tables(r);
  return `${Object.entries(all)
    .map(([name, t]) => textTable(`== ${TITLES[name] ?? name} ==`, t))
    .join('\n')}\n`;
}

/** A share (0..1) as a percentage. */
/**
 * What the bridge's own time at p50 cannot go below on this machine, from parts measured in the
 * run: the intake's round trip with a claim (a replay: TLS and HTTP or the broker twice, the
 * duplicate's claim and answer — a command has all of it and more), the fresh read the state
 * machine checks against (I4: the simulator's own read), and the two barriers a command waits
 * for one after the other (I5: the disk's own fsync in a busy stream, the cheaper of its two
 * lines). Against it, what the ratio target allows: a quarter of the raw driver's p50.
 */
function ratioFloor(r: Results): Table {
  const b = r.baseline;
  const raw = b.modbus.confirmMs.p50;
  const fsync = b.disk?.fsyncMs.p50 ?? null;
  const read = b.simulator.readMs.p50;
  const replays = [r.replay.https, r.replay.mqtt].map((x) =>
    isSkipped(x) ? null : x.latencyMs.p50,
  );
  const floors = replays.map((p) => (p === null || fsync === null ? null : p + read + 2 * fsync));
  const allowed = 0.25 * raw;
  const cells = (f: (floor: number) => string): string[] =>
    floors.map((floor) => (floor === null ? '—' : f(floor)));
  return {
    head: ['bridge’s own time, p50 (ms)', 'HTTPS', 'MQTT'],
    rows: [
      [
        'a replay of a settled key: the intake’s round trip with a claim',
        ...replays.map((p) => n(p)),
      ],
      ['the fresh read before the check: the simulator’s read', n(read), n(read)],
      [
        'two barriers, one after the other: 2 × the disk’s fsync (busy stream)',
        n(fsync === null ? null : 2 * fsync),
        n(fsync === null ? null : 2 * fsync),
      ],
      ['floor (their sum)', ...cells((floor) => n(floor))],
      ['what the target allows: 0.25 × the raw driver', n(allowed), n(allowed)],
      [
        'the ratio’s floor: (raw driver + floor) ÷ raw driver',
        ...cells((floor) => {
          const ratio = (raw + floor) / raw;
          return `${n(ratio)}${ratio > 1.25 ? ': above 1.25' : ''}`;
        }),
      ],
    ],
  };
}

/** The cores' budget and the HTTPS intake's own window (absent in older results). */
/** A throughput phase's table (over HTTPS or MQTT). */
function throughputTable(t: Throughput, warmupSeconds: unknown): Table {
  const failures = Object.entries(t.failures);
  return {
    head: ['', ''],
    rows: [
      ['confirmed commands per second', n(t.confirmedPerSecond)],
      [
        t.intake === 'mqtt'
          ? 'clients (one valve each, one MQTT connection), window'
          : 'clients (one valve each), window',
        `${t.clients}, ${n(t.seconds, 's')} after ${String(warmupSeconds)} s warm-up`,
      ],
      ['confirmed in the window', n(t.confirmed)],
      ['latency p50 / p99', `${pp(t.latencyMs)} ms`],
      [
        'not confirmed',
        failures.length === 0 ? '0' : failures.map(([k, v]) => `${v}× ${k}`).join('; '),
      ],
      ['MQTT intake connected (results published)', t.mqttConnected ? 'yes' : 'no'],
      ['daemon event-loop utilisation', n(t.daemon.eventLoopUtilisation)],
      [
        'CPU time stolen by the hypervisor in the window',
        t.stealShare === null || t.stealShare === undefined ? 'not known' : pct(t.stealShare),
      ],
      [
        'CPU, cores: daemon / simulator / broker / bench clients',
        `${n(t.cpuCores.daemon)} / ${n(t.cpuCores.simulator)} / ${n(t.cpuCores.broker)} / ${n(t.cpuCores.bench)}`,
      ],
      ...budgetRows(t),
      ['fsyncs per confirmed command', n(t.fsyncsPerCommand)],
      [
        'fsync time per confirmed command: main thread (the event loop waits) / thread pool',
        isSkipped(t.daemon.fsyncs)
          ? t.daemon.fsyncs.skipped
          : `${n(t.daemon.fsyncs.mainMs / Math.max(1, t.confirmed), 'ms')} / ${n(t.daemon.fsyncs.otherMs / Math.max(1, t.confirmed), 'ms')}`,
      ],
      ['Modbus requests per confirmed command', n(t.modbusRequestsPerCommand)],
      [
        'ceiling of one PLC connection: 1 / (requests per command × simulator read p50)',
        n(t.ceilings.plcConnectionPerSecond, '/s'),
      ],
      [
        'ceiling of the fsyncs on the main thread: 1 / (their time per command)',
        n(t.ceilings.serialFsyncsPerSecond, '/s'),
      ],
      ...modbusRows(t.daemon, Math.max(1, t.confirmed), 'cmd').slice(2),
    ],
  };
}

function budgetRows(t: Results['throughput']): string[][] {
  const rows: string[][] = [];
  const b = t.cpuBudget;
  if (b !== undefined) {
    const m = b.msPerCommand;
    rows.push(
      [
        'CPU per confirmed command: daemon / simulator / broker / bench clients',
        `${n(m.daemon)} / ${n(m.simulator)} / ${n(m.broker)} / ${n(m.bench)} ms`,
      ],
      [
        `ceiling of this machine's ${b.cores} cores: ${b.cores} / (the four's CPU per command)`,
        n(b.coresPerSecond, '/s'),
      ],
      [
        `at ${n(b.targetPerSecond)}/s: cores the simulator, broker and clients take / CPU left to the daemon per command`,
        `${n(b.othersCoresAtTarget)} of ${b.cores} / ${n(b.daemonBudgetMs, 'ms')}`,
      ],
      [
        "the journal's synchronous work per command (write, commitBatch, get)",
        n(b.journalMs, 'ms'),
      ],
      [
        "the Modbus requests per command at the raw driver's CPU per request (baseline)",
        n(b.modbusMs, 'ms'),
      ],
    );
  }
  const a = t.intakeAlone;
  if (a !== undefined) {
    const failures = Object.entries(a.failures);
    rows.push(
      [
        `HTTPS intake alone (${a.clients} clients, ${a.request}): answered per second, p50 / p99`,
        `${n(a.perSecond, '/s')}, ${pp(a.latencyMs)} ms${failures.length === 0 ? '' : `; not answered: ${failures.map(([k, v]) => `${v}× ${k}`).join('; ')}`}`,
      ],
      [
        'HTTPS intake alone: CPU per request, daemon / bench clients; daemon event-loop utilisation',
        `${n(a.daemonCpuMs)} / ${n(a.benchCpuMs)} ms; ${n(a.eventLoopUtilisation)}`,
      ],
    );
  }
  if (b !== undefined && a !== undefined && b.journalMs !== null) {
    // The Modbus part is absent from results made before it was measured.
    const modbusMs = b.modbusMs ?? null;
    const parts = [a.daemonCpuMs, b.journalMs, ...(modbusMs === null ? [] : [modbusMs])];
    const floor = parts.reduce((sum, v) => sum + v, 0);
    rows.push([
      modbusMs === null
        ? 'intake alone + journal, against the budget'
        : 'intake alone + journal + Modbus requests, against the budget',
      `${parts.map((v) => n(v)).join(' + ')} = ${n(floor, 'ms')} ${
        floor > b.daemonBudgetMs
          ? `> ${n(b.daemonBudgetMs, 'ms')}: out of reach on these cores`
          : `≤ ${n(b.daemonBudgetMs, 'ms')}: within them, leaving ${n(b.daemonBudgetMs - floor, 'ms')} for the rest`
      }`,
    ]);
  }
  return rows;
}

function pct(share: number): string {
  return `${Math.round(share * 1000) / 10} %`;
}

/** Reads a value from the results by a dotted path, for `{{v:path}}` in the template. */
function valueAt(r: Results, path: string): string {
  let node: unknown = r;
  for (const part of path.split('.')) {
    if (typeof node !== 'object' || node === null || !(part in node)) {
      throw new Error(`PERFORMANCE.template.md: no value ${path} in the results`);
    }
    node = (node as Record<string, unknown>)[part];
  }
  if (typeof node === 'number') return n(node);
  if (typeof node === 'string' || typeof node === 'boolean') return String(node);
  if (node === null) return '—';
  throw new Error(`PERFORMANCE.template.md: ${path} is not a single value`);
}

/**
 * docs/PERFORMANCE.md: the template's prose with this run's tables and values filled in,
 * formatted by prettier (aligned table columns, prose rewrapped around the filled-in numbers).
 */
export async function renderMarkdown(r: Results, file: string): Promise<string> {
  const text = fillTemplate(r);
  return format(text, { ...(await resolveConfig(file)), parser: 'markdown', proseWrap: 'always' });
}

function fillTemplate(r: Results): string {
  const template = readFileSync(join(BENCH_DIR, 'PERFORMANCE.template.md'), 'utf8');
  const all = tables(r);
  return template.replace(/\{\{([^}]+)\}\}/g, (_, name: string) => {
    if (name.startsWith('v:')) {
      // A skipped section has no numbers: its reason stands in.
      try {
        return valueAt(r, name.slice(2));
      } catch (error) {
        // The section is the path's first part or its first two (recoveryShipped,
        // endToEnd.mqtt): the first of them that says it was skipped.
        const parts = name.slice(2).split('.');
        const skipped = (() => {
          for (const length of [1, 2]) {
            try {
              return valueAt(r, `${parts.slice(0, length).join('.')}.skipped`);
            } catch {
              // not this one
            }
          }
          return null;
        })();
        if (skipped !== null) return `(${skipped})`;
        throw error;
      }
    }
    const table = all[name];
    if (table === undefined) throw new Error(`PERFORMANCE.template.md: no table ${name}`);
    return markdownTable(table);
  });
}

/** How a recovery's profile bounds an acknowledged write, for a target's name. */
function boundSaid(rec: Results['recovery']): string {
  if (rec.ackedWriteTakenWithinMs === undefined) return '';
  return rec.ackedWriteTakenWithinMs === null
    ? ` (shipped profile: acknowledged-write bound = confirm timeout, ${n(rec.confirmTimeoutMs, 'ms')})`
    : ` (acknowledged-write bound ${n(rec.ackedWriteTakenWithinMs, 'ms')})`;
}

/**
 * The recovery table: one column per run (the bench profile's, and the shipped profile's
 * beside it when it ran).
 */
function recoveryTable(rec: Results['recovery'], shipped: Results['recoveryShipped']): Table {
  const runs = [rec, ...(shipped === undefined || isSkipped(shipped) ? [] : [shipped])];
  const column = (x: Results['recovery']): string[] => {
    const bound =
      x.ackedWriteTakenWithinMs === undefined || x.ackedWriteTakenWithinMs === null
        ? x.confirmTimeoutMs === undefined
          ? `not recorded (guard ${n(x.redispatchGuardMs, 'ms')})`
          : `${n(x.confirmTimeoutMs, 'ms')}: the confirm timeout (none stated)`
        : `${n(x.ackedWriteTakenWithinMs, 'ms')}: \`ackedWriteTakenWithinMs\``;
    return [
      `${n(x.commands)} on ${x.valves} valves`,
      `${x.inDoubt}, ${x.inDoubtWritten} of them written before the stop`,
      bound,
      n(x.listenEmptyMs, 'ms'),
      n(x.listenMs, 'ms'),
      n(x.inDoubtWrittenSettledMs, 'ms'),
      n(x.inDoubtUnwrittenSettledMs, 'ms'),
      x.allSettledMs === null ? `${n(x.stillOpen)} still open` : n(x.allSettledMs, 'ms'),
      Object.entries(x.outcomes)
        .map(([k, v]) => `${n(v)} ${k}`)
        .join('; '),
      n(x.redispatched),
      ...recoveryLoadRows(x).map((row) => row[1] ?? ''),
    ];
  };
  const labels = [
    'open commands at restart',
    'of which in doubt (dispatched)',
    "the profile's bound on an acknowledged write (waited from the restart's lock)",
    'HTTPS answers after start, empty journal',
    'HTTPS answers after start, with the backlog',
    'in doubt and written: all settled after',
    'in doubt, never written: all settled after',
    'every command settled after',
    'outcomes',
    'written a second time (proven not applied)',
    ...recoveryLoadRows(rec).map((row) => row[0] ?? ''),
  ];
  const columns = runs.map(column);
  return {
    head:
      runs.length === 1
        ? ['', '']
        : ['', 'bench profile (the plant states its bound)', 'shipped profile as it is'],
    rows: labels.map((label, i) => [label, ...columns.map((c) => c[i] ?? '')]),
  };
}

/** The daemon's work while it worked the backlog off (results before it was measured: none). */
function recoveryLoadRows(rec: Results['recovery']): string[][] {
  const load = rec.load as DaemonLoad | undefined;
  if (load === undefined) return [];
  const per = Math.max(1, rec.commands);
  const requests = (load.modbus.reads + load.modbus.writes) / per;
  return [
    [
      'daemon meanwhile: event-loop utilisation / CPU cores',
      `${n(load.eventLoopUtilisation)} / ${n(load.cpuCores)}`,
    ],
    [
      'fsyncs per command: main thread / thread pool',
      isSkipped(load.fsyncs)
        ? load.fsyncs.skipped
        : `${n(load.fsyncs.mainCalls / per)} / ${n(load.fsyncs.otherCalls / per)}`,
    ],
    ['Modbus requests per command', n(requests)],
    [
      'wait in the PLC connection’s queue, p50 / p99',
      load.modbus.queueWaitMs == null ? 'not measured' : `${pp(load.modbus.queueWaitMs)} ms`,
    ],
  ];
}
