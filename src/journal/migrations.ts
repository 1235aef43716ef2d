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
}

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
  },
];

export const LATEST_VERSION = MIGRATIONS.reduce((max, m) => Math.max(max, m.version), 0);
