import { sep } from 'node:path';
import type { Logger as PinoLogger } from 'pino';
import type { SluiceConfig } from '../config/config.js';
import {
  readHttpsTlsFiles,
  readMqttTlsFiles,
  type HttpsTlsFiles,
  type MqttTlsFiles,
} from '../config/preflight.js';
import { certificateName } from '../intake/https-certificate.js';
import type { IdentityRegistry } from '../intake/identities.js';
import {
  reloadMqttPassword,
  reloadTokenFiles,
  type PasswordReload,
  type PasswordTarget,
  type TokenReload,
} from './token-reload.js';

/**
 * The reload (SIGHUP, `systemctl reload sluiced`): the TLS files are read again with the checks
 * the start runs on them (src/config/preflight.ts) and, when they pass, used from then on — the
 * HTTPS intake's for every new handshake, the MQTT client's for the next connection to the
 * broker. Files that fail a check change nothing: what was served stays served, and the log
 * says which file and why. A certificate agent (ACME, EST, a CA script) renews the files and
 * reloads; nothing else is disturbed.
 *
 * And the token files and mqtt.passwordFile outside $CREDENTIALS_DIRECTORY, whose tokens replace
 * those read before, and whose password the next connection to the broker uses (token-reload.ts). The configuration file is not read again: devices, identities and every
 * other setting are what the daemon built its parts from at start (an identity's devices, a
 * PLC's connection, the journal), and only a restart builds them anew.
 *
 * Synchronous from the first read to the last change: a reload is one turn of the event loop,
 * so two SIGHUPs in a row make two reloads one after the other, never overlapping.
 */

/** What a reload did with one intake's files. */
export type TlsReloadOutcome =
  /** Read, checked and in use. */
  | 'reloaded'
  /** A check failed (or OpenSSL refused the material): the files in use before stay. */
  | 'kept'
  /** The intake is not listening (not started yet, or stopping): nothing to change. */
  | 'not listening'
  /** No such intake, or (MQTT) no TLS files configured. */
  | 'not configured';

export interface TlsReload {
  readonly tokens: TokenReload;
  readonly mqttPassword: PasswordReload;
  readonly https: TlsReloadOutcome;
  readonly mqtt: TlsReloadOutcome;
}

/** The intakes as the reload changes them (HttpsIntake, MqttIntake). */
export interface TlsReloadTargets {
  readonly https: {
    replaceTlsMaterial(tls: Pick<HttpsTlsFiles, 'cert' | 'key' | 'ca'>): boolean;
    /** Whose token files are read again (token-reload.ts): bearer tokens are HTTPS's alone. */
    readonly identities: IdentityRegistry;
  } | null;
  readonly mqtt: ({ replaceTlsFiles(files: MqttTlsFiles): boolean } & PasswordTarget) | null;
}

export function reloadTlsFiles(
  config: SluiceConfig,
  targets: TlsReloadTargets,
  logger: PinoLogger,
  env: NodeJS.ProcessEnv,
): TlsReload {
  logger.info(
    {},
    'reload (SIGHUP): reading the TLS files again (https.certFile, keyFile, clientCaFile; mqtt.caFile, certFile, keyFile) and the token and password files outside $CREDENTIALS_DIRECTORY (identities.*.tokenFile, mqtt.passwordFile); the configuration file is not reloaded: devices, identities and every other setting change only with a restart',
  );
  warnOfCredentials(config, logger, env);
  const tokens = reloadTokenFiles(config, targets.https?.identities ?? null, logger, env);
  let mqttPassword: PasswordReload;
  try {
    mqttPassword = reloadMqttPassword(config, targets.mqtt, logger, env);
  } catch (error) {
    // As guarded(): a bug must not end the daemon from its signal handler.
    logger.error(
      { err: error },
      'mqtt.passwordFile not reloaded: the reload failed; the password in use before stays',
    );
    mqttPassword = 'kept';
  }
  const outcome: TlsReload = {
    tokens,
    mqttPassword,
    https: guarded('https', logger, () => reloadHttps(config.https, targets.https, logger)),
    mqtt: guarded('mqtt', logger, () => reloadMqtt(config.mqtt, targets.mqtt, logger)),
  };
  logger.info(outcome, 'reload done');
  return outcome;
}

/**
 * A reload that fails unexpectedly (a bug) is logged and changes nothing more: an operator's
 * `systemctl reload` must never end the daemon, as an error escaping the signal handler would.
 */
function guarded(
  part: 'https' | 'mqtt',
  logger: PinoLogger,
  reload: () => TlsReloadOutcome,
): TlsReloadOutcome {
  try {
    return reload();
  } catch (error) {
    logger.error(
      { err: error, part },
      `${part === 'https' ? 'HTTPS' : 'MQTT'} TLS files not reloaded: the reload failed; the files in use before stay`,
    );
    return 'kept';
  }
}

function reloadHttps(
  https: SluiceConfig['https'],
  intake: TlsReloadTargets['https'],
  logger: PinoLogger,
): TlsReloadOutcome {
  if (https === undefined || intake === null) return 'not configured';
  const log = logger.child({ intake: 'https' });
  const read = readHttpsTlsFiles(https);
  if (!read.ok) {
    log.error(
      { errors: read.errors },
      `HTTPS TLS files not reloaded: ${read.errors.join('; ')}; the certificate served so far stays`,
    );
    return 'kept';
  }
  const { certificate } = read.files;
  try {
    if (!intake.replaceTlsMaterial(read.files)) {
      log.warn({}, 'HTTPS TLS files not reloaded: the HTTPS intake is not listening');
      return 'not listening';
    }
  } catch (error) {
    log.error(
      { err: error, certFile: https.certFile, keyFile: https.keyFile },
      `HTTPS TLS files not reloaded: the TLS library refused them (${error instanceof Error ? error.message : String(error)}); the certificate served so far stays`,
    );
    return 'kept';
  }
  const validTo = new Date(certificate.validTo).toISOString();
  log.info(
    {
      certFile: https.certFile,
      keyFile: https.keyFile,
      clientCaFile: https.clientCaFile ?? null,
      subject: certificate.subject.replace(/\n/g, ', '),
      validFrom: new Date(certificate.validFrom).toISOString(),
      validTo,
      fingerprint256: certificate.fingerprint256,
    },
    `HTTPS TLS files reloaded: new TLS handshakes get certificate CN=${certificateName(certificate)} (valid until ${validTo})${https.clientCaFile === undefined ? '' : ' and client certificates are checked against the clientCaFile read now'}; open connections keep theirs`,
  );
  return 'reloaded';
}

function reloadMqtt(
  mqtt: SluiceConfig['mqtt'],
  intake: TlsReloadTargets['mqtt'],
  logger: PinoLogger,
): TlsReloadOutcome {
  if (mqtt === undefined || intake === null) return 'not configured';
  const { caFile, certFile, keyFile } = mqtt;
  if (caFile === undefined && certFile === undefined && keyFile === undefined) {
    return 'not configured';
  }
  const log = logger.child({ component: 'mqtt' });
  const read = readMqttTlsFiles(mqtt);
  if (!read.ok) {
    log.error(
      { errors: read.errors },
      `MQTT TLS files not reloaded: ${read.errors.join('; ')}; the files read before stay in use, for the next connection too`,
    );
    return 'kept';
  }
  const connected = intake.replaceTlsFiles(read.files);
  log.info(
    { caFile: caFile ?? null, certFile: certFile ?? null, keyFile: keyFile ?? null, connected },
    connected
      ? 'MQTT TLS files reloaded: the next connection to the broker uses them; the connection that is up stays, with its session (TLS authenticates at the handshake)'
      : 'MQTT TLS files reloaded: the next connection attempt to the broker uses them',
  );
  return 'reloaded';
}

/**
 * A file under $CREDENTIALS_DIRECTORY is systemd's copy, made when the service started
 * (LoadCredential=, README "Installing as a service"): systemd 252 does not copy it again on a
 * reload, so reading it again reads the old copy. Said, or an operator who renewed the key at
 * its source would see the reload refuse the new certificate ("not the private key of …") or,
 * with both files there, keep the old pair without a word.
 */
function warnOfCredentials(config: SluiceConfig, logger: PinoLogger, env: NodeJS.ProcessEnv): void {
  const folder = env.CREDENTIALS_DIRECTORY;
  if (folder === undefined || folder === '') return;
  const files = [
    config.https?.certFile,
    config.https?.keyFile,
    config.https?.clientCaFile,
    config.mqtt?.caFile,
    config.mqtt?.certFile,
    config.mqtt?.keyFile,
  ].filter((file): file is string => file?.startsWith(`${folder}${sep}`) === true);
  if (files.length === 0) return;
  logger.warn(
    { files },
    'reload: these TLS files are systemd credentials (LoadCredential=): systemd copied them when sluiced started and does not copy them again on a reload, so a file renewed at its source is taken only by a restart (systemctl restart sluiced); keep files that are renewed in place outside the credentials (docs/configuration.md)',
  );
}
