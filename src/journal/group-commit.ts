import {
  closeSync,
  fdatasync,
  fdatasyncSync,
  fstatSync,
  fsyncSync,
  openSync,
  readSync,
  statSync,
  writeSync,
} from 'node:fs';
import { endianness } from 'node:os';
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

/**
 * How soon after a failed fdatasync (and after each failed recovery) the journal tries to
 * recover (see recover()); barriers asked for meanwhile fail at once (fail closed).
 */
const RECOVERY_RETRY_MS = 1_000;

/** SQLite's default wal_autocheckpoint (pages), restored once the journal has recovered. */
const AUTOCHECKPOINT_PAGES = 1_000;

/**
 * The size the WAL is cut back to when SQLite starts it again from the top (journal_size_limit),
 * twice what the automatic checkpoint lets it reach (1,000 pages of 4 KiB), so that a WAL in
 * steady use is never cut. Without it the file keeps the largest size it ever had: a reader
 * holding one snapshot for long (a sqlite3 shell with a transaction left open, a backup) stops
 * every checkpoint from reaching the WAL's end, the WAL grows with every commit meanwhile, and
 * after the reader let go it stayed that size on the gateway's disk until the daemon stopped.
 */
export const WAL_SIZE_LIMIT_BYTES = 8 * 1024 * 1024;

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
  /**
   * The barriers' fdatasyncs running now, each with its descriptor and a promise settled when it
   * returns (whatever it returned): a success waits for the others of its descriptor (beginSync).
   */
  private readonly running = new Set<{ readonly fd: number; readonly returned: Promise<void> }>();
  /** The WAL file, opened for its fdatasync (see durable()); null: not open yet. */
  private wal: { readonly fd: number; readonly conn: Connection } | null = null;
  /**
   * A descriptor of the WAL's index (`-shm`), for the recovery's read of its header
   * (rewriteWal), kept open while the journal is: closing any descriptor of a file releases
   * every POSIX lock the process holds on it, and SQLite keeps its WAL locks on this file — a
   * descriptor opened and closed for one read dropped them under the open connection (its write
   * lock while a batch was open, its lock that tells other processes a connection is there),
   * and another process could then write beside the daemon, or rebuild the index under it.
   * Closed only with no connection of the journal open (closeShm()), or when the index is
   * another file now (no connection of this process locks the old one).
   */
  private shm: number | null = null;
  /** Descriptors of WAL files of connections replaced while an fdatasync ran. */
  private readonly staleWal: number[] = [];
  private syncs = 0;
  /** The open batch's COMMIT is scheduled (end of this event-loop turn). */
  private commitScheduled = false;
  /** A batch was lost (its COMMIT failed, or SQLite rolled it back): the next barrier fails. */
  private batchLost: Error | null = null;
  /** See commitFailure. */
  private lastLoss: JournalUnavailableError | null = null;
  /** A write succeeded in the batch open now (an empty batch's COMMIT proves nothing). */
  private batchWrote = false;
  /** Batches committed (transactions of group commit). */
  private batches = 0;
  /** Writes made so far (wrote()): a write's number is the count after it. */
  private writes = 0;
  /**
   * Every write numbered up to this is on disk: the count of writes when the latest completed
   * barrier began (−1: no barrier yet in this process, so not even what the file held at open
   * — frames a crashed process appended and never synced — is vouched for). Counted, not
   * timed: a wall clock stepped back while an fdatasync ran would make a later write look
   * older than the barrier's start.
   */
  private syncedThrough = -1;
  /**
   * An fdatasync of the WAL failed and the journal has not recovered since (see recover()):
   * every barrier fails until it has. Null: no failure outstanding.
   */
  private failed: JournalUnavailableError | null = null;
  /** Failed fdatasyncs so far: a barrier that overlapped one is not trusted (beginSync). */
  private failures = 0;
  /** When (performance.now()) the next recovery may be tried. */
  private recoverAfter = 0;
  /** Recoveries completed (the tests count them). */
  private recovered = 0;
  /** The next recovery attempt, not yet begun, shared by the barriers waiting for it. */
  private recoveryDue: Promise<void> | null = null;
  /** The journal file (device and inode) as it was when its WAL was first opened (walFd()). */
  private journalFile: { readonly dev: number; readonly ino: number } | null = null;
  /**
   * The journal's files were removed or replaced while it was open (see goneSince()): every
   * barrier fails from then on, for good. Null: they are where they were.
   */
  private gone: JournalUnavailableError | null = null;

  constructor(host: GroupCommitHost) {
    this.host = host;
  }

  /**
   * A write made since the last barrier began, an fdatasync still running, or a failed one the
   * journal has not recovered from (nothing may be vouched for until it has).
   */
  get pending(): boolean {
    return this.unsynced || this.inFlight > 0 || this.failed !== null;
  }

  /**
   * True when the write numbered `write` (wrote()'s; 0: one made before this process opened the
   * journal) is on disk: made before a completed barrier began.
   */
  synced(write: number): boolean {
    return write <= this.syncedThrough;
  }

  /** Durability barriers (fsyncs of group commit) completed so far (the tests count them). */
  get barriers(): number {
    return this.syncs;
  }

  /** Batches (write transactions of group commit) committed so far (the tests count them). */
  get batchCommits(): number {
    return this.batches;
  }

  /** Recoveries from a failed fdatasync completed so far (the tests count them). */
  get recoveries(): number {
    return this.recovered;
  }

  /** Whether a failed fdatasync is outstanding: every barrier fails until recover() succeeded. */
  get syncFailed(): boolean {
    return this.failed !== null;
  }

  /** The failed fdatasync outstanding (see syncFailed), with its error; null when none is. */
  get syncFailure(): JournalUnavailableError | null {
    return this.gone ?? this.failed;
  }

  /**
   * The last batch lost at its COMMIT (a full disk), until a batch commits again: what the
   * journal's status says without a write of its own (SqliteJournal.knownFailure()).
   */
  get commitFailure(): JournalUnavailableError | null {
    return this.lastLoss;
  }

  /** Opens the turn's batch on `db` unless it is open: the write that follows runs in it. */
  begin(db: Connection['db']): void {
    if (db.inTransaction) return;
    db.exec('BEGIN IMMEDIATE');
    this.scheduleCommit();
  }

  /**
   * A write was made (in the batch): the next barrier has something to carry to disk. Returns
   * the write's number (see synced()).
   */
  wrote(): number {
    this.unsynced = true;
    this.batchWrote = true;
    return ++this.writes;
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
      if (this.batchWrote) this.lastLoss = null;
      this.batchWrote = false;
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
    const lost = new JournalUnavailableError(
      `journal unavailable (commit): ${reason}; the writes of that moment were not kept`,
      { cause: error },
    );
    this.batchLost = lost;
    this.lastLoss = lost;
    this.batchWrote = false;
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
   * acknowledged); after a failed fdatasync every barrier fails until the journal has recovered
   * (recover()).
   */
  durable(): Promise<void> {
    if (!this.unsynced && this.batchLost === null && this.failed === null && this.gone === null) {
      return this.syncing ?? Promise.resolve();
    }
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
    if (this.gone !== null) {
      done.reject(this.gone);
      return;
    }
    if (this.failed !== null) {
      this.recover().then(done.resolve, done.reject);
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
    const covers = this.writes;
    const failuresBefore = this.failures;
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
    const gone = this.goneSince(fd);
    if (gone !== null) {
      this.gone = gone;
      return Promise.reject(gone);
    }
    this.unsynced = false;
    this.inFlight++;
    let markReturned = (): void => undefined;
    const sync = {
      fd,
      returned: new Promise<void>((resolve) => {
        markReturned = resolve;
      }),
    };
    this.running.add(sync);
    const outcome = new Promise<void>((resolve, reject) => {
      fdatasync(fd, (error) => {
        this.inFlight--;
        this.running.delete(sync);
        if (this.host.closed()) this.closeWal();
        else this.closeStaleWal();
        // Counted before anyone waiting for this return goes on (see below).
        const failed = error === null ? null : this.markFailed(error);
        markReturned();
        if (failed !== null) {
          reject(failed);
          return;
        }
        // Linux keeps one writeback-error cursor per open file: of the fdatasyncs of one
        // descriptor that overlap, whichever checks first is told of a failed writeback, and
        // the others return 0, whatever pages failed. So a success proves nothing while another
        // of this descriptor that ran beside it has not returned: the answer (and what the
        // journal vouches for, syncedThrough) waits for those. Not for one begun after this
        // returned: its check comes after this one's, which was told of every error there was.
        const overlapping = [...this.running].filter((s) => s.fd === fd).map((s) => s.returned);
        void Promise.all(overlapping).then(() => {
          if (this.failures !== failuresBefore) {
            // Another fdatasync failed while this one ran, or before the last of those beside
            // it returned: this one's success proves nothing.
            this.unsynced = true;
            reject(this.failed ?? failedSince());
            return;
          }
          this.syncs++;
          this.syncedThrough = Math.max(this.syncedThrough, covers);
          resolve();
        });
      });
    });
    return this.track(outcome, sync.returned);
  }

  /**
   * An fdatasync of the WAL failed. On Linux the kernel may have marked the pages whose
   * writeback failed clean (their content stays in the page cache, not on disk) and reports the
   * error once: a later fdatasync of the same file succeeds without writing them. So a later
   * success proves nothing, neither for these commits nor for any commit after them (SQLite's
   * recovery stops at the first frame of the WAL whose checksum fails: a hole in the WAL loses
   * everything after it). The journal fails closed — every barrier fails, nothing is
   * acknowledged, published or written — until recover() has written the WAL anew, and SQLite's
   * automatic checkpoint is off meanwhile: it would copy the commits past the hole into the
   * database file on the strength of its own fsync of the WAL (which, the error reported once
   * to each descriptor, succeeds the second time), and a crash would then replay the WAL's
   * valid prefix over them. docs/spec-notes.md (journal).
   */
  private markFailed(error: NodeJS.ErrnoException): JournalUnavailableError {
    this.unsynced = true;
    this.failures++;
    this.recoverAfter = performance.now() + RECOVERY_RETRY_MS;
    const failed = new JournalUnavailableError(
      `journal unavailable (sync): ${error.code ?? error.message}; nothing is acknowledged until the journal has written its log anew and synced it`,
      { cause: error },
    );
    this.failed = failed;
    try {
      this.host.current().db.pragma('wal_autocheckpoint = 0');
    } catch {
      // The connection failed: nothing checkpoints on it either.
    }
    return failed;
  }

  /**
   * Recovery from a failed fdatasync (see syncFailed): every frame of the WAL up to SQLite's
   * last commit is read back — from the page cache, which still holds what SQLite wrote — its
   * checksum chain verified as SQLite's own recovery would, and written again in place through
   * a descriptor of its own, then fdatasynced. The writes make those pages dirty again, so the
   * fdatasync carries them to disk anew, and its descriptor, opened after the failure, is told of
   * any error of this writeback. When it succeeds, every commit so far is on disk (the WAL whole
   * up to its last commit) and barriers succeed again. A chain that does not verify (a page the
   * kernel evicted, read back stale from the disk) is not written and the journal stays closed.
   * Tried RECOVERY_RETRY_MS after the failure, then at most once per RECOVERY_RETRY_MS: the
   * barriers asked for meanwhile wait for the next attempt (bounded) and share its outcome;
   * none of them succeeds before it has.
   */
  private recover(): Promise<void> {
    if (this.recoveryDue !== null) return this.recoveryDue;
    const wait = Math.max(0, this.recoverAfter - performance.now());
    const due = new Promise<void>((resolve) => {
      setTimeout(resolve, wait);
    }).then(() => {
      this.recoveryDue = null;
      if (this.host.closed()) return Promise.reject(this.failed ?? failedSince());
      // Recovered meanwhile (by an attempt these writes came after): an ordinary barrier.
      if (this.failed === null) return this.durable();
      return this.attemptRecovery();
    });
    this.recoveryDue = due;
    return due;
  }

  /** One attempt at the recovery (see recover()). */
  private attemptRecovery(): Promise<void> {
    const failed = this.failed ?? failedSince();
    const now = performance.now();
    if (this.inFlight > 0) {
      // An fdatasync begun before the failure still runs: the next attempt.
      this.recoverAfter = now + RECOVERY_RETRY_MS;
      return Promise.reject(failed);
    }
    this.recoverAfter = now + RECOVERY_RETRY_MS;
    // The batch open now first, as a barrier commits its own: the log is written anew only up
    // to its last commit, and this attempt vouches for every write made so far (`covers`). An
    // attempt runs from a timer, so a write made earlier in the same turn (another timer's) is
    // still in that batch; once the attempt succeeded, its barrier finds nothing left to sync.
    this.commitBatch();
    const lost = this.batchLost;
    if (lost !== null) {
      // The barrier its writers wait for, if one does, fails with it too (commitOnItsOwn).
      if (this.barrier === null) this.batchLost = null;
      return Promise.reject(lost);
    }
    const covers = this.writes;
    let fd: number;
    try {
      fd = rewriteWal(this.host.path, this.shmFd());
    } catch (error) {
      return Promise.reject(
        new JournalUnavailableError(
          `${failed.message}; the log could not be written anew: ${error instanceof Error ? error.message : String(error)}`,
          { cause: error },
        ),
      );
    }
    const gone = this.goneSince(fd);
    if (gone !== null) {
      this.gone = gone;
      return Promise.reject(gone);
    }
    this.unsynced = false;
    this.inFlight++;
    return this.track(
      new Promise<void>((resolve, reject) => {
        fdatasync(fd, (error) => {
          this.inFlight--;
          closeSync(fd);
          if (this.host.closed()) this.closeWal();
          else this.closeStaleWal();
          if (error !== null) {
            reject(this.markFailed(error));
            return;
          }
          this.recovered++;
          this.failed = null;
          try {
            this.host.current().db.pragma(`wal_autocheckpoint = ${AUTOCHECKPOINT_PAGES}`);
          } catch {
            // The connection failed: its next use fails and replaces it.
          }
          this.syncs++;
          this.syncedThrough = Math.max(this.syncedThrough, covers);
          resolve();
        });
      }),
    );
  }

  /**
   * At close (a graceful stop) with a failed fdatasync outstanding: the recovery, synchronously,
   * before SQLite's checkpoint at close copies the WAL into the database file. False when it
   * could not be done (the journal's next start reads what the WAL holds on disk: its valid
   * prefix, never acknowledged past the failure).
   */
  recoverAtClose(): boolean {
    if (this.failed === null) return true;
    try {
      const fd = rewriteWal(this.host.path, this.shmFd());
      try {
        fdatasyncSync(fd);
      } finally {
        closeSync(fd);
      }
      this.failed = null;
      this.recovered++;
      return true;
    } catch {
      return false;
    }
  }

  /**
   * Registers a barrier's fdatasync as the one running (see durable()): `outcome` is the
   * barrier's answer, `returned` settles when the fdatasync itself returns (the answer of one
   * that returned 0 may wait for others that ran beside it, see beginSync; the recovery's is its
   * return's: no other runs beside it).
   */
  private track(outcome: Promise<void>, returned: Promise<void> = outcome): Promise<void> {
    const next = (): void => {
      // The writes made while it ran: the next barrier carries them if one waits; if none
      // does, their batch commits now (so that other connections see it) and waits for one.
      if (this.barrierDone !== null) this.startBarrier();
      else if (!this.commitScheduled) this.commitOnItsOwn();
    };
    returned.then(next, next);
    this.syncing = outcome;
    const forget = (): void => {
      if (this.syncing === outcome) this.syncing = null;
    };
    outcome.then(forget, forget);
    return outcome;
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
    // A setting of the connection, as the descriptor is: made again on a replaced one.
    this.host.current().db.pragma(`journal_size_limit = ${WAL_SIZE_LIMIT_BYTES}`);
    if (this.journalFile === null) {
      const { dev, ino } = statSync(this.host.path);
      this.journalFile = { dev, ino };
    }
    return fd;
  }

  /**
   * Whether the journal's files are still the ones its path names, checked before each barrier:
   * SQLite keeps writing the files it opened, and fdatasync syncs them, after they were
   * removed (a state folder deleted while the daemon ran, a journal moved away or another file
   * moved over it). Every command then journaled was acknowledged — and actuated — from files
   * that the next start does not find: its open commands never settled, a retry of a settled key
   * run again (I1). Not to be recovered from in this process: it fails closed, and says so.
   */
  private goneSince(walFd: number): JournalUnavailableError | null {
    const path = this.host.path;
    let why: string | null = null;
    try {
      const wal = fstatSync(walFd);
      const walNow = statSync(`${path}-wal`);
      const journalNow = statSync(path);
      if (wal.nlink === 0 || walNow.dev !== wal.dev || walNow.ino !== wal.ino) {
        why = `its log ${path}-wal is not the file it writes any more`;
      } else if (
        this.journalFile !== null &&
        (journalNow.dev !== this.journalFile.dev || journalNow.ino !== this.journalFile.ino)
      ) {
        why = `${path} is another file than the one it opened`;
      }
    } catch (error) {
      const code = (error as { code?: unknown }).code;
      if (code !== 'ENOENT' && code !== 'ENOTDIR') return null;
      why = `${(error as { path?: string }).path ?? path} was removed`;
    }
    if (why === null) return null;
    return new JournalUnavailableError(
      `journal unavailable (sync): the journal was removed or replaced while sluiced ran (${why}); what it journals now would not be found at the next start, so nothing is acknowledged or written any more: restart sluiced (the commands journaled since the removal are lost with the removed file)`,
    );
  }

  /** The WAL index's descriptor (see `shm`): the one kept, while it is still the path's file. */
  private shmFd(): number {
    const path = `${this.host.path}-shm`;
    const file = statSync(path);
    if (this.shm !== null) {
      const held = fstatSync(this.shm);
      if (held.dev === file.dev && held.ino === file.ino) return this.shm;
      // The index was made anew (the connection replaced, the last one to close removed it):
      // the old file has no connection of this process, and its locks are none of theirs.
      this.closeShm();
    }
    this.shm = openSync(path, 'r');
    return this.shm;
  }

  /**
   * Closes the WAL index's descriptor: only once the journal's connection is closed (a close, a
   * replaced connection before the new one opens), when closing it releases no lock in use.
   */
  closeShm(): void {
    if (this.shm === null) return;
    try {
      closeSync(this.shm);
    } catch {
      // Closed already.
    }
    this.shm = null;
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

/** The barrier's answer when a failure was registered without its error (not expected). */
function failedSince(): JournalUnavailableError {
  return new JournalUnavailableError(
    'journal unavailable (sync): an fdatasync of the log failed; nothing is acknowledged until the journal has written its log anew and synced it',
  );
}

/** SQLite's WAL format (https://www.sqlite.org/fileformat2.html#walformat). */
const WAL_HEADER = 32;
const FRAME_HEADER = 24;
/** The wal-index header (https://www.sqlite.org/walformat.html): two copies of 48 bytes. */
const SHM_HEADER = 48;

/**
 * Writes the WAL of the journal at `path` anew, in place, up to SQLite's last commit (recover()):
 * reads the wal-index header (the -shm file through `shmFd`, in the machine's byte order) for the last committed
 * frame, then the WAL's header and each frame, verifying the checksum chain and salts as
 * SQLite's recovery does, and writes each verified frame back to where it was. Returns the
 * descriptor the writes went through (opened for them, so that its fdatasync is told of any
 * error of their writeback); the caller fdatasyncs and closes it. Throws when the chain does not
 * verify: the page cache no longer holds what SQLite committed, and nothing is written.
 */
function rewriteWal(path: string, shmFd: number): number {
  const shm = Buffer.alloc(2 * SHM_HEADER);
  // Read through the descriptor the journal keeps (GroupCommit.shm): never one opened and
  // closed here, which would release SQLite's locks on the index.
  if (readSync(shmFd, shm, 0, shm.length, 0) !== shm.length) {
    throw new Error('the wal-index header is incomplete');
  }
  if (!shm.subarray(0, SHM_HEADER).equals(shm.subarray(SHM_HEADER)) || shm[12] !== 1) {
    throw new Error('the wal-index header is not consistent');
  }
  const mxFrame = endianness() === 'LE' ? shm.readUInt32LE(16) : shm.readUInt32BE(16);
  const fd = openSync(`${path}-wal`, 'r+');
  try {
    if (mxFrame === 0) return fd; // every commit is in the database file (checkpointed, synced)
    const header = Buffer.alloc(WAL_HEADER);
    if (readSync(fd, header, 0, WAL_HEADER, 0) !== WAL_HEADER) {
      throw new Error('the WAL header is incomplete');
    }
    const magic = header.readUInt32BE(0);
    if (magic !== 0x377f0682 && magic !== 0x377f0683)
      throw new Error('the WAL header is not valid');
    const bigEndian = (magic & 1) === 1;
    const headerSum = walChecksum(bigEndian, header.subarray(0, 24), 0, 0);
    if (headerSum[0] !== header.readUInt32BE(24) || headerSum[1] !== header.readUInt32BE(28)) {
      throw new Error('the WAL header checksum does not verify');
    }
    if (!header.subarray(16, 24).equals(shm.subarray(32, 40))) {
      throw new Error("the WAL header's salts are not the wal-index's");
    }
    const rawSize = header.readUInt32BE(8);
    const pageSize = rawSize === 1 ? 65_536 : rawSize;
    const frame = Buffer.alloc(FRAME_HEADER + pageSize);
    let sum = headerSum;
    let commit = false;
    // Each verified frame is written back where it was, header first, in SQLite's order. A
    // frame that does not verify stops it: those before it were written with what they held.
    writeAll(fd, header, 0);
    for (let i = 0; i < mxFrame; i++) {
      const at = WAL_HEADER + i * frame.length;
      if (readSync(fd, frame, 0, frame.length, at) !== frame.length) {
        throw new Error(`frame ${i + 1} of ${mxFrame} is incomplete`);
      }
      sum = walChecksum(bigEndian, frame.subarray(0, 8), sum[0], sum[1]);
      sum = walChecksum(bigEndian, frame.subarray(FRAME_HEADER), sum[0], sum[1]);
      if (
        !frame.subarray(8, 16).equals(header.subarray(16, 24)) ||
        sum[0] !== frame.readUInt32BE(16) ||
        sum[1] !== frame.readUInt32BE(20)
      ) {
        throw new Error(
          `frame ${i + 1} of ${mxFrame} does not verify: the page cache no longer holds what was committed`,
        );
      }
      writeAll(fd, frame, at);
      commit = frame.readUInt32BE(4) !== 0;
    }
    if (!commit) throw new Error(`frame ${mxFrame}, the last committed, is not a commit frame`);
    return fd;
  } catch (error) {
    closeSync(fd);
    throw error;
  }
}

function writeAll(fd: number, buffer: Buffer, at: number): void {
  let done = 0;
  while (done < buffer.length) {
    done += writeSync(fd, buffer, done, buffer.length - done, at + done);
  }
}

/**
 * SQLite's WAL checksum (walChecksumBytes): over 32-bit words in the byte order the WAL's magic
 * names, two sums each adding the other, continued from (s1, s2).
 */
function walChecksum(bigEndian: boolean, data: Buffer, s1: number, s2: number): [number, number] {
  let a = s1;
  let b = s2;
  for (let i = 0; i < data.length; i += 8) {
    const x0 = bigEndian ? data.readUInt32BE(i) : data.readUInt32LE(i);
    const x1 = bigEndian ? data.readUInt32BE(i + 4) : data.readUInt32LE(i + 4);
    a = (a + x0 + b) >>> 0;
    b = (b + x1 + a) >>> 0;
  }
  return [a, b];
}
