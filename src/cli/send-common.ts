import type { SluiceConfig } from '../config/config.js';
import { shellWord } from '../shell-word.js';
import type { CliContext } from './context.js';
import { CliError, EXIT } from './errors.js';
import type { ResultDocument } from './result-view.js';
import { keyWords, sluicectlWords } from './typed-back.js';

/** What `send` and its two intakes (send-https.ts, send-mqtt.ts) share. */

export interface SendOptions {
  readonly via: 'https' | 'mqtt';
  readonly key?: string;
  readonly position?: number;
  readonly waitMs: number;
  /** `now` or RFC 3339; absent: the original's on a rerun, else now (MQTT) or none (HTTPS). */
  readonly issuedAt?: string;
  readonly ttlMs?: number;
  readonly tokenFile?: string;
  readonly ca?: string;
  readonly mqttUsername?: string;
  readonly mqttPasswordFile?: string;
  /** A client certificate and its key for a broker that wants one (both or neither). */
  readonly mqttCert?: string;
  readonly mqttKey?: string;
}

/** The command as it goes on the wire: the body both intakes take (SPEC §2). */
export interface WireCommand {
  readonly device: string;
  readonly action: string;
  readonly position?: number;
  readonly issuedAt?: string;
  readonly ttlMs?: number;
}

/** What an intake answered. */
export interface Delivery {
  readonly result: ResultDocument | null;
  /** The intake marked it a replay (`Idempotent-Replayed: true`, `"replayed": true`). */
  readonly replayed: boolean;
  /** The HTTP status of the answer (HTTPS only). */
  readonly httpStatus: number | null;
  /** Why there is no terminal result (not settled within the wait). */
  readonly note: string | null;
  /**
   * The exchange ended before its wait (the connection lost, no acknowledgement, an answer the
   * intake holding the command could not make durable): the note says what is known of the
   * command, and the report does not say "within --wait".
   */
  readonly lost?: boolean;
}

export interface SendTarget {
  readonly ctx: CliContext;
  readonly config: SluiceConfig;
  readonly key: string;
  readonly command: WireCommand;
  readonly options: SendOptions;
  /**
   * Over MQTT, for a command without issuedAt: the MQTT 5 Message Expiry Interval (seconds)
   * that times it instead (SPEC §5). Only a rerun of a key whose original the gateway's receipt
   * timed (over HTTPS) is sent so: with an issuedAt its fingerprint would differ, and the
   * daemon would refuse the rerun as a key reuse instead of replaying it.
   */
  readonly messageExpiryS?: number;
}

/** The daemon refused the command (a problem document or an MQTT error document). */
export function refused(
  code: string,
  detail: string,
  target: SendTarget,
  status: number | null,
): CliError {
  const at = status === null ? '' : ` (HTTP ${status})`;
  const hint =
    code === 'IDEMPOTENCY_KEY_REUSED'
      ? `; key ${target.key} names a different command (device, action, position, issuedAt and ttl are compared): ` +
        `see ${sluicectlWords(target.ctx)} show ${keyWords(target.key)}, repeat its --issued-at and --ttl, or use a new key`
      : code === 'UNAUTHORIZED'
        ? '; check --token-file / SLUICE_TOKEN'
        : '';
  return new CliError(`${what(target)} refused${at}: ${code}: ${detail}${hint}`, EXIT.ERROR, code);
}

/**
 * What to do about a command whose fate this run could not learn (the connection lost after it
 * was sent): look it up, or send the very same command again — with its key, issuedAt and ttl,
 * so that the intake recognises the retry (SPEC §2) and replays it, never actuating it twice.
 * Another run without --key would be a new command, a second actuation.
 */
export function retryHint(target: SendTarget): string {
  const { command, key, options, ctx } = target;
  const sluicectl = sluicectlWords(ctx);
  const line = [
    sluicectl,
    'send',
    shellWord(command.device),
    command.action,
    ...(command.position === undefined ? [] : ['--position', String(command.position)]),
    '--key',
    shellWord(key),
    '--via',
    options.via,
    ...(command.issuedAt === undefined ? [] : ['--issued-at', command.issuedAt]),
    ...(command.ttlMs === undefined ? [] : ['--ttl', `${command.ttlMs}ms`]),
    // How this run reached the intake (file names, not secrets).
    ...(options.tokenFile === undefined ? [] : ['--token-file', shellWord(options.tokenFile)]),
    ...(options.ca === undefined ? [] : ['--ca', shellWord(options.ca)]),
    ...(options.mqttUsername === undefined
      ? []
      : ['--mqtt-username', shellWord(options.mqttUsername)]),
    ...(options.mqttPasswordFile === undefined
      ? []
      : ['--mqtt-password-file', shellWord(options.mqttPasswordFile)]),
    ...(options.mqttCert === undefined ? [] : ['--mqtt-cert', shellWord(options.mqttCert)]),
    ...(options.mqttKey === undefined ? [] : ['--mqtt-key', shellWord(options.mqttKey)]),
  ].join(' ');
  const show = `${sluicectl} show ${keyWords(key)}`;
  return `look it up with: ${show}; or send it again with the same key (a retry is never actuated twice; a run without --key would be a new command): ${line}`;
}

/** `open inlet-valve over https`. */
function what(target: SendTarget): string {
  return `${target.command.action} ${target.command.device} over ${target.options.via}`;
}
