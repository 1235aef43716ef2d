import { pino, type Logger as PinoLogger } from 'pino';

/** Where the daemon's JSON lines go: stdout, or a stand-in for it. */
interface LineSink {
  write(chunk: string): unknown;
}

/** The batches not yet written, flushed when the process exits (see TurnBatchedLines). */
const unwritten = new Set<TurnBatchedLines>();
let exitHooked = false;

/**
 * The log lines of one turn of the event loop, written to stdout in one write at the turn's end
 * (setImmediate) instead of one write per line. Under load a confirmed command logs four lines
 * (accepted, dispatched, settled, answered): written one by one they were four system calls per
 * command, about 7 % of the daemon's main thread in the bench's throughput phase; a turn of a
 * busy daemon logs tens of lines, now written together. A lone line is written in the turn that
 * logged it, as before.
 *
 * Nothing is held longer than the turn, and nothing logged is lost when the process ends as Node
 * ends it: `process.exit`, a signal handled by the daemon, an uncaught exception or an unhandled
 * rejection (Node emits 'exit' for each, and the batch is written there, synchronously, whole).
 * Only a process killed in the middle of a
 * turn (SIGKILL, systemd's watchdog) loses that turn's lines, which a line-by-line write would
 * have written; the command journal, not the log, is the record of every command.
 */
export class TurnBatchedLines {
  private lines: string[] = [];
  private scheduled = false;

  constructor(private readonly out: LineSink) {}

  write(line: string): void {
    this.lines.push(line);
    if (this.scheduled) return;
    this.scheduled = true;
    unwritten.add(this);
    setImmediate(this.writeNow);
  }

  /** Writes what was logged so far (pino's `logger.flush()`). */
  flush(done?: (error?: Error) => void): void {
    this.writeNow();
    done?.();
  }

  private readonly writeNow = (): void => {
    this.scheduled = false;
    unwritten.delete(this);
    if (this.lines.length === 0) return;
    const text = this.lines.join('');
    this.lines = [];
    this.out.write(text);
  };
}

function batched(out: LineSink): TurnBatchedLines {
  if (!exitHooked) {
    exitHooked = true;
    process.on('exit', () => {
      for (const lines of [...unwritten]) lines.flush();
    });
  }
  return new TurnBatchedLines(out);
}

/**
 * The daemon's logger: pino JSON lines on stdout (journald under systemd, a file in the demo),
 * at the configured level, each turn's lines in one write (TurnBatchedLines); on a terminal, the
 * same lines made readable by pino-pretty, with the device and key of a command line in front of
 * its message, written as they come. pino-pretty is loaded only for a terminal: a service never
 * pays for it.
 */
export async function daemonLogger(
  level: string,
  stdout: NodeJS.WriteStream & { readonly fd?: number } = process.stdout,
): Promise<PinoLogger> {
  if (!stdout.isTTY) {
    // stdout itself (fd 1) through sonic-boom, pino's own writer: a write is whole however large,
    // on a pipe or socket that takes part of it at a time (Node's process.stdout would queue the
    // rest, and lose it at process.exit); a stand-in without a descriptor, as it is.
    const out =
      typeof stdout.fd === 'number' ? pino.destination({ dest: stdout.fd, sync: true }) : stdout;
    return pino({ level }, batched(out));
  }
  const { default: pretty } = await import('pino-pretty');
  return pino(
    { level },
    pretty({
      destination: stdout,
      // Synchronous, as pino's own stdout: nothing is lost at process.exit.
      sync: true,
      colorize: true,
      translateTime: 'SYS:HH:MM:ss.l',
      ignore: 'pid,hostname',
      messageFormat: (log, messageKey) => {
        const where = [log.device, log.key].filter((v) => typeof v === 'string').join(' ');
        const message = log[messageKey];
        const text = typeof message === 'string' ? message : '';
        return where === '' ? text : `[${where}] ${text}`;
      },
    }),
  );
}
