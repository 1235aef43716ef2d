import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { CliError, messageOf } from './errors.js';

/**
 * The SLUICE_* variables of the unit's environment file, `sluiced.env` beside the site file
 * (/etc/sluice/sluiced.env: the unit's EnvironmentFile=, README "Installing as a service"). The
 * daemon's configuration is the site file with those overrides; sluicectl, run from a shell that
 * never had them, read the site file alone: with SLUICE_STATE_DIR set there, `stuck` read
 * another journal (or none), and with SLUICE_HTTPS_PORT or SLUICE_GATEWAY_ID `send` went to a
 * port or a topic the daemon does not serve. Empty when there is no such file (the demo, a
 * site run by hand). Only SLUICE_* names are taken: the rest is the daemon's process (its
 * NODE_OPTIONS), not its configuration.
 *
 * The file's syntax is systemd's (systemd.exec(5), EnvironmentFile=): `NAME=value` lines,
 * comments from `#` or `;`, a value in single or double quotes taken without them.
 */
export function unitEnvironment(configPath: string): Record<string, string> {
  let text: string;
  try {
    text = readFileSync(join(dirname(configPath), 'sluiced.env'), 'utf8');
  } catch {
    return {};
  }
  const variables: Record<string, string> = {};
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const equals = line.indexOf('=');
    if (equals < 1) continue;
    const name = line.slice(0, equals).trim();
    if (!/^SLUICE_[A-Z0-9_]*$/.test(name)) continue;
    variables[name] = unquoted(line.slice(equals + 1).trim());
  }
  return variables;
}

function unquoted(value: string): string {
  if (value.length >= 2 && value.startsWith("'") && value.endsWith("'")) return value.slice(1, -1);
  if (value.length >= 2 && value.startsWith('"') && value.endsWith('"')) {
    return value.slice(1, -1).replace(/\\(["\\])/g, '$1');
  }
  return value;
}

/** A folder systemd gives the daemon under systemd/sluiced.service, and its variable. */
export interface UnitFolder {
  readonly variable: string;
  readonly folder: string;
  /** The unit's setting that makes it. */
  readonly setting: string;
}

/**
 * The folders systemd/sluiced.service has systemd make for the daemon and name in its
 * environment (systemd.exec(5): StateDirectory=sluice is /var/lib/sluice for a system unit,
 * RuntimeDirectory=sluice /run/sluice). A site file may name its state folder and admin socket
 * by them (`stateDir: ${STATE_DIRECTORY}`); sluicectl, run from a shell that has neither, takes
 * them for these, as its daemon has them. Not ${CREDENTIALS_DIRECTORY}: the unit's credentials
 * are copies of /etc/sluice/credentials under other names (unitCredential).
 */
export const UNIT_FOLDERS: readonly UnitFolder[] = [
  { variable: 'STATE_DIRECTORY', folder: '/var/lib/sluice', setting: 'StateDirectory=sluice' },
  { variable: 'RUNTIME_DIRECTORY', folder: '/run/sluice', setting: 'RuntimeDirectory=sluice' },
];

/** The folder systemd/sluiced.service hands to the daemon (LoadCredential=sluice:…). */
export const CREDENTIALS_FOLDER = '/etc/sluice/credentials';

const UNIT_CREDENTIAL = /^\$\{CREDENTIALS_DIRECTORY\}\/sluice_([^/]+)$/;

/**
 * A file the site names as one of the unit's credentials
 * (`${CREDENTIALS_DIRECTORY}/sluice_scada.token`, as the shipped systemd/sluice.yaml does, or
 * `${CREDENTIALS_DIRECTORY}/sluice_broker-ca.pem` for mqtt.caFile): CREDENTIALS_DIRECTORY
 * exists only for the service, so outside it the file is read where the unit takes it from,
 * `/etc/sluice/credentials/scada.token` (root's: run with sudo). The README's
 * `sluicectl send inlet-valve open` failed on such a site with "cannot read the token
 * ${CREDENTIALS_DIRECTORY}/sluice_scada.token: ENOENT". Any other path is kept as written.
 */
export function unitCredential(file: string): string {
  const named = UNIT_CREDENTIAL.exec(file)?.[1];
  return named === undefined ? file : join(CREDENTIALS_FOLDER, named);
}

/**
 * The file `field` of the configuration names (a TLS file sluicectl reads: mqtt.caFile,
 * https.certFile), read where sluicectl can reach it (unitCredential); a CliError naming the
 * file and the field when it cannot be read, and for one of the unit's credentials where it was
 * looked for and why.
 */
export function readConfiguredFile(file: string, field: string): Buffer {
  const path = unitCredential(file);
  try {
    return readFileSync(path);
  } catch (error) {
    if (path !== file) {
      throw new CliError(
        `cannot read ${field} ${path}: ${messageOf(error)} (the site names it ${file}, one of the unit's credentials: CREDENTIALS_DIRECTORY is set for the service alone, so sluicectl reads it where systemd/sluiced.service takes it from, LoadCredential=sluice:${CREDENTIALS_FOLDER}; that folder is root's: run with sudo)`,
      );
    }
    if (file.startsWith('${CREDENTIALS_DIRECTORY}/')) {
      throw new CliError(
        `cannot read ${field} ${file}: CREDENTIALS_DIRECTORY is not set here (systemd sets it for the service alone), and only the shipped unit's credentials, \${CREDENTIALS_DIRECTORY}/sluice_<file name>, are known to come from ${CREDENTIALS_FOLDER}: set CREDENTIALS_DIRECTORY to the folder that holds the file`,
      );
    }
    throw new CliError(`cannot read ${field} ${file}: ${messageOf(error)}`);
  }
}
