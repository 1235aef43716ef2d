import { join } from 'node:path';
import { parseCommandRequest } from '../../src/core/command.js';
import { systemClock } from '../../src/core/clock.js';
import type { CommandRecord, CommandRef } from '../../src/core/journal.js';
import { silentLogger } from '../../src/core/logger.js';
import {
  CommandPipeline,
  type DeviceBinding,
  type Identity,
  type SubmitOutcome,
} from '../../src/core/pipeline.js';
import type { ProfileTiming } from '../../src/core/profile.js';
import type { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { ControllerDouble } from './controller-double.js';
import { fastProfile, openJournal, tempDir } from './fixtures.js';

export const PLANT: Identity = { scope: 'plant', devices: 'all' };

export interface HarnessOptions {
  readonly timing?: Partial<ProfileTiming>;
  readonly maxIssuerSkewMs?: number;
  readonly travelMs?: number;
}

/**
 * A pipeline on a real SQLite journal file with in-memory controller doubles for the valve
 * `v1`, `v2` and the actuator `a1`. `crash()` stops journaling mid-flight the way a killed
 * process does; `restart()` opens the same file in a new pipeline and runs recovery.
 */
export class Harness {
  readonly path: string;
  readonly doubles = new Map<string, ControllerDouble>();
  journal: SqliteJournal;
  pipeline: CommandPipeline;
  private readonly cleanupDir: () => void;
  private readonly options: HarnessOptions;

  constructor(options: HarnessOptions = {}) {
    this.options = options;
    const { dir, cleanup } = tempDir();
    this.cleanupDir = cleanup;
    this.path = join(dir, 'journal.db');
    const travelMs = options.travelMs ?? 40;
    this.doubles.set('v1', new ControllerDouble('valve', { travelMs }));
    this.doubles.set('v2', new ControllerDouble('valve', { travelMs }));
    this.doubles.set('a1', new ControllerDouble('actuator', { travelMs }));
    this.journal = openJournal(this.path);
    this.pipeline = this.build();
  }

  double(id: string): ControllerDouble {
    const d = this.doubles.get(id);
    if (d === undefined) throw new Error(`no double ${id}`);
    return d;
  }

  submit(
    key: string,
    body: Record<string, unknown>,
    options: { identity?: Identity; intake?: string } = {},
  ): SubmitOutcome {
    return this.pipeline.submit({
      key,
      identity: options.identity ?? PLANT,
      intake: options.intake ?? 'https',
      request: parseCommandRequest(body),
    });
  }

  async settled(key: string, timeoutMs = 5_000, scope = 'plant'): Promise<CommandRecord> {
    const ref: CommandRef = { scope, key };
    const record = await this.pipeline.waitForSettled(ref, timeoutMs);
    if (record === undefined) throw new Error(`no command ${key}`);
    return record;
  }

  get(key: string, scope = 'plant'): CommandRecord | undefined {
    return this.journal.get({ scope, key });
  }

  /** The process dies: no further journal writes; its in-flight work is abandoned. */
  async crash(): Promise<void> {
    this.journal.close();
    await this.pipeline.stop(0);
  }

  /** A new process on the same journal file: recovery runs first. */
  restart(): number {
    this.journal = openJournal(this.path);
    this.pipeline = this.build();
    return this.pipeline.recover();
  }

  async close(): Promise<void> {
    await this.pipeline.stop(0);
    this.journal.close();
    this.cleanupDir();
  }

  private build(): CommandPipeline {
    const bindings: DeviceBinding[] = [...this.doubles.entries()].map(([id, driver]) => ({
      id,
      profile: fastProfile(driver.kind, this.options.timing),
      driver,
    }));
    return new CommandPipeline({
      journal: this.journal,
      devices: bindings,
      clock: systemClock,
      logger: silentLogger,
      freshness: { maxIssuerSkewMs: this.options.maxIssuerSkewMs ?? 2_000 },
    });
  }
}
