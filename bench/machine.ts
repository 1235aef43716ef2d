import { execFileSync } from 'node:child_process';
import { availableParallelism, cpus, loadavg, release, totalmem } from 'node:os';
import BetterSqlite3 from 'better-sqlite3';

/** What a reader comparing two runs needs to know about the machine each ran on. */
export interface Machine {
  readonly cores: number;
  readonly cpuModel: string;
  readonly memoryGiB: number;
  readonly kernel: string;
  readonly node: string;
  readonly sqlite: string;
  /** The filesystem the scratch journals lived on (fsync costs differ by an order). */
  readonly filesystem: string;
  /** 1-minute load average when the run started and when it ended (other work on the box). */
  readonly loadAtStart: number;
  loadAtEnd: number;
}

function sqliteVersion(): string {
  const db = new BetterSqlite3(':memory:');
  try {
    return (db.prepare('SELECT sqlite_version() AS v').get() as { v: string }).v;
  } finally {
    db.close();
  }
}

function filesystemOf(dir: string): string {
  try {
    const out = execFileSync('df', ['-T', dir], { encoding: 'utf8' }).trim().split('\n')[1] ?? '';
    const [device, type] = out.split(/\s+/);
    return `${type ?? '?'} (${device ?? '?'})`;
  } catch {
    return 'unknown';
  }
}

export function machine(scratchDir: string): Machine {
  return {
    cores: availableParallelism(),
    cpuModel: cpus()[0]?.model.trim() ?? 'unknown',
    memoryGiB: Math.round((totalmem() / 2 ** 30) * 10) / 10,
    kernel: release(),
    node: process.version,
    sqlite: sqliteVersion(),
    filesystem: filesystemOf(scratchDir),
    loadAtStart: Math.round((loadavg()[0] ?? 0) * 100) / 100,
    loadAtEnd: Number.NaN,
  };
}
