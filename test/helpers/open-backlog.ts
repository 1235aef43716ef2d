import BetterSqlite3 from 'better-sqlite3';
import type { Action } from '../../src/core/command.js';

/** One open command as a backlog test writes it: accepted, never dispatched. */
export interface OpenRow {
  readonly key: string;
  readonly device: string;
  /** 'open' unless given. */
  readonly action?: Action;
  /** When it was accepted (epoch ms); now unless given. */
  readonly acceptedAt?: number;
  /** Its deadline (epoch ms); ten minutes after its acceptance unless given. */
  readonly deadline?: number;
}

/**
 * Writes open commands straight into a journal's commands table, in one transaction, in the
 * order given (the journal's order: claims get increasing ids): a backlog of tens of thousands as
 * recovery, the sweep and the open-command summary find it, which claiming each through the
 * journal would take seconds to build. Scope `plant`, intake `https`, issued at the gateway,
 * state `accepted`, no history (as rows a restart finds). Written through a connection of its
 * own beside the daemon's (busy timeout 5 s).
 */
export function insertOpenCommands(path: string, rows: Iterable<OpenRow>): void {
  const db = new BetterSqlite3(path);
  try {
    db.pragma('busy_timeout = 5000');
    const insert = db.prepare(`
      INSERT INTO commands (scope, key, fingerprint, device, action, position, issued_at,
        issued_at_source, ttl_ms, deadline, intake, state, accepted_at)
      VALUES ('plant', @key, 'f', @device, @action, NULL, @acceptedAt, 'gateway',
        @deadline - @acceptedAt, @deadline, 'https', 'accepted', @acceptedAt)`);
    const now = Date.now();
    db.transaction(() => {
      for (const row of rows) {
        const acceptedAt = row.acceptedAt ?? now;
        insert.run({
          key: row.key,
          device: row.device,
          action: row.action ?? 'open',
          acceptedAt,
          deadline: row.deadline ?? acceptedAt + 600_000,
        });
      }
    })();
  } finally {
    db.close();
  }
}
