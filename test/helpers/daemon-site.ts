import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { generate } from 'selfsigned';
import { parse, stringify } from 'yaml';
import { sha256 } from '../../src/intake/identities.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { startPlant, type Plant, type PlantInput } from '../../simulators/plant.js';
import { ROOT, tempDir } from './fixtures.js';
import { httpsRequest, loopbackCertificate, type HttpsAnswer } from './loopback-https.js';
import { inventoryFor } from './plant-inventory.js';

export type ModbusDevices = Extract<
  NonNullable<PlantInput['plcs']>[string],
  { protocol: 'modbus' }
>['devices'];

/** sluice-sim with one Modbus PLC `mb` on a free loopback port, carrying `devices`. */
export function startModbusPlant(devices: ModbusDevices): Promise<Plant> {
  return startPlant(
    {
      control: { host: '127.0.0.1', port: 0 },
      plcs: { mb: { protocol: 'modbus', host: '127.0.0.1', port: 0, devices } },
    },
    { ephemeralPorts: true, control: false },
  );
}

/**
 * A sluiced site in `dir` for `plant`: a self-signed certificate for localhost (cert.pem,
 * key.pem), and sluice.yaml with HTTPS on a free loopback port, state in `state/`, no identities
 * and no MQTT, the plant's PLCs and devices. Returns the configuration file's path.
 */
export async function writeDaemonSite(
  dir: string,
  plant: Plant,
  gatewayId: string,
): Promise<string> {
  const pems = await generate([{ name: 'commonName', value: 'localhost' }], {
    keyType: 'ec',
    curve: 'P-256',
  });
  writeFileSync(join(dir, 'cert.pem'), pems.cert);
  writeFileSync(join(dir, 'key.pem'), pems.private);
  const inventory = inventoryFor(plant);
  const configPath = join(dir, 'sluice.yaml');
  writeFileSync(
    configPath,
    stringify({
      gatewayId,
      stateDir: 'state',
      https: { host: '127.0.0.1', port: 0, certFile: 'cert.pem', keyFile: 'key.pem' },
      identities: {},
      plcs: inventory.plcs,
      devices: inventory.devices,
    }),
  );
  return configPath;
}

/**
 * A sluiced site in `dir` for `plant` with one identity, `scope`, whose bearer token is `token`,
 * allowed every device: loopbackCertificate's certificate, sluice.yaml with HTTPS on a free
 * loopback port, state in `state/`, no MQTT. Returns the file's path and the certificate to trust.
 */
export async function writeTokenSite(
  dir: string,
  plant: Plant,
  options: {
    readonly gatewayId: string;
    readonly token: string;
    readonly scope?: string;
    /** More of the `https` section (a test that polls asks for a higher rate limit). */
    readonly https?: Record<string, unknown>;
    /**
     * Timings laid over the shipped profiles' (in copies of those the plant's devices use, in
     * `profiles/`), keeping the relations docs/device-profiles.md requires; the shipped
     * profiles as they are when none.
     */
    readonly timing?: Record<string, number>;
  },
): Promise<{ configPath: string; cert: string }> {
  const cert = await loopbackCertificate(dir);
  const inventory = inventoryFor(plant);
  const configPath = join(dir, 'sluice.yaml');
  if (options.timing !== undefined) {
    mkdirSync(join(dir, 'profiles'));
    const used = new Set<string>(plant.devices().map((d) => d.profile));
    const shipped = join(ROOT, 'devices', 'profiles');
    for (const file of readdirSync(shipped).filter((f) => f.endsWith('.yaml'))) {
      const profile = parse(readFileSync(join(shipped, file), 'utf8')) as Record<string, unknown>;
      if (typeof profile.profile !== 'string' || !used.has(profile.profile)) continue;
      profile.timing = { ...(profile.timing as Record<string, number>), ...options.timing };
      writeFileSync(join(dir, 'profiles', file), stringify(profile));
    }
  }
  writeFileSync(
    configPath,
    stringify({
      gatewayId: options.gatewayId,
      stateDir: 'state',
      ...(options.timing === undefined ? {} : { profilesDir: 'profiles' }),
      https: {
        host: '127.0.0.1',
        port: 0,
        certFile: 'cert.pem',
        keyFile: 'key.pem',
        ...options.https,
      },
      identities: {
        [options.scope ?? 'scada']: {
          tokenSha256: sha256(options.token).toString('hex'),
          devices: ['*'],
        },
      },
      plcs: inventory.plcs,
      devices: inventory.devices,
    }),
  );
  return { configPath, cert };
}

/**
 * Journals in `path` a command accepted ten minutes before `now` for `device`, its deadline
 * `ttlMs` after that (30 s unless given: long past): for a device not in the configuration no
 * worker can take it up, and it is stuck (SPEC §2) from its deadline until an operator settles it.
 */
export function seedOrphan(
  path: string,
  now: number,
  c: { scope: string; key: string; device: string; intake: string },
  ttlMs = 30_000,
): void {
  const journal = SqliteJournal.open({ path });
  try {
    journal.claim({
      scope: c.scope,
      key: c.key,
      fingerprint: `f-${c.key}`,
      device: c.device,
      action: 'close',
      position: null,
      issuedAt: now - 600_000,
      issuedAtSource: 'issuer',
      ttlMs,
      deadline: now - 600_000 + ttlMs,
      intake: c.intake,
      acceptedAt: now - 600_000,
    });
  } finally {
    journal.close();
  }
}

/** POST /v1/commands of `body` under `key` to the HTTPS intake at `to`, with more `headers`. */
export function postCommand(
  to: { readonly port: number; readonly ca: string; readonly token: string },
  key: string,
  body: unknown,
  headers: Record<string, string> = {},
): Promise<HttpsAnswer> {
  return httpsRequest(to, 'POST', '/v1/commands', { 'idempotency-key': key, ...headers }, body);
}

/** A site file's sections by id, as a test edits them. */
export interface SiteFile {
  devices: Record<string, unknown>;
  identities: Record<string, unknown>;
  [section: string]: unknown;
}

/** The site file at `configPath` read, changed by `edit`, and written back (an operator's edit). */
export function editSite(configPath: string, edit: (site: SiteFile) => void): void {
  const site = parse(readFileSync(configPath, 'utf8')) as SiteFile;
  edit(site);
  writeFileSync(configPath, stringify(site));
}

/** The entry `from` of the site file's `section` renamed `to`, its body and place kept. */
export function renameSiteEntry(
  configPath: string,
  section: 'devices' | 'identities',
  from: string,
  to: string,
): void {
  editSite(configPath, (site) => {
    site[section] = Object.fromEntries(
      Object.entries(site[section]).map(([id, entry]) => [id === from ? to : id, entry]),
    );
  });
}

/** A token site (writeTokenSite) in a folder of its own, with the plant it runs against. */
export interface TokenSite {
  readonly plant: Plant;
  readonly dir: string;
  readonly cleanup: () => void;
  readonly configPath: string;
  readonly cert: string;
}

/**
 * A temporary folder (tempDir, named from `prefix`), sluice-sim with one Modbus PLC carrying
 * `devices` (startModbusPlant), and a token site for it there (writeTokenSite, with `options`);
 * the plant stopped and the folder removed again when any of it fails.
 */
export async function startTokenSite(
  prefix: string,
  devices: ModbusDevices,
  options: Parameters<typeof writeTokenSite>[2],
): Promise<TokenSite> {
  const { dir, cleanup } = tempDir(prefix);
  let plant: Plant | undefined;
  try {
    plant = await startModbusPlant(devices);
    const { configPath, cert } = await writeTokenSite(dir, plant, options);
    return { plant, dir, cleanup, configPath, cert };
  } catch (error) {
    // Nothing is left running or on disk when the site cannot be made.
    await plant?.stop();
    cleanup();
    throw error;
  }
}

/** A daemon test's end: its daemon stopped (if one runs), then its plant, then its files removed. */
export async function stopSite(
  daemon: { stop(): Promise<void> } | null,
  site: Pick<TokenSite, 'plant' | 'cleanup'>,
): Promise<void> {
  await daemon?.stop();
  await site.plant.stop();
  site.cleanup();
}
