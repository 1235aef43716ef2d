import { X509Certificate, createPrivateKey, type KeyObject } from 'node:crypto';
import { readFileSync, statSync, type Stats } from 'node:fs';
import type { DeviceProfile } from '../core/profile.js';
import { checkInventory } from '../drivers/inventory-schema.js';
import { IdentityRegistry } from '../intake/identities.js';
import { MAX_MQTT_STRING_BYTES } from '../intake/mqtt-topics.js';
import { ConfigError, deviceProfiles, type SluiceConfig } from './config.js';

/**
 * Everything `sluiced` refuses to start with, checked before it creates anything (state
 * folder, journal, PKI): `sluiced --check` and the daemon's start run this one function, so a
 * configuration that passes the check does not fail at start on its configuration.
 *
 * loadConfig has checked the schema and the cross-references; this adds what only the files
 * can tell: the device profiles and the inventory against them (again: a profile may have
 * changed since), and every file the daemon reads at start — certificates, keys, tokens and
 * passwords present, readable by the user running the check, and what they claim to be.
 */

export interface Preflight {
  readonly profiles: ReadonlyMap<string, DeviceProfile>;
  /**
   * The HTTPS TLS files as read and checked, when HTTPS is configured: the start serves this
   * text and does not read the files again, so that the material served is the material
   * checked (a file replaced in between would otherwise be served unchecked).
   */
  readonly httpsTls: HttpsTlsFiles | null;
}

/** Throws ConfigError, naming `source`, with every problem found. */
export function preflight(config: SluiceConfig, source: string): Preflight {
  const { profiles, errors } = deviceProfiles(config);
  if (errors.length === 0) {
    errors.push(...checkInventory({ plcs: config.plcs, devices: config.devices }, profiles));
  }
  const files = checkFiles(config);
  errors.push(...files.errors);
  if (errors.length > 0) throw new ConfigError(source, errors);
  return { profiles, httpsTls: files.httpsTls };
}

function checkFiles(c: SluiceConfig): {
  errors: string[];
  httpsTls: HttpsTlsFiles | null;
} {
  const errors: string[] = [];
  const files = new FileChecks(errors);
  const httpsTls = c.https === undefined ? null : checkHttpsTls(c.https, files);
  if (c.mqtt !== undefined) {
    const { passwordFile } = c.mqtt;
    const password =
      passwordFile === undefined ? null : files.text(passwordFile, 'mqtt.passwordFile');
    // Read as the intake reads it (trimmed). MQTT carries at most 65,535 bytes, and MQTT.js
    // throws on a longer one at every CONNECT.
    const passwordBytes = password === null ? 0 : Buffer.byteLength(password.trim(), 'utf8');
    if (passwordBytes > MAX_MQTT_STRING_BYTES) {
      errors.push(
        `mqtt.passwordFile: ${passwordFile}: ${passwordBytes} bytes, longer than an MQTT password may be (${MAX_MQTT_STRING_BYTES} bytes): is it the right file?`,
      );
    }
    // MQTT carries a password only after a user name (MQTT 3.1.1 §3.1.2.9; MQTT.js refuses to
    // send a CONNECT with one alone, for either version). Accepted, the intake never reached
    // the broker, and nothing in the log said why.
    if (passwordFile !== undefined && c.mqtt.username === undefined) {
      errors.push(
        `mqtt.username: required with mqtt.passwordFile ${passwordFile}: a password is sent only with a user name, and without one the MQTT client never connects; give the broker user as mqtt.username`,
      );
    }
    checkMqttTls(c.mqtt, files);
  }
  const before = errors.length;
  for (const [name, identity] of Object.entries(c.identities)) {
    if (identity.tokenFile !== undefined) {
      files.text(identity.tokenFile, `identities.${name}.tokenFile`);
    }
  }
  // The identities as the intakes will hold them: a token no Authorization header can carry,
  // one token or certificate CN for two identities (the registry refuses them) — once their
  // files could be read.
  if (errors.length === before) {
    try {
      new IdentityRegistry(c.identities);
    } catch (error) {
      errors.push(error instanceof Error ? error.message : String(error));
    }
  }
  // Created at start when missing; something else in their place cannot be used.
  if (existsAs(c.stateDir, (s) => !s.isDirectory())) {
    errors.push(`stateDir: ${c.stateDir} exists and is not a folder`);
  }
  if (c.journal.path !== undefined && existsAs(c.journal.path, (s) => s.isDirectory())) {
    errors.push(`journal.path: ${c.journal.path} is a folder, not a journal file`);
  }
  return { errors, httpsTls };
}

/**
 * The HTTPS intake's TLS files as read and checked (PEM text, as `tls.createSecureContext`
 * takes it): what the start serves, and what a reload (SIGHUP, src/daemon/tls-reload.ts) puts
 * in its place.
 */
export interface HttpsTlsFiles {
  readonly cert: string;
  readonly key: string;
  /** `https.clientCaFile`'s certificates, when mutual TLS is configured. */
  readonly ca: string | undefined;
  /** The server certificate (the first of `cert`). */
  readonly certificate: X509Certificate;
}

/** The MQTT client's TLS files as read and checked; each absent when not configured. */
export interface MqttTlsFiles {
  readonly ca: string | undefined;
  readonly cert: string | undefined;
  readonly key: string | undefined;
}

/** The outcome of reading a group of files: the files, or every problem found with them. */
export type FilesRead<T> =
  | { readonly ok: true; readonly files: T }
  | { readonly ok: false; readonly errors: readonly string[] };

/**
 * Reads `https.certFile`, `https.keyFile` and `https.clientCaFile` with the checks the start
 * runs on them (each readable and not empty, PEM certificates that parse, an unencrypted PEM
 * key, the key the certificate's own). The text checked is the text returned: a file replaced
 * between a check and its use cannot slip in unchecked.
 */
export function readHttpsTlsFiles(
  https: NonNullable<SluiceConfig['https']>,
): FilesRead<HttpsTlsFiles> {
  const errors: string[] = [];
  const files = checkHttpsTls(https, new FileChecks(errors));
  return files === null || errors.length > 0 ? { ok: false, errors } : { ok: true, files };
}

/**
 * Reads `mqtt.caFile`, `mqtt.certFile` and `mqtt.keyFile` with the checks the start runs on
 * them (as readHttpsTlsFiles; the certificate and key given together).
 */
export function readMqttTlsFiles(mqtt: NonNullable<SluiceConfig['mqtt']>): FilesRead<MqttTlsFiles> {
  const errors: string[] = [];
  const files = checkMqttTls(mqtt, new FileChecks(errors));
  return errors.length > 0 ? { ok: false, errors } : { ok: true, files };
}

function checkHttpsTls(
  https: NonNullable<SluiceConfig['https']>,
  files: FileChecks,
): HttpsTlsFiles | null {
  const { certFile, keyFile, clientCaFile } = https;
  const cert = files.certificates(certFile, 'https.certFile');
  const key = files.privateKey(keyFile, 'https.keyFile');
  const certificate = cert?.certificates[0];
  if (certificate !== undefined && key !== null && !certificate.checkPrivateKey(key.key)) {
    files.error(`https.keyFile: ${keyFile} is not the private key of https.certFile ${certFile}`);
  }
  const ca =
    clientCaFile === undefined ? undefined : files.certificates(clientCaFile, 'https.clientCaFile');
  if (cert === null || certificate === undefined || key === null || ca === null) return null;
  return { cert: cert.text, key: key.text, ca: ca?.text, certificate };
}

function checkMqttTls(mqtt: NonNullable<SluiceConfig['mqtt']>, files: FileChecks): MqttTlsFiles {
  const { caFile, certFile, keyFile } = mqtt;
  const ca = caFile === undefined ? null : files.certificates(caFile, 'mqtt.caFile');
  if (certFile !== undefined && keyFile === undefined) {
    files.error('mqtt.keyFile: required with mqtt.certFile (a client certificate needs its key)');
  }
  if (keyFile !== undefined && certFile === undefined) {
    files.error('mqtt.certFile: required with mqtt.keyFile (a client key needs its certificate)');
  }
  const cert = certFile === undefined ? null : files.certificates(certFile, 'mqtt.certFile');
  const key = keyFile === undefined ? null : files.privateKey(keyFile, 'mqtt.keyFile');
  const first = cert?.certificates[0];
  if (first !== undefined && key !== null && !first.checkPrivateKey(key.key)) {
    files.error(`mqtt.keyFile: ${keyFile} is not the private key of mqtt.certFile ${certFile}`);
  }
  return { ca: ca?.text, cert: cert?.text, key: key?.text };
}

/** Whether something exists at `path` and passes `test`. */
function existsAs(path: string, test: (stats: Stats) => boolean): boolean {
  try {
    return test(statSync(path));
  } catch {
    return false;
  }
}

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g;

/** Reads files the way the daemon will, and says what is wrong with each, by its path. */
class FileChecks {
  constructor(private readonly errors: string[]) {}

  error(problem: string): void {
    this.errors.push(problem);
  }

  /** The file's text, or null (and an error) when it is missing, unreadable or blank. */
  text(path: string, what: string): string | null {
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (error) {
      this.errors.push(`${what}: ${path}: ${readProblem(error)}`);
      return null;
    }
    if (text.trim().length === 0) {
      this.errors.push(`${what}: ${path} is empty`);
      return null;
    }
    return text;
  }

  /**
   * The file's text and every PEM certificate in it; null (and an error) when there is none or
   * one is bad.
   */
  certificates(
    path: string,
    what: string,
  ): { text: string; certificates: X509Certificate[] } | null {
    const text = this.text(path, what);
    if (text === null) return null;
    const blocks = text.match(PEM_CERTIFICATE) ?? [];
    if (blocks.length === 0) {
      this.errors.push(`${what}: ${path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)`);
      return null;
    }
    const certificates: X509Certificate[] = [];
    for (const [i, block] of blocks.entries()) {
      try {
        certificates.push(new X509Certificate(block));
      } catch (error) {
        this.errors.push(
          `${what}: ${path}: certificate ${i + 1} does not parse (${messageOf(error)})`,
        );
        return null;
      }
    }
    return { text, certificates };
  }

  /** The file's text and the key it holds; null (and an error) when it holds none. */
  privateKey(path: string, what: string): { text: string; key: KeyObject } | null {
    const text = this.text(path, what);
    if (text === null) return null;
    try {
      return { text, key: createPrivateKey(text) };
    } catch (error) {
      this.errors.push(
        `${what}: ${path} is not an unencrypted PEM private key (${messageOf(error)})`,
      );
      return null;
    }
  }
}

function readProblem(error: unknown): string {
  switch ((error as NodeJS.ErrnoException).code) {
    case 'ENOENT':
      return 'no such file';
    case 'EACCES':
      return 'not readable by this user (permission denied)';
    case 'EISDIR':
      return 'a folder, not a file';
    default:
      return messageOf(error);
  }
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
