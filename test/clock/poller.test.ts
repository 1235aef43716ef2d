import { describe, expect, it } from 'vitest';
import type { Clock } from '../../src/core/clock.js';
import type { ClockProbe, PtpObservation } from '../../src/core/gateway-clock.js';
import type { Logger } from '../../src/core/logger.js';
import { GatewayClockPoller, noGatewayClock } from '../../src/clock/gateway-clock.js';

/** The poller on fake time: a fake clock whose sleeps end when the test advances it. */
class FakeClock implements Clock {
  wall = 1_764_612_000_000;
  mono = 0;
  private waiters: { due: number; resolve: () => void }[] = [];

  now(): number {
    return this.wall;
  }
  elapsed(): number {
    return this.mono;
  }
  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      if (signal?.aborted === true) {
        resolve();
        return;
      }
      const waiter = { due: this.mono + ms, resolve };
      this.waiters.push(waiter);
      signal?.addEventListener(
        'abort',
        () => {
          this.waiters = this.waiters.filter((w) => w !== waiter);
          resolve();
        },
        { once: true },
      );
    });
  }
  async advance(ms: number): Promise<void> {
    this.mono += ms;
    this.wall += ms;
    const due = this.waiters.filter((w) => w.due <= this.mono);
    this.waiters = this.waiters.filter((w) => w.due > this.mono);
    for (const w of due) w.resolve();
    await settle();
  }
}

const settle = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

interface Entry {
  level: 'debug' | 'info' | 'warn' | 'error';
  obj: Record<string, unknown>;
  msg: string | undefined;
}
function recordingLogger(): Logger & { entries: Entry[] } {
  const entries: Entry[] = [];
  const make = (bindings: Record<string, unknown>): Logger => {
    const at =
      (level: Entry['level']) =>
      (obj: object, msg?: string): void => {
        entries.push({ level, obj: { ...bindings, ...obj }, msg });
      };
    return {
      debug: at('debug'),
      info: at('info'),
      warn: at('warn'),
      error: at('error'),
      child: (more) => make({ ...bindings, ...more }),
    };
  };
  return Object.assign(make({}), { entries });
}

const GM = '7607ba.fffe.905df3';
function ptp(over: Partial<PtpObservation> = {}): ClockProbe {
  return {
    kind: 'observed',
    observation: {
      source: 'ptp',
      clockIdentity: 'fe0fe1.fffe.75124f',
      ports: [{ identity: 'fe0fe1.fffe.75124f-1', state: 'SLAVE' }],
      gmPresent: true,
      gmIdentity: GM,
      masterOffsetNs: 50,
      offsetFromMasterNs: 50,
      stepsRemoved: 1,
      notes: [],
      ...over,
    },
  };
}
const lost = ptp({ ports: [{ identity: 'fe0fe1.fffe.75124f-1', state: 'LISTENING' }] });

/** A source whose answer the test sets; every read is recorded with its abort signal. */
function scriptedSource(initial: ClockProbe): {
  read: (signal?: AbortSignal) => Promise<ClockProbe>;
  set: (probe: ClockProbe | Error) => void;
  reads: (AbortSignal | undefined)[];
} {
  let next: ClockProbe | Error = initial;
  const reads: (AbortSignal | undefined)[] = [];
  return {
    reads,
    set: (probe) => {
      next = probe;
    },
    read: (signal) => {
      reads.push(signal);
      return next instanceof Error ? Promise.reject(next) : Promise.resolve(next);
    },
  };
}

const POLICY = { maxOffsetNs: 1000, holdoverMs: 3000 };

function poller(read: (signal?: AbortSignal) => Promise<ClockProbe>): {
  clock: FakeClock;
  log: ReturnType<typeof recordingLogger>;
  clockPoller: GatewayClockPoller;
} {
  const clock = new FakeClock();
  const log = recordingLogger();
  const clockPoller = new GatewayClockPoller({
    source: 'ptp',
    read,
    policy: POLICY,
    intervalMs: 1000,
    clock,
    logger: log,
  });
  return { clock, log, clockPoller };
}

describe('GatewayClockPoller', () => {
  it('polls at start and then every intervalMs, never overlapping', async () => {
    const source = scriptedSource(ptp());
    const { clock, clockPoller } = poller(source.read);
    expect(clockPoller.status()).toMatchObject({ state: 'UNKNOWN', detail: 'not checked yet' });
    clockPoller.start();
    clockPoller.start();
    await settle();
    expect(source.reads).toHaveLength(1);
    expect(clockPoller.status().state).toBe('LOCKED');
    await clock.advance(999);
    expect(source.reads).toHaveLength(1);
    await clock.advance(1);
    expect(source.reads).toHaveLength(2);
    await clockPoller.stop();
  });

  it('status() answers at once with the last status while a reading hangs', async () => {
    let release: (probe: ClockProbe) => void = () => undefined;
    let reads = 0;
    const { clockPoller } = poller(() => {
      reads += 1;
      return reads === 1
        ? Promise.resolve(ptp())
        : new Promise<ClockProbe>((resolve) => {
            release = resolve;
          });
    });
    await clockPoller.pollOnce();
    const hanging = clockPoller.pollOnce();
    expect(clockPoller.pollOnce()).toBe(hanging);
    expect(clockPoller.status().state).toBe('LOCKED');
    release(lost);
    await hanging;
    expect(clockPoller.status().state).toBe('HOLDOVER');
  });

  it('logs the first status and every state change: LOCKED at info, the others at warn', async () => {
    const source = scriptedSource(ptp());
    const { clock, log, clockPoller } = poller(source.read);
    clockPoller.start();
    await settle();
    await clock.advance(1000); // still LOCKED: no line
    source.set(lost);
    await clock.advance(1000); // HOLDOVER
    await clock.advance(1000); // still HOLDOVER: no line
    await clock.advance(2000); // UNLOCKED (last locked 4 s ago)
    source.set({ kind: 'unreachable', source: 'ptp', error: 'pmc timed out after 2000 ms' });
    await clock.advance(1000); // UNKNOWN
    await clock.advance(1000); // still UNKNOWN: no line
    source.set(ptp());
    await clock.advance(1000); // LOCKED
    source.set(ptp({ gmIdentity: 'aaaaaa.fffe.bbbbbb' }));
    await clock.advance(1000); // grandmaster changed
    await clockPoller.stop();

    expect(log.entries.map((e) => [e.level, e.obj.state, e.msg])).toEqual([
      ['info', 'LOCKED', 'gateway clock locked'],
      ['warn', 'HOLDOVER', 'gateway clock lost its lock: holdover'],
      ['warn', 'UNLOCKED', 'gateway clock unlocked'],
      ['warn', 'UNKNOWN', 'gateway clock state unknown'],
      ['info', 'LOCKED', 'gateway clock locked'],
      ['info', 'LOCKED', 'gateway clock: grandmaster changed'],
    ]);
    expect(log.entries[1]!.obj).toMatchObject({
      component: 'gateway-clock',
      source: 'ptp',
      previous: 'LOCKED',
      portState: 'LISTENING',
      grandmaster: GM,
      offsetNs: null,
    });
    expect(String(log.entries[3]!.obj.detail)).toContain('pmc timed out');
  });

  it('a first status that is not LOCKED is logged at warn', async () => {
    const source = scriptedSource({ kind: 'unreachable', source: 'ptp', error: 'no socket' });
    const { log, clockPoller } = poller(source.read);
    await clockPoller.pollOnce();
    expect(log.entries.map((e) => [e.level, e.obj.state])).toEqual([['warn', 'UNKNOWN']]);
  });

  it('a reader that throws makes the state UNKNOWN, with its message', async () => {
    const source = scriptedSource(ptp());
    source.set(new Error('spawn pmc EACCES'));
    const { clockPoller } = poller(source.read);
    const status = await clockPoller.pollOnce();
    expect(status).toMatchObject({
      state: 'UNKNOWN',
      detail: 'ptp source unreachable: spawn pmc EACCES',
    });
  });

  it('stop() aborts the reading in flight and ends the polling', async () => {
    const signals: AbortSignal[] = [];
    let reads = 0;
    const { clock, clockPoller } = poller((signal) => {
      reads += 1;
      return new Promise<ClockProbe>((resolve) => {
        if (signal === undefined) return;
        signals.push(signal);
        // A reading ends when aborted, as execBounded does (it kills the process).
        signal.addEventListener('abort', () => {
          resolve({ kind: 'unreachable', source: 'ptp', error: 'pmc could not run: aborted' });
        });
      });
    });
    clockPoller.start();
    await settle();
    expect(reads).toBe(1);
    await clockPoller.stop();
    expect(signals[0]?.aborted).toBe(true);
    // An aborted reading does not become the status.
    expect(clockPoller.status().state).toBe('UNKNOWN');
    expect(clockPoller.status().detail).toBe('not checked yet');
    await clock.advance(5000);
    expect(reads).toBe(1);
    clockPoller.start();
    await settle();
    expect(reads).toBe(1);
  });

  it('listeners hear changes; a failing listener is logged, not fatal', async () => {
    const source = scriptedSource(ptp());
    const { log, clockPoller } = poller(source.read);
    const heard: string[] = [];
    clockPoller.onChange(() => {
      throw new Error('listener broke');
    });
    const off = clockPoller.onChange((status, previous) => {
      heard.push(`${previous.state}->${status.state}`);
    });
    await clockPoller.pollOnce();
    await clockPoller.pollOnce(); // no change
    source.set(lost);
    await clockPoller.pollOnce();
    off();
    source.set(ptp());
    await clockPoller.pollOnce();
    expect(heard).toEqual(['UNKNOWN->LOCKED', 'LOCKED->HOLDOVER']);
    expect(log.entries.filter((e) => e.level === 'error').map((e) => e.msg)).toEqual([
      'gateway clock listener failed',
      'gateway clock listener failed',
      'gateway clock listener failed',
    ]);
  });

  it('refuses a non-positive interval', () => {
    expect(
      () =>
        new GatewayClockPoller({
          source: 'ptp',
          read: () => Promise.resolve(ptp()),
          policy: POLICY,
          intervalMs: 0,
          clock: new FakeClock(),
          logger: recordingLogger(),
        }),
    ).toThrow(RangeError);
  });
});

describe('noGatewayClock', () => {
  it('is UNKNOWN: no gateway clock source configured', () => {
    const clock = new FakeClock();
    const none = noGatewayClock(clock);
    clock.wall += 5000;
    expect(none.status()).toMatchObject({
      source: 'none',
      state: 'UNKNOWN',
      detail: 'no gateway clock source configured',
      checkedAt: clock.wall,
      since: clock.wall - 5000,
    });
  });
});
