import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';

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
 * are copies of /etc/sluice/credentials under other names (send-https.ts, unitCredential).
 */
export const UNIT_FOLDERS: readonly UnitFolder[] = [
  { variable: 'STATE_DIRECTORY', folder: '/var/lib/sluice', setting: 'StateDirectory=sluice' },
  { variable: 'RUNTIME_DIRECTORY', folder: '/run/sluice', setting: 'RuntimeDirectory=sluice' },
];
