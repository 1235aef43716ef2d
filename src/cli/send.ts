import { randomUUID } from 'node:crypto';
import {
  fingerprint,
  parseCommandKey,
  parseCommandRequest,
  type CommandRequest,
} from '../core/command.js';
import { InvalidCommandError, InvalidKeyError } from '../core/errors.js';
import type { CommandRecord } from '../core/journal.js';
import { isTlsMqttUrl, withoutPassword, type SluiceConfig } from '../config/config.js';
import type { CliContext } from './context.js';
import { exactDuration } from './durations.js';
import { EXIT, UsageError, type ExitCode } from './errors.js';
import { openJournal } from './journal-reader.js';
import { resultFields } from './result-view.js';
import {
  retryHint,
  type Delivery,
  type SendOptions,
  type SendTarget,
  type WireCommand,
} from './send-common.js';
import { renderFields } from './table.js';
import { keyWords, sluicectlWords } from './typed-back.js';

/**
 * `sluicectl send`: an engineer's command by hand, over either intake, as any issuer would send
 * it — with an Idempotency-Key (a fresh UUID unless `--key`), waiting for the result. Rerunning
 * with the same `--key` sends the same command again and shows the replay: the original's
 * issuedAt and ttl are taken from the journal when readable, so that the retry's fingerprint
 * matches (SPEC §2) instead of being refused as a key reuse.
 */

const TERMINAL = new Set(['confirmed', 'rejected', 'failed']);

export async function runSend(
  ctx: CliContext,
  device: string,
  action: string,
  options: SendOptions,
): Promise<ExitCode> {
  const config = ctx.config();
  if (config.devices[device] === undefined) {
    throw new UsageError(
      `unknown device "${device}" (configured: ${Object.keys(config.devices).join(', ') || 'none'})`,
    );
  }
  if ((options.mqttCert === undefined) !== (options.mqttKey === undefined)) {
    throw new UsageError('--mqtt-cert and --mqtt-key go together: give both, or neither');
  }
  if (options.mqttCert !== undefined && options.via !== 'mqtt') {
    throw new UsageError('--mqtt-cert and --mqtt-key need --via mqtt');
  }
  if (options.via === 'https' && config.https === undefined) {
    throw new UsageError('--via https: the configuration has no https section');
  }
  if (options.via === 'mqtt' && config.mqtt === undefined) {
    throw new UsageError('--via mqtt: the configuration has no mqtt section');
  }
  // As the daemon's mqtt.certFile (config.ts): MQTT.js would speak TLS on mqtt:// and ws:// all
  // the same, under a name that says otherwise, and refuses the pair with tcp://.
  const mqttUrl = config.mqtt?.url;
  if (options.mqttCert !== undefined && mqttUrl !== undefined && !isTlsMqttUrl(mqttUrl)) {
    throw new UsageError(
      `--mqtt-cert: a client certificate needs TLS, and the configuration's mqtt.url ${withoutPassword(mqttUrl)} is not TLS (mqtts:// or wss://)`,
    );
  }
  const key = checkedKey(options.key ?? randomUUID());
  const { command, messageExpiryS } = buildCommand(ctx, config, device, action, key, options);
  const target: SendTarget = {
    ctx,
    config,
    key,
    command,
    options,
    ...(messageExpiryS === undefined ? {} : { messageExpiryS }),
  };
  // Loaded on use: the MQTT client library is the CLI's heaviest import.
  // Interrupted while it waits (Ctrl-C on a slow valve), the run would end without a word, and
  // the key of a command it may have sent (a new UUID unless --key) would be lost with it: the
  // operator's next `send` is then a new command, a second actuation.
  const stopListening = ctx.io.onInterrupt?.(() => {
    ctx.io.stderr.write(
      `sluicectl: interrupted before the result came: the command may have been sent, and the valve may move (key ${key}); ${retryHint(target)}\n`,
    );
  });
  try {
    const delivery =
      options.via === 'https'
        ? await (await import('./send-https.js')).sendHttps(target)
        : await (await import('./send-mqtt.js')).sendMqtt(target);
    return report(ctx, target, delivery);
  } finally {
    stopListening?.();
  }
}

function checkedKey(key: string): string {
  try {
    // The intakes' rule for a new command's key: refused here, before either intake reads it.
    return parseCommandKey(key);
  } catch (error) {
    if (error instanceof InvalidKeyError) throw new UsageError(`--key: ${error.message}`);
    throw error;
  }
}

function validated(body: WireCommand): CommandRequest {
  try {
    return parseCommandRequest(body);
  } catch (error) {
    if (error instanceof InvalidCommandError) {
      throw new UsageError(`invalid command: ${error.errors.join('; ')}`);
    }
    throw error;
  }
}

function wire(
  device: string,
  action: string,
  position: number | undefined,
  issuedAt: string | null,
  ttlMs: number | null,
): WireCommand {
  return {
    device,
    action,
    ...(position === undefined ? {} : { position }),
    ...(issuedAt === null ? {} : { issuedAt }),
    ...(ttlMs === null ? {} : { ttlMs }),
  };
}

/** The body to send, and over MQTT the expiry that times a body without issuedAt. */
interface BuiltCommand {
  readonly command: WireCommand;
  readonly messageExpiryS?: number;
}

function buildCommand(
  ctx: CliContext,
  config: SluiceConfig,
  device: string,
  action: string,
  key: string,
  options: SendOptions,
): BuiltCommand {
  const explicitIssuedAt =
    options.issuedAt === undefined
      ? undefined
      : options.issuedAt === 'now'
        ? new Date(ctx.now()).toISOString()
        : options.issuedAt;
  // Validated first as the operator typed it: a bad --position or --issued-at is a usage error.
  validated(
    wire(device, action, options.position, explicitIssuedAt ?? null, options.ttlMs ?? null),
  );
  if (
    options.key !== undefined &&
    (explicitIssuedAt === undefined || options.ttlMs === undefined)
  ) {
    const again = sameCommandAgain(ctx, config, key, device, action, options, explicitIssuedAt);
    if (again !== null) return again;
  }
  // MQTT commands must carry their age (SPEC §5); over HTTPS the gateway's receipt times it,
  // which a retry with the same key reproduces exactly.
  const issuedAt =
    explicitIssuedAt ?? (options.via === 'mqtt' ? new Date(ctx.now()).toISOString() : null);
  return { command: wire(device, action, options.position, issuedAt, options.ttlMs ?? null) };
}

/**
 * A rerun with a key already journaled for this very command (device, action, position): the
 * original's issuedAt and ttl, when some combination reproduces its fingerprint. Best effort —
 * without a readable journal the command is sent as typed. An original the gateway's receipt
 * timed (no issuedAt, as `send` sends over HTTPS) goes over MQTT without issuedAt too, timed
 * by a Message Expiry Interval of its ttl: a command must carry its age over MQTT (SPEC §5),
 * and an issuedAt would make it another command, refused as a key reuse.
 */
function sameCommandAgain(
  ctx: CliContext,
  config: SluiceConfig,
  key: string,
  device: string,
  action: string,
  options: SendOptions,
  explicitIssuedAt: string | undefined,
): BuiltCommand | null {
  let records: CommandRecord[];
  try {
    const journal = openJournal(ctx.journalPath());
    try {
      records = journal.findByKey(key);
    } finally {
      journal.close();
    }
  } catch {
    return null;
  }
  const scope = options.via === 'mqtt' ? config.mqtt?.identity : undefined;
  for (const r of records) {
    if (scope !== undefined && r.scope !== scope) continue;
    if (r.device !== device || r.action !== action || r.position !== (options.position ?? null)) {
      continue;
    }
    const issued =
      explicitIssuedAt === undefined
        ? [r.issuedAtSource === 'issuer' ? new Date(r.issuedAt).toISOString() : null]
        : [explicitIssuedAt];
    const ttls = options.ttlMs === undefined ? [null, r.ttlMs] : [options.ttlMs];
    for (const issuedAt of issued) {
      // Over MQTT a command without issuedAt is untimed unless its message expires.
      const expiry =
        issuedAt === null && options.via === 'mqtt'
          ? { messageExpiryS: Math.max(1, Math.ceil(r.ttlMs / 1000)) }
          : {};
      for (const ttlMs of ttls) {
        const body = wire(device, action, options.position, issuedAt, ttlMs);
        if (fingerprint(validated(body)) === r.fingerprint) return { command: body, ...expiry };
      }
    }
  }
  return null;
}

function report(ctx: CliContext, target: SendTarget, delivery: Delivery): ExitCode {
  const { key, options } = target;
  const result = delivery.result;
  const settled = result !== null && TERMINAL.has(result.state);
  const code = result?.state === 'confirmed' ? EXIT.OK : EXIT.ERROR;
  if (ctx.json) {
    ctx.outJson({
      via: options.via,
      key,
      sent: target.command,
      replayed: delivery.replayed,
      settled,
      httpStatus: delivery.httpStatus,
      note: delivery.note,
      result,
    });
    return code;
  }
  const style = ctx.style;
  const how = `over ${options.via}${delivery.httpStatus === null ? '' : ` (HTTP ${delivery.httpStatus})`}`;
  if (delivery.replayed) {
    ctx.out(
      `${style.paint('REPLAYED', 'warn')}: key ${key} was already settled; this is its stored result ${how}. Nothing was sent to the controller again.\n`,
    );
  } else if (settled) {
    ctx.out(
      `${style.paint(result.state.toUpperCase(), result.state === 'confirmed' ? 'good' : 'bad')} ${how}` +
        `${delivery.note === null ? '' : `: ${delivery.note}`}\n`,
    );
  } else if (delivery.lost === true) {
    // The run lost track of the command before its wait was over: the note says what is known
    // and how to look it up or retry it safely.
    ctx.out(
      `${style.paint('NOT SETTLED', 'warn')} ${how}` +
        `${delivery.note === null ? '' : `: ${delivery.note}`}\n`,
    );
  } else {
    ctx.out(
      `${style.paint('NOT SETTLED', 'warn')} within ${exactDuration(options.waitMs)} ${how}` +
        `${delivery.note === null ? '' : `: ${delivery.note}`}\n` +
        `  follow it: ${sluicectlWords(ctx)} show ${keyWords(key)}\n`,
    );
  }
  if (result !== null) ctx.out(renderFields(resultFields(result, ctx.now()), style));
  else
    ctx.out(
      renderFields(
        [
          ['key', key],
          ['device', target.command.device],
          ['action', target.command.action],
        ],
        style,
      ),
    );
  return code;
}
