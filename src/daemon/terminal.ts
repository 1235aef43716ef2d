import { closeSync } from 'node:fs';
import { isatty } from 'node:tty';

/**
 * sluiced started in a terminal (not under systemd) outlives the terminal's hang-up: a closed
 * terminal window or a dropped ssh session sends SIGHUP, which reloads the TLS files as any
 * SIGHUP does (nginx and a foreground sshd do the same), and the daemon keeps serving. What it
 * writes to the terminal after that fails with EIO, and Node turns both into a crash:
 *
 * - A write error on process.stdout or process.stderr with no 'error' listener is thrown as an
 *   uncaught exception. The logger's own stream (pino-pretty) handles its errors, but anything
 *   else that writes there — a Node warning, a library's console output, NODE_DEBUG's lines —
 *   ended the daemon at its next write, a command's HTTPS connection for NODE_DEBUG=http.
 * - At exit Node 20 restores the terminal settings it found at start on every standard
 *   descriptor that was a terminal, and aborts when that fails (node::ResetStdio's check, which
 *   later Node versions dropped: nodejs/node#51519, #58200); on a hung-up terminal it always
 *   fails, so a clean stop (SIGTERM) after a hang-up ended killed by SIGABRT or SIGSEGV, not 0.
 *
 * So: EIO on either stream is taken as the terminal gone and ignored (the lines are lost, as a
 * hung-up terminal loses them; the journal is the record of every command), any other error is
 * thrown as before; and at exit the standard descriptors that were a terminal and are one no
 * longer (isatty fails with EIO on a hung-up terminal) are closed, which Node's restore skips.
 * Nothing is done when none of them is a terminal (systemd, a pipe, a file).
 */
export function outliveTerminalHangup(): void {
  const terminals = [0, 1, 2].filter((fd) => isatty(fd));
  if (terminals.length === 0) return;
  for (const stream of [process.stdout, process.stderr]) {
    if (!stream.isTTY) continue;
    stream.on('error', (error: NodeJS.ErrnoException) => {
      if (error.code === 'EIO') return;
      // What Node does with no listener: another error is as fatal as it was.
      throw error;
    });
  }
  process.on('exit', () => {
    for (const fd of terminals) {
      if (isatty(fd)) continue;
      try {
        closeSync(fd);
      } catch {
        // Closed already: Node's restore skips it all the same.
      }
    }
  });
}
