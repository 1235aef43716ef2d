import type { Database } from 'better-sqlite3';

/**
 * Numbered schema migrations. `PRAGMA user_version` holds the number of the last one applied;
 * a journal whose version is newer than the last one here is refused (an older Sluice must not
 * write a schema it does not understand). Append only: never edit a released migration.
 */
export interface Migration {
  readonly version: number;
  readonly description: string;
  readonly up: (db: Database) => void;
  /**
   * Free space the step needs on the journal's filesystem, per byte of the journal
   * (upgrade-room.ts): what it writes into the log, and the checkpoint after the upgrade into
   * the file. A copy of the tables needs about twice the journal; an index of a few states, a
   * fraction of it.
   */
  readonly room: number;
  /**
   * Free space the step's sorts need in SQLite's temporary folder (upgrade-room.ts sortFolder:
   * SQLITE_TMPDIR, else TMPDIR, else /var/tmp), per byte of the journal: what SQLite writes to
   * its temporary files while the step runs (a sort larger than its cache, 16 MB in this
   * build, and the statement journal past 64 KB), deleted at the step's end. Not in `room`:
   * that folder is often on another filesystem than the journal's.
   */
  readonly sortRoom: number;
  /**
   * The commands the step's `room` and `sortRoom` are of, when not all of them (an SQL
   * condition on the commands table): measured with every command such, they are scaled by the
   * share of the journal's commands that are (upgrade-room.ts), counted before the upgrade.
   */
  readonly of?: string;
}

/** The schema of version 2: the tables and indexes version 3 adds to (SCHEMA_V3). */
const SCHEMA_V2 = `
  CREATE TABLE commands (
    id               INTEGER PRIMARY KEY,
    scope            TEXT    NOT NULL,
    key              TEXT    NOT NULL,
    fingerprint      TEXT    NOT NULL,
    device           TEXT    NOT NULL,
    action           TEXT    NOT NULL,
    position         REAL,
    issued_at        INTEGER NOT NULL,
    issued_at_source TEXT    NOT NULL CHECK (issued_at_source IN ('issuer', 'gateway')),
    ttl_ms           INTEGER NOT NULL,
    deadline         INTEGER NOT NULL,
    intake           TEXT    NOT NULL,
    state            TEXT    NOT NULL
      CHECK (state IN ('accepted', 'dispatched', 'confirmed', 'rejected', 'failed')),
    code             TEXT,
    fault_code       TEXT,
    seq              INTEGER,
    attempts         INTEGER NOT NULL DEFAULT 0,
    observed_before  TEXT,
    observed         TEXT,
    detail           TEXT,
    accepted_at      INTEGER NOT NULL,
    dispatched_at    INTEGER,
    settled_at       INTEGER
  );
  CREATE UNIQUE INDEX commands_key ON commands (key, scope);
  CREATE INDEX commands_open ON commands (accepted_at)
    WHERE state IN ('accepted', 'dispatched');
  CREATE INDEX commands_open_device ON commands (device, seq)
    WHERE state IN ('accepted', 'dispatched');
  CREATE INDEX commands_settled ON commands (settled_at) WHERE settled_at IS NOT NULL;
  CREATE INDEX commands_device ON commands (device, accepted_at);
  CREATE INDEX commands_accepted ON commands (accepted_at);

  CREATE TABLE events (
    id         INTEGER PRIMARY KEY,
    command    INTEGER NOT NULL,
    at         INTEGER NOT NULL,
    from_state TEXT,
    to_state   TEXT    NOT NULL,
    intake     TEXT    NOT NULL,
    detail     TEXT    NOT NULL
  );
  CREATE INDEX events_command ON events (command, id);

  CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
  ) WITHOUT ROWID;

  CREATE TABLE IF NOT EXISTS device_seq (
    device   TEXT    PRIMARY KEY,
    last_seq INTEGER NOT NULL
  ) WITHOUT ROWID;
`;

/**
 * What version 3 adds: the commands that ended rejected or failed, by state and time, and by
 * device, state and time. `sluicectl list --state failed|rejected` and the status page's list
 * filtered to one of them (Journal.list, newest first) found them through the index of every
 * command by time (commands_accepted; commands_device with a device), reading every retained
 * row when few had ended so: the whole table (394 MB at a million commands, about a second
 * warm) on the daemon's main thread at every command change while a page showed that list.
 * Partial: only commands in those states are in them, so a claim, a dispatch and a confirmation
 * do not write them, and they hold few entries where most commands succeed.
 */
const SCHEMA_V3 = `
  CREATE INDEX commands_unsuccessful ON commands (state, accepted_at)
    WHERE state IN ('rejected', 'failed');
  CREATE INDEX commands_unsuccessful_device ON commands (device, state, accepted_at)
    WHERE state IN ('rejected', 'failed');
`;

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    description: 'commands, their events, per-device sequence numbers',
    up: (db) => {
      db.exec(`
        CREATE TABLE commands (
          scope            TEXT    NOT NULL,
          key              TEXT    NOT NULL,
          fingerprint      TEXT    NOT NULL,
          device           TEXT    NOT NULL,
          action           TEXT    NOT NULL,
          position         REAL,
          issued_at        INTEGER NOT NULL,
          issued_at_source TEXT    NOT NULL CHECK (issued_at_source IN ('issuer', 'gateway')),
          ttl_ms           INTEGER NOT NULL,
          deadline         INTEGER NOT NULL,
          intake           TEXT    NOT NULL,
          state            TEXT    NOT NULL
            CHECK (state IN ('accepted', 'dispatched', 'confirmed', 'rejected', 'failed')),
          code             TEXT,
          fault_code       TEXT,
          seq              INTEGER,
          attempts         INTEGER NOT NULL DEFAULT 0,
          observed_before  TEXT,
          observed         TEXT,
          detail           TEXT,
          accepted_at      INTEGER NOT NULL,
          dispatched_at    INTEGER,
          settled_at       INTEGER,
          response         TEXT,
          PRIMARY KEY (scope, key)
        ) WITHOUT ROWID;
        CREATE INDEX commands_open ON commands (accepted_at)
          WHERE state IN ('accepted', 'dispatched');
        CREATE INDEX commands_settled ON commands (settled_at) WHERE settled_at IS NOT NULL;
        CREATE INDEX commands_device ON commands (device, accepted_at);
        CREATE INDEX commands_key ON commands (key);
        CREATE INDEX commands_accepted ON commands (accepted_at);

        CREATE TABLE events (
          id         INTEGER PRIMARY KEY,
          scope      TEXT    NOT NULL,
          key        TEXT    NOT NULL,
          at         INTEGER NOT NULL,
          from_state TEXT,
          to_state   TEXT    NOT NULL,
          intake     TEXT    NOT NULL,
          detail     TEXT    NOT NULL
        );
        CREATE INDEX events_command ON events (scope, key, id);

        CREATE TABLE meta (
          key   TEXT PRIMARY KEY,
          value TEXT NOT NULL
        ) WITHOUT ROWID;

        CREATE TABLE device_seq (
          device   TEXT    PRIMARY KEY,
          last_seq INTEGER NOT NULL
        ) WITHOUT ROWID;
      `);
    },
    room: 0,
    sortRoom: 0,
  },
  {
    version: 2,
    description:
      'commands as a rowid table (a ~1 KB row no longer spills onto its own overflow page), no stored response (rendered from the record), events keyed by command id',
    up: (db) => {
      // A WITHOUT ROWID table keeps at most ~1 KB of a row on its B-tree page; a settled
      // command is about that, so each spilled onto a 4 KB overflow page of its own (5.4 KB
      // per retained command). The result is rendered from the record whenever it is read.
      // The commands are copied in the journal's order, which version 2 keeps in their ids
      // (stopsAfter, listOpenRefs: a stop preempts what came before it, SPEC §2). Version 1
      // kept them by key, with no rowid: their order is that of their first events, whose ids
      // were given in claim order. Not accepted_at: a step of the gateway's clock reorders it,
      // and an open command then came after a stop claimed after it (written though
      // superseded), or before a stop claimed before it (superseded though it came after).
      db.exec(`
        DROP INDEX commands_open;
        DROP INDEX commands_settled;
        DROP INDEX commands_device;
        DROP INDEX commands_key;
        DROP INDEX commands_accepted;
        DROP INDEX events_command;
        ALTER TABLE commands RENAME TO commands_v1;
        ALTER TABLE events RENAME TO events_v1;
      `);
      db.exec(SCHEMA_V2);
      db.exec(`
        INSERT INTO commands (scope, key, fingerprint, device, action, position, issued_at,
            issued_at_source, ttl_ms, deadline, intake, state, code, fault_code, seq, attempts,
            observed_before, observed, detail, accepted_at, dispatched_at, settled_at)
          SELECT scope, key, fingerprint, device, action, position, issued_at,
            issued_at_source, ttl_ms, deadline, intake, state, code, fault_code, seq, attempts,
            observed_before, observed, detail, accepted_at, dispatched_at, settled_at
          FROM commands_v1 c LEFT JOIN
            (SELECT scope, key, min(id) AS first FROM events_v1 GROUP BY scope, key) f
            USING (scope, key)
          ORDER BY f.first IS NULL, f.first, c.accepted_at;
        INSERT INTO events (id, command, at, from_state, to_state, intake, detail)
          SELECT e.id, c.id, e.at, e.from_state, e.to_state, e.intake, e.detail
          FROM events_v1 e JOIN commands c ON c.key = e.key AND c.scope = e.scope;
        DROP TABLE events_v1;
        DROP TABLE commands_v1;
      `);
    },
    // Measured on a tmpfs, the least room the upgrade from version 1 took: 0.2 × the journal's
    // size for settled commands with long results, up to 1.4 × for short rows with none stored.
    room: 2,
    // The copy sorts every command, each column but the stored response, in the journal's
    // order (and the events by command): measured at the most 0.75 × the journal's size
    // (400,000 settled commands, short rows; 0.37 at 60,000, none below SQLite's 16 MB sort
    // cache), and never more than the commands table itself.
    sortRoom: 1,
  },
  {
    version: 3,
    description:
      'indexes of the commands that ended rejected or failed (by state and time, by device, state and time)',
    // Two indexes built from one read of the table; nothing else is copied.
    up: (db) => {
      db.exec(SCHEMA_V3);
    },
    // Measured at the worst, every command failed and its row the shortest (200,000 commands,
    // keys and fingerprints of two characters, no detail, no observation): the indexes took
    // 0.28 × the journal's size, in the log and again in the file at the checkpoint (0.56 ×).
    // A journal of commands that mostly succeeded takes a small part of that.
    room: 0.6,
    // Each index sorts the keys of the failed and rejected commands: measured at the most
    // 0.22 × the journal's size (every command failed, the shortest rows: 600,000-660,000
    // commands, just past the 16 MB cache, where the whole sort goes to files; 0.14 at
    // 2,400,000), the statement journal included, sampled every millisecond.
    sortRoom: 0.3,
    // The indexes hold the failed and rejected commands alone: both rooms are of those. An
    // entry's bytes (device, state, time, rowid) do not grow with its row, so the share of the
    // commands scales the worst case measured, the shortest rows, on the safe side.
    of: "state IN ('rejected', 'failed')",
  },
];

export const LATEST_VERSION = MIGRATIONS.reduce((max, m) => Math.max(max, m.version), 0);

/**
 * A new journal is created at the latest version at once (not built and rebuilt through every
 * migration, which would need twice the space on a small filesystem).
 */
export function createLatest(db: Database): void {
  db.exec(SCHEMA_V2);
  db.exec(SCHEMA_V3);
}
