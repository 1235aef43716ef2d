/**
 * SIGHUP from the process's first moment. Without a handler Node's default action ends the
 * process at once, silently (no log line), and run.ts installs its handler only once its modules
 * are loaded and the configuration is read: a second or more on a gateway's CPU, during which a
 * reload (`kill -HUP`) or a terminal hanging up killed a daemon that was starting. This module
 * imports nothing, so that the entry (cli.ts) installs this handler before it loads anything
 * else; the SIGHUPs it holds are handed to run.ts's own handler once that is in place.
 */
let held = 0;
const hold = (): void => {
  held += 1;
};

/** Holds every SIGHUP from now until handOverHangups(). */
export function holdHangups(): void {
  process.on('SIGHUP', hold);
}

/**
 * Stops holding SIGHUP (the caller's own handler is in place already, so that none is missed
 * in between) and says how many came meanwhile.
 */
export function handOverHangups(): number {
  process.off('SIGHUP', hold);
  const count = held;
  held = 0;
  return count;
}
