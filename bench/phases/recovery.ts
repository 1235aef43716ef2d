import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { fingerprint, parseCommandRequest } from '../../src/core/command.js';
import type { CommandRecord, NewCommand } from '../../src/core/journal.js';
import { observe } from '../../src/core/readback.js';
import { POWER_UP_ECHO, allocateSeq } from '../../src/core/sequence.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { isBroker, modbusValves, type RunContext } from '../context.js';
import { daemonLoad, markDaemon, startDaemon } from '../daemon.js';
import { firstRead, nextMove, nextSeq, rawDrivers, writeAndReadBack } from '../raw-drivers.js';
import type { Recovery } from '../results.js';
import { IDENTITY, writeSite, type ProfileSetup } from '../site.js';
import { round } from '../stats.js';

/**
 * Recovery: the daemon restarts on a journal holding `recoveryCommands` open commands, as a
 * stop under full load leaves them. The pipeline has at most one command dispatched per
 * device (its queue never moves past one that is not terminal), so each valve holds one
 * command in doubt — dispatched, with its sequence number — and the rest of its share
 * accepted behind it. Half the valves' commands in doubt were written to the controller
 * before the stop (the bench writes them with the raw driver, as the daemon would have), the
 * other half never left the gateway: those can only be proven not applied once no write an
 * earlier life sent can still land — from the restarted daemon's journal lock, the request
 * timeout plus the guard, or the profile's bound on an acknowledged write when longer
 * (`timing.ackedWriteTakenWithinMs`, the confirm timeout when it states none:
 * earlier-write-bounds.ts) — and are then written once more. `profiles` is the profile the
 * daemon runs with (the bench's, or the shipped one as it is: run.ts runs both).
 *
 * The journal is built through the journal's own API (claim, markDispatched) with the core's
 * fingerprint, observation and sequence allocation. Measured: the time until the HTTPS
 * listener answers (beside a start on an empty journal), until every command in doubt is
 * settled, and until every command is.
 */

const TTL_MS = 3_600_000;

export async function recovery(
  ctx: RunContext,
  listenEmptyMs: number | null,
  profiles: ProfileSetup,
  name: string,
): Promise<Recovery> {
  const { options } = ctx;
  const valves = modbusValves(ctx);
  const dir = join(ctx.dir, name);
  mkdirSync(dir, { recursive: true });
  const journalPath = join(dir, 'journal.db');
  const total = Math.max(options.recoveryCommands, valves.length);
  ctx.progress(`${name}: journaling ${total} open commands on ${valves.length} valves`);

  const raw = await rawDrivers({
    plant: ctx.plant.info,
    protocol: 'modbus',
    profilesDir: profiles.dir,
    pkiDir: join(dir, 'pki'),
    logFile: join(dir, 'driver.log'),
  });
  const guardMs = raw.profile.timing.redispatchGuardMs;
  const confirmTimeoutMs = raw.profile.timing.confirmTimeoutMs;
  const ackedWriteTakenWithinMs = raw.profile.timing.ackedWriteTakenWithinMs ?? null;
  const journal = SqliteJournal.open({ path: journalPath });
  const inDoubt: { key: string; written: boolean }[] = [];
  const accepted: string[] = [];
  try {
    const now = Date.now();
    const claim = (key: string, device: string, action: 'open' | 'close'): CommandRecord => {
      const request = parseCommandRequest({
        device,
        action,
        issuedAt: new Date(now).toISOString(),
        ttlMs: TTL_MS,
      });
      const command: NewCommand = {
        scope: IDENTITY,
        key,
        fingerprint: fingerprint(request),
        device,
        action,
        position: null,
        issuedAt: now,
        issuedAtSource: 'issuer',
        ttlMs: TTL_MS,
        deadline: now + TTL_MS,
        intake: 'https',
        acceptedAt: Date.now(),
      };
      const c = journal.claim(command);
      if (c.kind !== 'new') throw new Error(`recovery journal: ${key} claimed twice`);
      return c.record;
    };
    const next: Record<string, string> = {};
    for (const [v, device] of valves.entries()) {
      const driver = raw.driver(device);
      let before = await firstRead(driver, 10_000);
      if (before.seq === POWER_UP_ECHO) {
        // A valve never commanded since the plant started echoes its power-up sequence number,
        // as a controller does after a restart: over a new connection (the daemon's, after
        // its restart) no image can then prove a write not applied (redispatch.ts), and a
        // command in doubt waits for its deadline. A plant in service has taken commands: one
        // here, with the raw driver, as the earlier phases did for the valves they commanded.
        const move = nextMove(before.state);
        await writeAndReadBack(
          driver,
          { action: move.action, position: null, seq: nextSeq(before.seq, 60_000 + v) },
          move.target,
          10_000,
        );
        before = await firstRead(driver, 10_000);
      }
      const move = nextMove(before.state);
      const key = `rec-${device}-0`;
      const record = claim(key, device, move.action);
      const dispatched = journal.markDispatched(
        record,
        Date.now(),
        observe(before),
        'pipeline',
        (last, open) => allocateSeq(last, before.seq, open),
      );
      const written = v % 2 === 0;
      if (written) {
        if (dispatched.seq === null) throw new Error(`recovery journal: ${key} has no seq`);
        await driver.write({ action: move.action, position: null, seq: dispatched.seq });
      }
      inDoubt.push({ key, written });
      next[device] = move.target;
    }
    // The accepted rest, round-robin over the valves as traffic would have queued it, each
    // valve's commands alternating from the state its command in doubt leads to.
    for (let i = 1; inDoubt.length + accepted.length < total; i++) {
      for (const device of valves) {
        if (inDoubt.length + accepted.length >= total) break;
        const move = nextMove(next[device] ?? 'CLOSED');
        const key = `rec-${device}-${i}`;
        claim(key, device, move.action);
        accepted.push(key);
        next[device] = move.target;
      }
    }
  } finally {
    journal.close();
    await raw.close();
  }

  const site = await writeSite({
    dir,
    plant: ctx.plant.info,
    credentials: ctx.credentials,
    profilesDir: profiles.dir,
    mqttUrl: isBroker(ctx.broker) ? ctx.broker.url : null,
    journalPath,
  });
  ctx.progress(`${name}: restarting the daemon on that journal`);
  const daemon = await startDaemon(ctx, site, `daemon-${name}`);
  try {
    // The daemon's work while it works the backlog off: from its first answer to the last
    // settlement (fsyncs, event loop, journal calls).
    const mark = await markDaemon(daemon);
    const reader = SqliteJournal.open({ path: journalPath, readonly: true });
    let open = reader.listOpen().length;
    const end = Date.now() + options.recoveryTimeoutSeconds * 1000;
    while (open > 0 && Date.now() < end) {
      await new Promise((r) => setTimeout(r, 250));
      open = reader.listOpen().length;
    }
    const load = await daemonLoad(daemon, mark, ctx.shim);
    const settledAt = (keys: readonly string[]): number | null => {
      let last = 0;
      for (const key of keys) {
        const r = reader.get({ scope: IDENTITY, key });
        if (r?.settledAt == null) return null;
        last = Math.max(last, r.settledAt);
      }
      return keys.length === 0 ? null : last - daemon.spawnedAt;
    };
    const outcomes: Record<string, number> = {};
    let redispatched = 0;
    let lastSettled = daemon.spawnedAt;
    for (const key of [...inDoubt.map((d) => d.key), ...accepted]) {
      const r = reader.get({ scope: IDENTITY, key });
      const outcome =
        r === undefined ? 'missing' : `${r.state}${r.code === null ? '' : ` ${r.code}`}`;
      outcomes[outcome] = (outcomes[outcome] ?? 0) + 1;
      if ((r?.attempts ?? 0) > 1) redispatched += 1;
      if (r?.settledAt != null) lastSettled = Math.max(lastSettled, r.settledAt);
    }
    const settledCount = total - open;
    const result: Recovery = {
      commands: total,
      valves: valves.length,
      inDoubt: inDoubt.length,
      inDoubtWritten: inDoubt.filter((d) => d.written).length,
      listenEmptyMs,
      listenMs: daemon.listenMs,
      inDoubtWrittenSettledMs: settledAt(inDoubt.filter((d) => d.written).map((d) => d.key)),
      inDoubtUnwrittenSettledMs: settledAt(inDoubt.filter((d) => !d.written).map((d) => d.key)),
      allSettledMs: open === 0 ? settledAt([...inDoubt.map((d) => d.key), ...accepted]) : null,
      stillOpen: open,
      timeoutSeconds: options.recoveryTimeoutSeconds,
      settledPerSecond:
        lastSettled > daemon.spawnedAt
          ? round(settledCount / ((lastSettled - daemon.spawnedAt) / 1000))
          : null,
      outcomes,
      redispatched,
      redispatchGuardMs: guardMs,
      confirmTimeoutMs,
      ackedWriteTakenWithinMs,
      load,
    };
    reader.close();
    return result;
  } finally {
    await daemon.stop();
  }
}
