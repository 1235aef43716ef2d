import { closeSync, fdatasync, fsyncSync, openSync } from 'node:fs';
import { dirname } from 'node:path';
import { JournalUnavailableError } from '../core/errors.js';
import type { Connection } from './connection.js';
import { stillInTransaction } from './rows.js';

/**
 * fdatasyncs of the WAL that may run at once. One more than one: a lone command's barrier
 * (its dispatch, before the write) does not wait for the one still running for its claim (an
 * MQTT PUBACK's), which cost MQTT's dispatch barrier 0.2 ms at the median in alternating bench
 * runs of 2026-12-03; two at most: under load the writes made while both run share the next
 * transaction and fdatasync (commits per confirmed command 0.38 against 0.57 with no bound,
 * 0.27 with one at a time, throughput within the runs' spread of each other).
 */
const MAX_SYNCS = 2;

/** What group commit needs of the journal it serves. */
export interface GroupCommitHost {
  /** The journal file's path: the WAL is the file beside it (`<path>-wal`). */
  readonly path: string;
  /** The connection in use now (replaced when it proves read-only, see SqliteJournal). */
  current(): Connection;
  /** True once the journal is closed. */
  closed(): boolean;
  /** A batch's COMMIT failed SQLITE_READONLY: the connection must be replaced. */
  readOnly(): void;
}

/**
 * Group commit and its durability barriers (the journal's option `groupCommit`): the batch —
 * one transaction for the writes of an event-loop turn, committed at the turn's end — and the
 * barrier, one fdatasync of the WAL on libuv's thread pool for every commit made before it.
 * The journal runs its writes in the batch (begin(), wrote(), lose()) and awaits durable()
 * before anything is acknowledged.
 */
export class GroupCommit {
  private readonly host: GroupCommitHost;
  /** A write made since the last durability barrier began. */
  private unsynced = false;
  /**
   * The next barrier, not yet begun: at the end of this turn, or when the fdatasync running now
   * returns. Whoever needs a barrier meanwhile shares it.
   */
  private barrier: Promise<void> | null = null;
  /** How the next barrier's callers are answered once it has run. */
  private barrierDone: {
    readonly resolve: () => void;
    readonly reject: (error: unknown) => void;
  } | null = null;
  /** The barrier begun last, while its fdatasync runs: it covers every commit before it. */
  private syncing: Promise<void> | null = null;
  /** fdatasyncs of the WAL running on libuv's thread pool (MAX_SYNCS at most, see durable()). */
  private inFlight = 0;
  /** The WAL file, opened for its fdatasync (see durable()); null: not open yet. */
  private wal: { readonly fd: number; readonly conn: Connection } | null = null;
  /** Descriptors of WAL files of connections replaced while an fdatasync ran. */
  private readonly staleWal: number[] = [];
  private syncs = 0;
  /** The open batch's COMMIT is scheduled (end of this event-loop turn). */
  private commitScheduled = false;
  /** A batch was lost (its COMMIT failed, or SQLite rolled it back): the next barrier fails. */
  private batchLost: Error | null = null;
  /** Batches committed (transactions of group commit). */
  private batches = 0;
  /** Every commit made before this time (ms) is on disk: the last barrier's start. */
  private syncedBefore = Number.NEGATIVE_INFINITY;

  constructor(host: GroupCommitHost) {
    this.host = host;
  }

  /** A write made since the last barrier began, or an fdatasync still running. */
  get pending(): boolean {
    return this.unsynced || this.inFlight > 0;
  }

  /**
   * True when a commit made at `at` (whole ms, Date.now()) is on disk: strictly before the
   * start of a barrier that has completed means committed before it.
   */
  syncedAt(at: number): boolean {
    return at < this.syncedBefore;
  }

  /** Durability barriers (fsyncs of group commit) completed so far (the tests count them). */
  get barriers(): number {
    return this.syncs;
  }

  /** Batches (write transactions of group commit) committed so far (the tests count them). */
  get batchCommits(): number {
    return this.batches;
  }

  /** Opens the turn's batch on `db` unless it is open: the write that follows runs in it. */
  begin(db: Connection['db']): void {
    if (db.inTransaction) return;
    db.exec('BEGIN IMMEDIATE');
    this.scheduleCommit();
  }

  /** A write was made (in the batch): the next barrier has something to carry to disk. */
  wrote(): void {
    this.unsynced = true;
  }

  /**
   * Group commit's batch: the writes of one event-loop turn run inside one transaction (each
   * in a savepoint of its own, so a failed write undoes only itself), committed at the end of
   * the turn. Each page the turn's writes touch — the table's last page, each index's — goes
   * to the WAL once per batch instead of once per write, and one commit's bookkeeping serves
   * them all. The batch is durable only with the barrier's fsync (durable()); nothing is
   * acknowledged before it, as for single commits. If the batch cannot be committed (a full
   * disk), none of its writes happened: the next barrier fails, so that none is acknowledged.
   */
  commitBatch(): void {
    const db = this.host.current().db;
    if (!db.open || !db.inTransaction) return;
    try {
      db.exec('COMMIT');
      this.batches++;
    } catch (error) {
      // A failed COMMIT may leave the transaction open (SQLITE_BUSY) or have rolled it back.
      if (stillInTransaction(db)) {
        try {
          db.exec('ROLLBACK');
        } catch {
          // Rolled back already, or the connection failed: nothing of the batch stays.
        }
      }
      this.lose(error);
    }
  }

  /**
   * The batch is gone (its COMMIT failed, SQLite rolled it back, or its connection was
   * replaced): none of its writes happened, and the next barrier fails.
   */
  lose(error: unknown): void {
    const code = (error as { code?: unknown }).code;
    const reason = typeof code === 'string' ? code : String(error);
    this.batchLost = new JournalUnavailableError(
      `journal unavailable (commit): ${reason}; the writes of that moment were not kept`,
      { cause: error },
    );
    if (typeof code === 'string' && code.startsWith('SQLITE_READONLY')) {
      this.host.readOnly();
    }
  }

  /**
   * The batch commits at the end of this turn of the event loop — unless an fdatasync is
   * running: then it stays open, and the writes of the turns until one returns join it,
   * committed once when the next barrier begins (or when an fdatasync returns, if none waits
   * for one). Each page they touch goes to the WAL once for all of them.
   */
  private scheduleCommit(): void {
    if (this.commitScheduled) return;
    this.commitScheduled = true;
    setImmediate(() => {
      this.commitScheduled = false;
      if (this.inFlight > 0) return;
      this.commitOnItsOwn();
    });
  }

  /** Commits the batch with no barrier begun for it. */
  private commitOnItsOwn(): void {
    this.commitBatch();
    // A lost batch fails the barrier its writers wait for (scheduled in the same turn, it
    // runs after this); with none waiting, the loss concerns no acknowledgement.
    if (this.barrier === null) this.batchLost = null;
  }

  /**
   * Group commit (option `groupCommit`): the batch commits with synchronous=NORMAL, which in WAL
   * mode appends to the WAL without an fsync; the barrier then fdatasyncs the WAL file, which
   * carries every earlier commit to disk with it (the WAL is one append-only file, so a crash
   * can only lose a suffix of commits, never one in the middle) — what SQLite's
   * synchronous=FULL does at every commit, once for all of them. The fdatasync runs on libuv's
   * thread pool: the event loop goes on (other valves' reads and writes, the intakes) while the
   * disk works, and nothing waiting for this barrier is answered, published or written before
   * it has returned.
   *
   * At most MAX_SYNCS fdatasyncs at a time: a caller with writes not yet covered gets the next
   * barrier, which begins at the end of this turn while fewer run (fdatasyncs of one file may run
   * side by side: each covers what was written before it began), or as soon as one of them
   * returns — shared by every caller until then, its batch holding every write made meanwhile
   * (group commit: the busier the journal, the more each fdatasync and each commit carries). A
   * caller with nothing new waits for the fdatasync begun last, or not at all. A batch that
   * could not be committed, or an fdatasync that failed, fails the barrier (nothing of it may be
   * acknowledged).
   */
  durable(): Promise<void> {
    if (!this.unsynced && this.batchLost === null) return this.syncing ?? Promise.resolve();
    this.barrier ??= new Promise<void>((resolve, reject) => {
      this.barrierDone = { resolve, reject };
      // While MAX_SYNCS run, the return of one of them begins this barrier (beginSync).
      if (this.inFlight < MAX_SYNCS) {
        setImmediate(() => {
          this.startBarrier();
        });
      }
    });
    return this.barrier;
  }

  /** Begins the next barrier: its batch's COMMIT, then one fdatasync (see durable()). */
  private startBarrier(): void {
    const done = this.barrierDone;
    if (done === null || this.inFlight >= MAX_SYNCS) return;
    this.barrier = null;
    this.barrierDone = null;
    // The batch first: its COMMIT is what the fdatasync below carries to disk.
    this.commitBatch();
    const lost = this.batchLost;
    if (lost !== null) {
      this.batchLost = null;
      done.reject(lost);
      return;
    }
    if (!this.unsynced) {
      // Begun by another caller meanwhile (a graceful stop, a test): wait for that one.
      (this.syncing ?? Promise.resolve()).then(done.resolve, done.reject);
      return;
    }
    this.beginSync().then(done.resolve, done.reject);
  }

  /** One fdatasync of the WAL for every commit made so far (see durable()). */
  private beginSync(): Promise<void> {
    const startedAt = Date.now();
    let fd: number;
    try {
      fd = this.walFd();
    } catch (error) {
      return Promise.reject(
        new JournalUnavailableError(
          `journal unavailable (sync): the WAL of ${this.host.path} cannot be opened: ${String(error)}`,
          { cause: error },
        ),
      );
    }
    this.unsynced = false;
    this.inFlight++;
    const done = new Promise<void>((resolve, reject) => {
      fdatasync(fd, (error) => {
        this.inFlight--;
        if (this.host.closed()) this.closeWal();
        else this.closeStaleWal();
        if (error !== null) {
          // Its commits may not be on disk: nobody waiting for them is answered, and they count
          // as unsynced again, so that nothing later vouches for them without an fdatasync that
          // succeeded (as a failed fsync of SQLite's own commit would leave them).
          this.unsynced = true;
          reject(
            new JournalUnavailableError(
              `journal unavailable (sync): ${error.code ?? error.message}`,
              {
                cause: error,
              },
            ),
          );
          return;
        }
        this.syncs++;
        this.syncedBefore = Math.max(this.syncedBefore, startedAt);
        resolve();
      });
    }).finally(() => {
      // The writes made while it ran: the next barrier carries them if one waits; if none
      // does, their batch commits now (so that other connections see it) and waits for one.
      if (this.barrierDone !== null) this.startBarrier();
      else if (!this.commitScheduled) this.commitOnItsOwn();
    });
    this.syncing = done;
    const forget = (): void => {
      if (this.syncing === done) this.syncing = null;
    };
    done.then(forget, forget);
    return done;
  }

  /**
   * The WAL file's descriptor for the barrier's fdatasync. SQLite creates the WAL beside the
   * journal on the first write in WAL mode and keeps that file while the connection is open
   * (it restarts it from the top after a checkpoint, the same file); it deletes it only when
   * its last connection closes. So the descriptor belongs to the connection: opened at the
   * first barrier on it, opened again after the connection was replaced (reopen), when the
   * WAL may be another file. A WAL opened here has its directory synced once, as SQLite does
   * for a file it created, so that the file itself survives a power cut.
   */
  private walFd(): number {
    if (this.wal !== null && this.wal.conn === this.host.current()) return this.wal.fd;
    // The last connection's descriptor: closed now, or by the fdatasync still using it.
    if (this.wal !== null) this.staleWal.push(this.wal.fd);
    this.wal = null;
    this.closeStaleWal();
    const path = `${this.host.path}-wal`;
    const fd = openSync(path, 'r');
    try {
      const dir = openSync(dirname(path), 'r');
      try {
        fsyncSync(dir);
      } finally {
        closeSync(dir);
      }
    } catch (error) {
      closeSync(fd);
      throw error;
    }
    this.wal = { fd, conn: this.host.current() };
    return fd;
  }

  /** Closes the WAL's descriptor (at once, or once the fdatasync using it returns). */
  closeWal(): void {
    if (this.wal !== null) this.staleWal.push(this.wal.fd);
    this.wal = null;
    this.closeStaleWal();
  }

  /** Closes the descriptors no connection uses any more, once no fdatasync runs on them. */
  private closeStaleWal(): void {
    if (this.inFlight > 0) return;
    for (const fd of this.staleWal.splice(0)) {
      try {
        closeSync(fd);
      } catch {
        // Closed already.
      }
    }
  }
}
