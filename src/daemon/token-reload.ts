import { isAbsolute, relative, resolve, sep } from 'node:path';
import type { Logger as PinoLogger } from 'pino';
import type { SluiceConfig } from '../config/config.js';
import type { IdentityRegistry } from '../intake/identities.js';

/**
 * The reload's part for bearer tokens (SIGHUP, `systemctl reload sluiced`): an operator who
 * rotates a token at an ordinary path (identities.*.tokenFile: /etc/sluice/tokens/scada) and
 * reloads expects the new token to be accepted and the old one refused from then on, without a
 * restart and its drop of the commands in flight. Those files are read again, with the start's
 * checks (IdentityRegistry.reloadTokenFiles); one that cannot be used keeps the token in use and
 * an error names it: a reload never locks every client out.
 *
 * Not read again: token files under $CREDENTIALS_DIRECTORY, systemd's copies (LoadCredential=),
 * made when the service started and not again on a reload (systemd 252), so reading them would
 * read the old token; and mqtt.passwordFile, with which the MQTT client was built. A restart
 * takes those; each reload says so (0084777), naming them.
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

/**
 * Token files under $CREDENTIALS_DIRECTORY and mqtt.passwordFile are read once, at start: the
 * credential is systemd's copy, which a reload would read unchanged while a restart copies it
 * anew, and the MQTT client connects with the password it was built with. An operator who
 * replaced one and reloaded would otherwise believe the new one in use while clients holding it
 * are refused 401 and the old one is still accepted: said, naming the files, at every reload.
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
  const files = [...tokens, ...(password === undefined ? [] : [`mqtt.passwordFile: ${password}`])];
  if (files.length === 0) return;
  const credentials = tokens.length > 0 || (password !== undefined && isCredential(password));
  logger.warn(
    { files },
    `reload: token and password files are read at start only, not on a reload: a token or password replaced in them takes effect with a restart (systemctl restart sluiced)${credentials ? ', which also has systemd copy the credentials (LoadCredential=) anew' : ''}; until then the one read at start is the one in use${tokens.length > 0 ? '. A token file outside the credentials is read again by each reload (docs/configuration.md)' : ''}`,
  );
}

/** `file` is inside `folder` (both as the configuration resolved them). */
function isUnder(file: string, folder: string): boolean {
  const path = relative(resolve(folder), resolve(file));
  return path !== '' && path !== '..' && !path.startsWith(`..${sep}`) && !isAbsolute(path);
}
