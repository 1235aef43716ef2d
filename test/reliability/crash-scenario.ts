import type { CommandRecord } from '../../src/core/journal.js';
import type { ClientAnswer } from './campaign-clients.js';
import { Rng } from './campaign-random.js';
import {
  calm,
  judge,
  killDaemon,
  reachPhase,
  recovery,
  restartDaemon,
  send,
  tally,
  type CampaignSite,
  type Finding,
  type KillPhase,
  type PlannedCommand,
  type RunPlan,
  type RunResult,
} from './crash-run.js';

export interface SentCommand {
  readonly key: string;
  readonly device: string;
  readonly firstSend: Promise<void>;
}

/**
 * A named crash scenario: the campaign's clients, kills, restarts and judgement, driven step
 * by step by a test instead of a random plan. `finish()` waits for every client's terminal
 * answer and an empty set of open commands, then judges the site from ground truth exactly as
 * a campaign run is judged.
 */
export class ScenarioRun {
  readonly rng: Rng;
  private readonly commands: PlannedCommand[] = [];
  private readonly answers: Promise<ClientAnswer[]>[] = [];
  private readonly recoveries: Promise<number>[] = [];
  private readonly restarts: number[] = [];
  private kills = 0;
  private inDoubt = 0;
  private readonly started = Date.now();

  constructor(
    readonly cs: CampaignSite,
    readonly name: string,
    readonly seed: number,
  ) {
    this.rng = new Rng(seed);
  }

  /**
   * Starts a command's clients (defaults: HTTPS, 8 s TTL, issued now, respond-async); the
   * handle tells the kill watchers when its first request left.
   */
  send(
    command: Pick<PlannedCommand, 'key' | 'device' | 'action'> & Partial<PlannedCommand>,
    delayMs = 0,
  ): SentCommand {
    const c: PlannedCommand = {
      via: 'https',
      ttlMs: 8_000,
      issuedAgoMs: 0,
      prefer: 'respond-async',
      during: 'run',
      startMs: delayMs,
      ...command,
    };
    this.commands.push(c);
    const sending = send(this.cs, c, this.rng, delayMs);
    this.answers.push(sending.answers);
    return { key: c.key, device: c.device, firstSend: sending.firstSend };
  }

  /** Waits until the command reaches the kill phase (see reachPhase); returns what was seen. */
  async reach(command: SentCommand, phase: KillPhase, delayMs = 0): Promise<string> {
    return reachPhase(this.cs, command.key, command.device, phase, delayMs, command.firstSend);
  }

  /** The command as journaled now (read-only). */
  record(key: string): CommandRecord | undefined {
    return this.cs.watch.get(key);
  }

  /** SIGKILL; returns the keys left open (in doubt). */
  async kill(): Promise<string[]> {
    const open = await killDaemon(this.cs);
    this.kills++;
    this.inDoubt += open.length;
    return open;
  }

  /**
   * Starts the daemon again; recovery of `inDoubt` is measured in the background (pass none
   * when another kill follows: that life's recovery is cut short on purpose).
   */
  async restart(inDoubt: readonly string[]): Promise<void> {
    this.restarts.push(await restartDaemon(this.cs));
    if (inDoubt.length > 0) this.recoveries.push(recovery(this.cs, inDoubt));
  }

  /**
   * Every client answered, nothing open, faults cleared; then the findings (none expected) and
   * the run's figures for the summary.
   */
  async finish(lateSlackMs = 1_000): Promise<RunResult> {
    const answers = (await Promise.all(this.answers)).flat();
    const recoveryMs = await Promise.all(this.recoveries);
    try {
      await this.cs.site.settled(60_000);
    } catch {
      // verify() names what stayed open.
    }
    await calm(this.cs.site);
    const keys = new Set(this.commands.map((c) => c.key));
    const findings: Finding[] = await judge(this.cs, keys, answers, lateSlackMs);
    const plan: RunPlan = {
      index: -1,
      seed: this.seed,
      phase: 'dispatched',
      killDelayMs: 0,
      commands: this.commands,
      disturbances: [],
      faults: [],
      outageMs: 0,
    };
    return {
      plan,
      killedAt: this.name,
      targetState: this.record(this.commands[0]?.key ?? '')?.state ?? '-',
      kills: this.kills,
      ...tally(this.cs, keys),
      inDoubt: this.inDoubt,
      restartMs: this.restarts,
      recoveryMs,
      findings,
      durationMs: Date.now() - this.started,
    };
  }
}
