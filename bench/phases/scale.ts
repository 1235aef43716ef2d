import { copyFileSync, existsSync, mkdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fingerprint, parseCommandRequest } from '../../src/core/command.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { HttpsClient } from '../clients.js';
import { isBroker, modbusValves, type RunContext } from '../context.js';
import { startDaemon } from '../daemon.js';
import { commandCount, keyAt, replicate, templates, type Templates } from '../journal-fill.js';
import { nextMove } from '../raw-drivers.js';
import type { JournalScale, ScalePoint } from '../results.js';
import { IDENTITY, writeSite } from '../site.js';
import { distribution, ratio, round, type Distribution } from '../stats.js';
import { httpsSender, untilReady } from './latency.js';

/**
 * Journal scale: the journal of the bench's own run (every command the daemon settled, with
 * its history) is cut or copied to `scaleSmall` retained keys, measured, copied on to
 * `scaleLarge` and measured again, on the journal's own API and connection (as durable as the
 * daemon opens it): a claim of a new key, the dispatch and settlement that follow it, and a
 * lookup of a random retained key. Then the daemon runs on the large journal: its RSS.
 */

/**
 * In-process lookups per `scaleSamples`: a lookup takes tens of microseconds, and a p99 of a
 * few thousand of them is a handful of samples that any hiccup of the machine decides.
 */
const LOOKUP_SAMPLES_PER_SAMPLE = 10;

function fileBytes(path: string): number {
  const size = (p: string): number => (existsSync(p) ? statSync(p).size : 0);
  return size(path) + size(`${path}-wal`);
}

function measure(
  path: string,
  t: Templates,
  valves: readonly string[],
  writes: number,
  label: string,
): Omit<ScalePoint, 'lookupMs'> {
  const journal = SqliteJournal.open({ path });
  const claim: number[] = [];
  const dispatch: number[] = [];
  const settle: number[] = [];
  try {
    const now = Date.now();
    for (let i = 0; i < writes; i++) {
      const device = valves[i % valves.length] ?? '';
      const action = nextMove(i % 2 === 0 ? 'CLOSED' : 'OPEN').action;
      const request = parseCommandRequest({ device, action });
      let t0 = performance.now();
      const c = journal.claim({
        scope: IDENTITY,
        key: `scale-${label}-${now.toString(36)}-${i}`,
        fingerprint: fingerprint(request),
        device,
        action,
        position: null,
        issuedAt: now,
        issuedAtSource: 'gateway',
        ttlMs: 30_000,
        deadline: now + 30_000,
        intake: 'https',
        acceptedAt: Date.now(),
      });
      claim.push(performance.now() - t0);
      const before = {
        state: action === 'open' ? 'CLOSED' : 'OPEN',
        position: action === 'open' ? 0 : 100,
        seq: null,
        faultCode: null,
        sourceTime: new Date().toISOString(),
        readAt: new Date().toISOString(),
      };
      t0 = performance.now();
      const d = journal.markDispatched(
        c.record,
        Date.now(),
        before,
        'pipeline',
        (last) => (last % 65_535) + 1,
      );
      dispatch.push(performance.now() - t0);
      t0 = performance.now();
      journal.settle(d, 'dispatched', {
        to: 'confirmed',
        code: 'OK',
        faultCode: null,
        observed: { ...before, state: action === 'open' ? 'OPEN' : 'CLOSED', seq: d.seq },
        detail: `readback after the write shows ${action === 'open' ? 'OPEN' : 'CLOSED'}`,
        at: Date.now(),
        intake: 'pipeline',
      });
      settle.push(performance.now() - t0);
    }
  } finally {
    journal.close();
  }
  const keys = commandCount(path);
  const bytes = fileBytes(path);
  return {
    keys,
    fileBytes: bytes,
    bytesPerCommand: round(bytes / keys),
    claimMs: distribution(claim),
    dispatchMs: distribution(dispatch),
    settleMs: distribution(settle),
  };
}

/**
 * Lookups of random retained keys at both points, interleaved (one on the small journal, one
 * on the large, and so on) on the journal's own API and connection: whatever else the machine
 * does during the measurement falls on both series alike, so the ratio of their tails compares
 * the journals, not two moments of a shared machine. A tenth as many first, untimed, warm both
 * connections' page caches alike.
 */
function interleavedLookups(
  points: readonly { readonly path: string; readonly t: Templates }[],
  count: number,
): Distribution[] {
  const journals = points.map((p) => SqliteJournal.open({ path: p.path }));
  const times = points.map((): number[] => []);
  try {
    const warm = Math.ceil(count / 10);
    for (let i = 0; i < warm + count; i++) {
      points.forEach((p, n) => {
        const key = keyAt(p.t, Math.random());
        const t0 = performance.now();
        const r = journals[n]?.get({ scope: p.t.scope, key });
        const ms = performance.now() - t0;
        if (r === undefined) throw new Error(`journal scale: retained key ${key} not found`);
        if (i >= warm) times[n]?.push(ms);
      });
    }
  } finally {
    for (const j of journals) j.close();
  }
  return times.map((t) => distribution(t));
}

export async function journalScale(ctx: RunContext, sourceJournal: string): Promise<JournalScale> {
  const { options } = ctx;
  const valves = modbusValves(ctx);
  const dir = join(ctx.dir, 'scale');
  mkdirSync(dir, { recursive: true });
  const path = join(dir, 'journal.db');
  copyFileSync(sourceJournal, path);
  if (existsSync(`${sourceJournal}-wal`)) copyFileSync(`${sourceJournal}-wal`, `${path}-wal`);

  // Exactly `scaleSmall` retained keys: the oldest settled purged (the journal's own
  // retention API), or copies added.
  // The timed claims of each point count among its retained keys.
  const writes = Math.max(1, Math.min(options.scaleWrites, Math.floor(options.scaleSmall / 2)));
  const lookups = options.scaleSamples;
  const have = commandCount(path);
  if (have > options.scaleSmall - writes) {
    const j = SqliteJournal.open({ path });
    try {
      j.purgeSettled(Date.now() + 1, have - (options.scaleSmall - writes));
    } finally {
      j.close();
    }
  }
  const t = templates(path);
  ctx.progress(
    `journal scale: ${t.keys.length} commands of this run as templates, filling to ${options.scaleSmall}`,
  );
  let fillSeconds = replicate(path, t, options.scaleSmall - writes);
  const smallWrites = measure(path, t, valves, writes, 'small');
  // Kept aside for the interleaved lookups: the large point grows from this file.
  const smallPath = join(dir, 'small.db');
  copyFileSync(path, smallPath);
  if (existsSync(`${path}-wal`)) copyFileSync(`${path}-wal`, `${smallPath}-wal`);
  const tSmall: Templates = { ...t };
  ctx.progress(`journal scale: filling to ${options.scaleLarge} retained keys`);
  fillSeconds += replicate(
    path,
    t,
    Math.max(options.scaleLarge, options.scaleSmall + writes) - writes,
  );
  const largeWrites = measure(path, t, valves, writes, 'large');
  const inProcessLookups = lookups * LOOKUP_SAMPLES_PER_SAMPLE;
  ctx.progress(`journal scale: ${inProcessLookups} lookups at each point, interleaved`);
  const [smallLookups, largeLookups] = interleavedLookups(
    [
      { path: smallPath, t: tSmall },
      { path, t },
    ],
    inProcessLookups,
  );
  if (smallLookups === undefined || largeLookups === undefined) throw new Error('no lookups');
  const small: ScalePoint = { ...smallWrites, lookupMs: smallLookups };
  const large: ScalePoint = { ...largeWrites, lookupMs: largeLookups };

  ctx.progress('journal scale: the daemon on the large journal');
  const site = await writeSite({
    dir,
    plant: ctx.plant.info,
    credentials: ctx.credentials,
    profilesDir: ctx.profiles.dir,
    mqttUrl: isBroker(ctx.broker) ? ctx.broker.url : null,
    journalPath: path,
  });
  const daemon = await startDaemon(ctx, site, 'daemon-scale');
  let result: JournalScale['daemon'];
  try {
    const https = new HttpsClient(
      { port: site.httpsPort, ca: ctx.credentials.ca, token: ctx.credentials.token },
      1,
    );
    try {
      await untilReady(https);
      const send = httpsSender(https);
      const states = await ctx.plant.child.request<Record<string, string>>('states');
      const commands = Math.min(options.e2eCommands, 200);
      const commandMs: number[] = [];
      for (let i = 0; i < commands; i++) {
        const device = valves[i % valves.length] ?? '';
        const move = nextMove(states[device] ?? 'CLOSED');
        const s = await send(`scale-daemon-${Date.now().toString(36)}-${i}`, device, move.action);
        if (s.confirmed) states[device] = move.target;
        commandMs.push(s.ms);
      }
      const lookupMs: number[] = [];
      for (let i = 0; i < lookups; i++) {
        const key = keyAt(t, Math.random());
        const t0 = performance.now();
        const a = await https.get(`/v1/commands/${encodeURIComponent(key)}`);
        lookupMs.push(performance.now() - t0);
        if (a.status !== 200) throw new Error(`GET /v1/commands/${key}: ${a.status} ${a.body}`);
      }
      const memory = daemon.child.memory();
      result = {
        listenMs: daemon.listenMs,
        rssMiB: round(memory.rssMiB),
        peakRssMiB: round(memory.peakMiB),
        commands,
        commandLatencyMs: distribution(commandMs),
        lookups,
        lookupLatencyMs: distribution(lookupMs),
      };
    } finally {
      https.close();
    }
  } finally {
    await daemon.stop();
  }
  if (!options.keep) rmSync(dir, { recursive: true, force: true });
  return {
    templates: t.keys.length,
    fill: {
      method: 'templates from this run copied by SQL, checked through the journal API',
      seconds: round(fillSeconds),
    },
    small,
    large,
    lookupP99Ratio: ratio(large.lookupMs.p99, small.lookupMs.p99),
    claimP99Ratio: ratio(large.claimMs.p99, small.claimMs.p99),
    daemon: result,
  };
}
