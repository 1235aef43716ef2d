import BetterSqlite3 from 'better-sqlite3';
import { MIGRATIONS } from '../../src/journal/migrations.js';

/**
 * A version 1 journal as the Sluice of that schema left it: settled commands, each with its
 * three events, written by SQLite itself (a row-by-row fill costs the suite seconds of CPU).
 */
export function writeV1Journal(path: string, commands: number): void {
  const v1 = new BetterSqlite3(path);
  v1.pragma('journal_mode = WAL');
  MIGRATIONS[0]!.up(v1);
  v1.pragma('user_version = 1');
  const at = Date.now() - 3_600_000;
  v1.exec(`
    WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ${commands})
    INSERT INTO commands (scope, key, fingerprint, device, action, position, issued_at,
      issued_at_source, ttl_ms, deadline, intake, state, code, seq, attempts, observed, detail,
      accepted_at, dispatched_at, settled_at, response)
    SELECT 'ops', 'k' || i, 'fp', 'inlet-valve', 'open', NULL, ${at} + i, 'issuer', 30000,
      ${at} + i + 30000, 'https', 'confirmed', 'OK', i + 1, 1, '{"state":"OPEN"}',
      'readback after the write shows OPEN', ${at} + i, ${at} + i, ${at} + i, '{}'
    FROM n;
    INSERT INTO events (scope, key, at, from_state, to_state, intake, detail)
      SELECT scope, key, accepted_at, s.f, s.t, 'https', s.d FROM commands,
        (SELECT NULL AS f, 'accepted' AS t, 'accepted' AS d
         UNION ALL SELECT 'accepted', 'dispatched', 'seq 1'
         UNION ALL SELECT 'dispatched', 'confirmed', 'OK') s
      ORDER BY accepted_at;
  `);
  v1.pragma('wal_checkpoint(TRUNCATE)');
  v1.close();
}
