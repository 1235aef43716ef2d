import { readFileSync } from 'node:fs';
import { isAbsolute, relative, resolve, sep } from 'node:path';
import type { Logger as PinoLogger } from 'pino';
import type { SluiceConfig } from '../config/config.js';
import type { IdentityRegistry } from '../intake/identities.js';
import { MAX_MQTT_STRING_BYTES } from '../intake/mqtt-topics.js';

/**
 * The reload's part for bearer tokens (SIGHUP, `systemctl reload sluiced`): an operator who
 * rotates a token at an ordinary path (identities.*.tokenFile: /etc/sluice/tokens/scada) and
 * reloads expects the new token to be accepted and the old one refused from then on, without a
 * restart and its drop of the commands in flight. Those files are read again, with the start's
 * checks (IdentityRegistry.reloadTokenFiles); one that cannot be used keeps the token in use and
 * an error names it: a reload never locks every client out.
 *
 * The same for mqtt.passwordFile (reloadMqttPassword): read again, and used from the next
 * connection to the broker on; the connection that is up stays (the broker checks a password at
 * CONNECT only), so a rotation done on the broker first and on the gateway's file second, or the
 * other way round, drops nothing.
 *
 * Not read again: token and password files under $CREDENTIALS_DIRECTORY, systemd's copies
 * (LoadCredential=), made when the service started and not again on a reload (systemd 252), so
 * reading them would read the old secret. A restart takes those; each reload says so (0084777),
 * naming them.
 */

/** What the reload did with the token files, by identity (for the `reload done` line). */
export interface TokenReload {
  readonly replaced: readonly string[];
  readonly unchanged: readonly string[];
  readonly kept: readonly string[];
  /** Under $CREDENTIALS_DIRECTORY: not read again. */
  readonly credentials: readonly string[];
}

export function reloadTokenFiles(
  config: SluiceConfig,
  identities: IdentityRegistry | null,
  logger: PinoLogger,
  env: NodeJS.ProcessEnv,
): TokenReload {
  const folder = env.CREDENTIALS_DIRECTORY;
  const isCredential = (file: string): boolean =>
    folder !== undefined && folder !== '' && isUnder(file, folder);
  warnOfSecretsReadAtStart(config, isCredential, logger);
  const outcome = { replaced: [] as string[], unchanged: [] as string[], kept: [] as string[] };
  const credentials = Object.entries(config.identities)
    .filter(([, c]) => c.tokenFile !== undefined && isCredential(c.tokenFile))
    .map(([name]) => name);
  if (identities === null) return { ...outcome, credentials };
  for (const r of identities.reloadTokenFiles((file) => !isCredential(file))) {
    const fields = { identity: r.identity, file: r.file };
    switch (r.outcome) {
      case 'replaced':
        logger.info(
          fields,
          `reload: token file read again: identities.${r.identity}'s new token is accepted from now on and the one before it is refused (401); the status page sessions started with the one before are ended`,
        );
        break;
      case 'unchanged':
        logger.info(fields, `reload: token file read again, unchanged: identities.${r.identity}`);
        break;
      case 'kept':
        logger.error(
          fields,
          `reload: token file not taken: ${r.error}; identities.${r.identity}'s token read before stays the one accepted: write the file whole (beside it, then renamed over it) and reload again`,
        );
        break;
    }
    outcome[r.outcome].push(r.identity);
  }
  return { ...outcome, credentials };
}

/** What the reload did with mqtt.passwordFile (for the `reload done` line). */
export type PasswordReload =
  /** Read again: the next connection to the broker uses the new password. */
  | 'replaced'
  | 'unchanged'
  /** Not usable (missing, empty, too long): the password read before stays in use. */
  | 'kept'
  /** Under $CREDENTIALS_DIRECTORY: not read again (warnOfSecretsReadAtStart). */
  | 'credential'
  /** No MQTT intake, or no password file. */
  | 'not configured';

/** The MQTT intake as the reload changes its password (MqttIntake.replacePassword). */
export interface PasswordTarget {
  replacePassword(password: string): { readonly changed: boolean; readonly connected: boolean };
}

/**
 * mqtt.passwordFile read again with the start's checks (src/config/preflight.ts: readable, not
 * empty once trimmed, at most what MQTT carries) and handed to the intake for its next
 * connection. A file that fails them keeps the password in use, and an error names the file and
 * why, never the password: a reload never locks the gateway out of its broker.
 */
export function reloadMqttPassword(
  config: SluiceConfig,
  intake: PasswordTarget | null,
  logger: PinoLogger,
  env: NodeJS.ProcessEnv,
): PasswordReload {
  const file = config.mqtt?.passwordFile;
  if (file === undefined || intake === null) return 'not configured';
  if (isCredentialIn(env, file)) return 'credential';
  const log = logger.child({ component: 'mqtt' });
  let password: string;
  try {
    password = readFileSync(file, 'utf8').trim();
  } catch (error) {
    const reason = (error as NodeJS.ErrnoException).code ?? 'unreadable';
    log.error(
      { file },
      `reload: mqtt.passwordFile not taken: ${file} cannot be read (${reason}); the password read before stays the one used to connect`,
    );
    return 'kept';
  }
  const bytes = Buffer.byteLength(password, 'utf8');
  const refusal =
    bytes === 0
      ? 'it is empty'
      : bytes > MAX_MQTT_STRING_BYTES
        ? `${bytes} bytes, longer than an MQTT password may be (${MAX_MQTT_STRING_BYTES} bytes)`
        : null;
  if (refusal !== null) {
    log.error(
      { file },
      `reload: mqtt.passwordFile not taken: ${refusal}; the password read before stays the one used to connect: write the file whole (beside it, then renamed over it) and reload again`,
    );
    return 'kept';
  }
  const { changed, connected } = intake.replacePassword(password);
  if (!changed) {
    log.info({ file }, 'reload: mqtt.passwordFile read again, unchanged');
    return 'unchanged';
  }
  log.info(
    { file, connected },
    connected
      ? 'reload: mqtt.passwordFile read again: the next connection to the broker uses the new password; the connection that is up stays (a password is checked at connect)'
      : 'reload: mqtt.passwordFile read again: the next connection attempt to the broker uses the new password',
  );
  return 'replaced';
}

function isCredentialIn(env: NodeJS.ProcessEnv, file: string): boolean {
  const folder = env.CREDENTIALS_DIRECTORY;
  return folder !== undefined && folder !== '' && isUnder(file, folder);
}

/**
 * Token and password files under $CREDENTIALS_DIRECTORY are read once, at start: the credential
 * is systemd's copy, which a reload would read unchanged while a restart copies it anew. An
 * operator who replaced one and reloaded would otherwise believe the new one in use while
 * clients holding it are refused 401 and the old one is still accepted (or the broker refuses
 * the gateway's next connection): said, naming the files, at every reload.
 */
function warnOfSecretsReadAtStart(
  config: SluiceConfig,
  isCredential: (file: string) => boolean,
  logger: PinoLogger,
): void {
  const tokens = Object.entries(config.identities).flatMap(([name, identity]) =>
    identity.tokenFile === undefined || !isCredential(identity.tokenFile)
      ? []
      : [`identities.${name}.tokenFile: ${identity.tokenFile}`],
  );
  const password = config.mqtt?.passwordFile;
  const files = [
    ...tokens,
    ...(password === undefined || !isCredential(password)
      ? []
      : [`mqtt.passwordFile: ${password}`]),
  ];
  if (files.length === 0) return;
  logger.warn(
    { files },
    'reload: token and password files are read at start only under $CREDENTIALS_DIRECTORY, not on a reload: systemd copied them when sluiced started (LoadCredential=) and does not copy them again on a reload, so a token or password replaced at its source takes effect with a restart (systemctl restart sluiced); until then the one read at start is the one in use. Token and password files outside the credentials are read again by each reload (docs/configuration.md)',
  );
}

/** `file` is inside `folder` (both as the configuration resolved them). */
function isUnder(file: string, folder: string): boolean {
  const path = relative(resolve(folder), resolve(file));
  return path !== '' && path !== '..' && !path.startsWith(`..${sep}`) && !isAbsolute(path);
}
