import { pino, type Logger as PinoLogger } from 'pino';

/**
 * The daemon's logger: pino JSON lines on stdout (journald under systemd, a file in the demo),
 * at the configured level; on a terminal, the same lines made readable by pino-pretty, with
 * the device and key of a command line in front of its message. pino-pretty is loaded only
 * for a terminal: a service never pays for it.
 */
export async function daemonLogger(
  level: string,
  stdout: NodeJS.WriteStream = process.stdout,
): Promise<PinoLogger> {
  if (!stdout.isTTY) return pino({ level }, stdout);
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
