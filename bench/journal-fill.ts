import { closeSync, fsyncSync, openSync } from 'node:fs';
import BetterSqlite3 from 'better-sqlite3';
import type { Database } from 'better-sqlite3';
import type { CommandRecord, JournalEvent } from '../src/core/journal.js';
import { RESULTS_ACKNOWLEDGED_KEY } from '../src/intake/mqtt-result-delivery.js';
import { SqliteJournal } from '../src/journal/sqlite-journal.js';

/**
 * Filling a journal to a million retained keys within the bench's time: through the journal's
 * API that is three durable transactions and some fifteen statements per command, minutes for
 * a million. So the rows the daemon itself wrote (the commands of the bench's own run, with
 * their history) are the templates, and SQLite copies them under new keys, in bulk, on a
 * connection of its own with synchronous=OFF (a scratch file; the measurements that follow
 * run on the journal's own connection, as durable as the daemon opens it).
 *
 * The copy follows the schema it finds rather than a fixed one: the commands table is the one
 * with scope, key, device and state; every other table that names a command — by scope and
 * key, or by the command's integer id (a declared foreign key, or a column `command` /
 * `command_id`) — has its rows copied with the copy's key or id; tables that name no command
 * (meta, per-device sequence numbers) are left alone. A quoted key inside a text column (a
 * stored result body) is rewritten too. Copies are then read back through the journal's API
 * and compared with their templates (record and history), so that a schema this does not
 * understand fails loudly instead of measuring rows the daemon would never write.
 */

interface Column {
  readonly name: string;
  readonly type: string;
  readonly pk: number;
}

interface Child {
  readonly table: string;
  readonly columns: readonly Column[];
  readonly rowidAlias: string | null;
  readonly link: { readonly kind: 'key' } | { readonly kind: 'id'; readonly column: string };
}

interface Layout {
  readonly primary: string;
  readonly columns: readonly Column[];
  readonly rowidAlias: string | null;
  readonly children: readonly Child[];
  readonly untouched: readonly string[];
}

const quote = (name: string): string => `"${name.replace(/"/g, '""')}"`;

function columnsOf(db: Database, table: string): Column[] {
  return db.pragma(`table_info(${quote(table)})`) as Column[];
}

/** The INTEGER PRIMARY KEY column (an alias of the rowid), if the table has one. */
function rowidAlias(columns: readonly Column[]): string | null {
  const pk = columns.filter((c) => c.pk > 0);
  const only = pk[0];
  return pk.length === 1 && only !== undefined && only.type.toUpperCase() === 'INTEGER'
    ? only.name
    : null;
}

function inspect(db: Database): Layout {
  const tables = (
    db
      .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
      .all() as { name: string }[]
  ).map((t) => t.name);
  const has = (columns: readonly Column[], ...names: string[]): boolean =>
    names.every((n) => columns.some((c) => c.name === n));
  const primary = tables.find((t) => has(columnsOf(db, t), 'scope', 'key', 'device', 'state'));
  if (primary === undefined) {
    throw new Error(`no commands table (scope, key, device, state) among ${tables.join(', ')}`);
  }
  const columns = columnsOf(db, primary);
  const alias = rowidAlias(columns);
  const children: Child[] = [];
  const untouched: string[] = [];
  for (const table of tables) {
    if (table === primary) continue;
    const cols = columnsOf(db, table);
    const fks = db.pragma(`foreign_key_list(${quote(table)})`) as { table: string; from: string }[];
    const fk = fks.find((f) => f.table === primary)?.from;
    const named = cols.find((c) => c.name === 'command' || c.name === 'command_id')?.name;
    if (has(cols, 'scope', 'key')) {
      children.push({ table, columns: cols, rowidAlias: rowidAlias(cols), link: { kind: 'key' } });
    } else if (alias !== null && (fk ?? named) !== undefined) {
      children.push({
        table,
        columns: cols,
        rowidAlias: rowidAlias(cols),
        link: { kind: 'id', column: fk ?? named ?? '' },
      });
    } else {
      untouched.push(table);
    }
  }
  return { primary, columns, rowidAlias: alias, children, untouched };
}

const isText = (c: Column): boolean => /CHAR|CLOB|TEXT/i.test(c.type);

type CopyStep = (suffix: string, from: number, to: number) => void;

function copyStatements(db: Database, l: Layout): CopyStep[] {
  const p = quote(l.primary);
  const cols = l.columns.filter((c) => c.name !== l.rowidAlias);
  const expr = cols.map((c) =>
    c.name === 'key'
      ? 'p.key || @suffix'
      : isText(c) && c.name !== 'scope'
        ? `replace(p.${quote(c.name)}, '"' || p.key || '"', '"' || p.key || @suffix || '"')`
        : `p.${quote(c.name)}`,
  );
  const primaryInsert = db.prepare(
    `INSERT INTO ${p} (${cols.map((c) => quote(c.name)).join(', ')})
     SELECT ${expr.join(', ')} FROM temp.bench_templates t
     JOIN ${p} p ON p.scope = t.scope AND p.key = t.key
     WHERE t.n > @from AND t.n <= @to ORDER BY t.n`,
  );
  const steps: CopyStep[] = [
    (suffix, from, to) => {
      primaryInsert.run({ suffix, from, to });
    },
  ];
  for (const child of l.children) {
    const ccols = child.columns.filter((c) => c.name !== child.rowidAlias);
    const order = child.rowidAlias === null ? '' : `ORDER BY e.${quote(child.rowidAlias)}`;
    let sql: string;
    if (child.link.kind === 'key') {
      const cexpr = ccols.map((c) =>
        c.name === 'key' ? 'e.key || @suffix' : `e.${quote(c.name)}`,
      );
      sql = `INSERT INTO ${quote(child.table)} (${ccols.map((c) => quote(c.name)).join(', ')})
        SELECT ${cexpr.join(', ')} FROM temp.bench_templates t
        JOIN ${quote(child.table)} e ON e.scope = t.scope AND e.key = t.key
        WHERE t.n > @from AND t.n <= @to ${order}`;
    } else {
      const link = child.link.column;
      const alias = quote(l.rowidAlias ?? 'rowid');
      const cexpr = ccols.map((c) =>
        c.name === link
          ? `(SELECT n.${alias} FROM ${p} n WHERE n.scope = p.scope AND n.key = p.key || @suffix)`
          : `e.${quote(c.name)}`,
      );
      sql = `INSERT INTO ${quote(child.table)} (${ccols.map((c) => quote(c.name)).join(', ')})
        SELECT ${cexpr.join(', ')} FROM temp.bench_templates t
        JOIN ${p} p ON p.scope = t.scope AND p.key = t.key
        JOIN ${quote(child.table)} e ON e.${quote(link)} = p.${alias}
        WHERE t.n > @from AND t.n <= @to ${order}`;
    }
    const statement = db.prepare(sql);
    steps.push((suffix, from, to) => {
      statement.run({ suffix, from, to });
    });
  }
  return steps;
}

export interface Templates {
  /** Template keys in copy order (scope, key), and how many copies exist of each. */
  readonly scope: string;
  readonly keys: readonly string[];
  /** Copies made so far: copy c of template n has key `${key}~${c}` (c ≥ 1). */
  copies: number;
  /** Rows of the last copy (a copy may be partial). */
  lastCopyRows: number;
}

/** Every retained key of the journal, as a function of a random number in [0, 1). */
export function keyAt(t: Templates, u: number): string {
  const full = t.keys.length * Math.max(0, t.copies - 1) + (t.copies > 0 ? t.lastCopyRows : 0);
  const total = t.keys.length + full;
  const i = Math.min(total - 1, Math.floor(u * total));
  if (i < t.keys.length) return t.keys[i] ?? '';
  const j = i - t.keys.length;
  const copy = Math.floor(j / t.keys.length) + 1;
  return `${t.keys[j % t.keys.length] ?? ''}~${copy}`;
}

export function commandCount(path: string): number {
  const db = new BetterSqlite3(path, { readonly: true });
  try {
    const l = inspect(db);
    return (db.prepare(`SELECT count(*) AS n FROM ${quote(l.primary)}`).get() as { n: number }).n;
  } finally {
    db.close();
  }
}

/** The journal's settled commands as templates (one scope: the bench's identity). */
export function templates(path: string): Templates {
  const db = new BetterSqlite3(path, { readonly: true });
  try {
    const l = inspect(db);
    const rows = db
      .prepare(`SELECT scope, key FROM ${quote(l.primary)} WHERE key NOT LIKE '%~%' ORDER BY key`)
      .all() as { scope: string; key: string }[];
    const scopes = new Set(rows.map((r) => r.scope));
    const scope = rows[0]?.scope;
    if (scope === undefined || scopes.size !== 1) {
      throw new Error(`templates: expected one scope, found ${[...scopes].join(', ') || 'none'}`);
    }
    return { scope, keys: rows.map((r) => r.key), copies: 0, lastCopyRows: 0 };
  } finally {
    db.close();
  }
}

/**
 * Copies templates until the journal holds `target` commands; no other connection may have
 * the file open. Returns the seconds it took.
 */
export function replicate(path: string, t: Templates, target: number): number {
  const started = performance.now();
  const db = new BetterSqlite3(path);
  try {
    // A scratch copy: no rollback protection or fsync while filling; WAL again at the end.
    db.pragma('journal_mode = OFF');
    db.pragma('synchronous = OFF');
    db.pragma('cache_size = -262144');
    const l = inspect(db);
    db.exec('CREATE TEMP TABLE bench_templates (n INTEGER PRIMARY KEY, scope TEXT, key TEXT)');
    const insertTemplate = db.prepare(
      'INSERT INTO temp.bench_templates (n, scope, key) VALUES (?, ?, ?)',
    );
    db.transaction(() => {
      t.keys.forEach((key, i) => insertTemplate.run(i + 1, t.scope, key));
    })();
    const steps = copyStatements(db, l);
    const count = (): number =>
      (db.prepare(`SELECT count(*) AS n FROM ${quote(l.primary)}`).get() as { n: number }).n;
    let have = count();
    const perTransaction = Math.max(1, Math.floor(200_000 / t.keys.length));
    while (have < target) {
      db.transaction(() => {
        for (let i = 0; i < perTransaction && have < target; i++) {
          // A copy left partial by an earlier target is completed first.
          if (t.copies === 0 || t.lastCopyRows === t.keys.length) {
            t.copies += 1;
            t.lastCopyRows = 0;
          }
          const from = t.lastCopyRows;
          const to = Math.min(t.keys.length, from + (target - have));
          for (const step of steps) step(`~${t.copies}`, from, to);
          t.lastCopyRows = to;
          have += to - from;
        }
      })();
    }
    db.exec('DROP TABLE temp.bench_templates');
    // The copies keep their templates' settlement times, after the point up to which the
    // daemon that wrote the templates had its results acknowledged by the MQTT broker: a daemon
    // started on the journal would publish every copy's result again (mqtt-result-delivery.ts),
    // a million of them, while the scale phase measures it. No one ever awaited the copies'
    // results: without the row, a start publishes none again.
    db.prepare('DELETE FROM meta WHERE key = ?').run(RESULTS_ACKNOWLEDGED_KEY);
    db.pragma('journal_mode = WAL');
  } finally {
    db.close();
  }
  // Written without fsync, the copies (up to a gigabyte) would be written back by the kernel
  // while the measurements that follow run, and their tails would time the writeback.
  const fd = openSync(path, 'r+');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  verify(path, t);
  return (performance.now() - started) / 1000;
}

/** Copies read back through the journal's API must equal their templates but for the key. */
function verify(path: string, t: Templates): void {
  if (t.copies === 0) return;
  const journal = SqliteJournal.open({ path, readonly: true });
  try {
    const picks = [0, Math.floor(t.keys.length / 2), t.keys.length - 1];
    for (const n of picks) {
      const key = t.keys[n];
      if (key === undefined || n >= t.lastCopyRows) continue;
      const copyKey = `${key}~${t.copies}`;
      const a = journal.get({ scope: t.scope, key });
      const b = journal.get({ scope: t.scope, key: copyKey });
      // The copy's key, wherever it appears (a stored result body quotes it), reads as the
      // template's.
      const same = (x: CommandRecord | undefined): string =>
        JSON.stringify(x).replaceAll(copyKey, key);
      const events = (k: string): JournalEvent[] => journal.history({ scope: t.scope, key: k });
      if (a === undefined || b === undefined || same(a) !== same(b)) {
        throw new Error(
          `the journal fill does not reproduce this schema: ${copyKey} reads ${JSON.stringify(b)}, its template ${JSON.stringify(a)}`,
        );
      }
      if (JSON.stringify(events(key)) !== JSON.stringify(events(copyKey))) {
        throw new Error(
          `the journal fill does not reproduce this schema: the history of ${copyKey} differs from its template's`,
        );
      }
    }
  } finally {
    journal.close();
  }
}
