/**
 * The journal as its log (`-wal`) makes it, computed from the bytes of the file and of the log,
 * with no SQLite connection: what `sluiced --check` reads when it must write nothing (no index,
 * `-shm`, made beside the journal by a connection), of a journal whose newest commits, or all of
 * them, are in the log alone: a daemon killed before SQLite's first checkpoint leaves a file
 * holding only the switch to WAL, and the schema version, the tables and every command in its
 * log. The log's format is SQLite's (https://www.sqlite.org/fileformat2.html#walformat): a
 * 32-byte header, then frames of a 24-byte header and one page each. A frame counts when its
 * salts are the header's and its cumulative checksum holds; the pages of the transactions that
 * end in a commit frame (a database size in pages) are what a checkpoint would copy into the
 * file, the last copy of each page winning; the frames after the last commit are not committed.
 */

/** The log's committed pages: its page size, the database's size in pages, each page's bytes. */
export interface LogPages {
  readonly pageSize: number;
  readonly pages: number;
  readonly page: ReadonlyMap<number, Buffer>;
}

/** The committed pages in `log`; null when it holds no committed transaction (or is no log). */
export function committedPages(log: Buffer): LogPages | null {
  if (log.length < 32) return null;
  const magic = log.readUInt32BE(0);
  if (magic !== 0x377f0682 && magic !== 0x377f0683) return null;
  // The magic's least significant bit: the checksums' words are big-endian.
  const bigEndian = (magic & 1) === 1;
  const pageSize = log.readUInt32BE(8);
  if (pageSize < 512 || pageSize > 65536 || (pageSize & (pageSize - 1)) !== 0) return null;
  const salts = [log.readUInt32BE(16), log.readUInt32BE(20)];
  let sum: [number, number] = checksum(log, 0, 24, bigEndian, [0, 0]);
  if (sum[0] !== log.readUInt32BE(24) || sum[1] !== log.readUInt32BE(28)) return null;
  const committed = new Map<number, Buffer>();
  const pending = new Map<number, Buffer>();
  let pages: number | null = null;
  for (let at = 32; at + 24 + pageSize <= log.length; at += 24 + pageSize) {
    if (log.readUInt32BE(at + 8) !== salts[0] || log.readUInt32BE(at + 12) !== salts[1]) break;
    sum = checksum(log, at, 8, bigEndian, sum);
    sum = checksum(log, at + 24, pageSize, bigEndian, sum);
    if (sum[0] !== log.readUInt32BE(at + 16) || sum[1] !== log.readUInt32BE(at + 20)) break;
    pending.set(log.readUInt32BE(at), log.subarray(at + 24, at + 24 + pageSize));
    const size = log.readUInt32BE(at + 4);
    if (size !== 0) {
      for (const [number, bytes] of pending) committed.set(number, bytes);
      pending.clear();
      pages = size;
    }
  }
  return pages === null ? null : { pageSize, pages, page: committed };
}

/** The database `file` with the committed pages of `log` copied in, as a checkpoint would. */
export function withLog(file: Buffer, log: Buffer): Buffer {
  const committed = committedPages(log);
  if (committed === null) return file;
  const { pageSize, pages, page } = committed;
  const image = Buffer.alloc(pages * pageSize);
  file.copy(image, 0, 0, Math.min(file.length, image.length));
  for (const [number, bytes] of page) {
    if (number >= 1 && number <= pages) bytes.copy(image, (number - 1) * pageSize);
  }
  return image;
}

/** SQLite's WAL checksum of `length` bytes (a multiple of 8) from `start`, carried on from `sum`. */
function checksum(
  bytes: Buffer,
  start: number,
  length: number,
  bigEndian: boolean,
  sum: readonly [number, number],
): [number, number] {
  let [s0, s1] = sum;
  for (let i = start; i < start + length; i += 8) {
    const x0 = bigEndian ? bytes.readUInt32BE(i) : bytes.readUInt32LE(i);
    const x1 = bigEndian ? bytes.readUInt32BE(i + 4) : bytes.readUInt32LE(i + 4);
    s0 = (s0 + x0 + s1) >>> 0;
    s1 = (s1 + x1 + s0) >>> 0;
  }
  return [s0, s1];
}
