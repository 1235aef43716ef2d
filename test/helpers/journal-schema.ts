import BetterSqlite3 from 'better-sqlite3';

/** A journal file's schema as SQLite holds it: one line per table and index, by name. */
export function schemaOf(path: string): string[] {
  const db = new BetterSqlite3(path, { readonly: true });
  try {
    return (
      db
        .prepare(
          "SELECT type, name, sql FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%' ORDER BY name",
        )
        .all() as { type: string; name: string; sql: string }[]
    ).map((r) => `${r.type} ${r.name}: ${r.sql.replace(/\s+/g, ' ')}`);
  } finally {
    db.close();
  }
}
