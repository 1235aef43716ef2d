import { execFileSync } from 'node:child_process';
import fs, { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { AttributeIds, OPCUAClient } from 'node-opcua';
import { expect } from 'vitest';
import { systemClock, type Clock } from '../../src/core/clock.js';
import {
  DeviceRefusedError,
  DeviceUnreachableError,
  WriteNotSentError,
  type DeviceDriver,
} from '../../src/core/driver.js';
import { silentLogger, type Logger } from '../../src/core/logger.js';
import { buildDrivers } from '../../src/drivers/inventory.js';
import { startPlant, type Plant } from '../../simulators/plant.js';
import { PROFILES, tempDir } from '../helpers/fixtures.js';
import { TcpLink } from '../helpers/tcp-link.js';

/**
 * What the OPC UA trust tests share (opcua-security, opcua-trust-unwatched, opcua-trust-revoke,
 * opcua-trust-crl, opcua-trust-expiry and test/daemon/opcua-revoke): sluice-sim's OPC UA PLC
 * with SignAndEncrypt, the real driver to it, not trusting unknown certificates, and waits on
 * what the driver and the simulator say.
 */

export type Cleanups = (() => Promise<void> | void)[];

/**
 * sluice-sim with one OPC UA PLC `ua` (valve `ua-valve`) offering None and SignAndEncrypt, on
 * ephemeral ports; its own PKI in `pkiDir` (a fresh one when absent).
 */
export function startSecurePlant(pkiDir?: string): Promise<Plant> {
  return startPlant(
    {
      control: { host: '127.0.0.1', port: 0 },
      plcs: {
        ua: {
          protocol: 'opcua',
          host: '127.0.0.1',
          port: 0,
          securityModes: ['None', 'SignAndEncrypt'],
          devices: { 'ua-valve': { profile: 'valve' } },
        },
      },
    },
    { ephemeralPorts: true, control: false, ...(pkiDir === undefined ? {} : { pkiDir }) },
  );
}

/** The first read the driver answers within `ms`, its state; null if none. */
export async function readWithin(driver: DeviceDriver, ms: number): Promise<string | null> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    try {
      return (await driver.read()).state;
    } catch {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  return null;
}

/**
 * The driver to the OPC UA PLC at `endpointUrl` (device `ua-valve`), SignAndEncrypt, trusting
 * no unknown certificate, with a PKI folder of its own; `before` prepares that folder (an
 * operator's trusted certificates) before the driver starts; `clock`: the driver's (default the
 * system's). What it opens is pushed on
 * `cleanups`.
 */
export async function secureDriver(
  endpointUrl: string,
  namespaceUri: string,
  cleanups: Cleanups,
  options: {
    readonly before?: (pkiDir: string) => void;
    readonly clock?: Clock;
    /**
     * The PLC's request timeout (default 2000 ms); the redispatch guard is kept past it (the
     * inventory's rule): a long one lets a test hold a write's answer at the server.
     */
    readonly requestTimeoutMs?: number;
    /** The driver's logger (default: silent). */
    readonly logger?: Logger;
    /** The PLC's settings of its server certificate (default: none). */
    readonly plc?: {
      readonly serverCertificateSha256?: string;
      readonly acceptHostNameMismatch?: boolean;
    };
  } = {},
): Promise<{ driver: DeviceDriver; pkiDir: string }> {
  const requestTimeoutMs = options.requestTimeoutMs ?? 2000;
  const { dir: pkiDir, cleanup } = tempDir('sluice-pki-');
  cleanups.push(cleanup);
  options.before?.(pkiDir);
  const d = await buildDrivers({
    inventory: {
      plcs: {
        ua: {
          protocol: 'opcua',
          endpointUrl,
          namespaceUri,
          securityMode: 'SignAndEncrypt',
          securityPolicy: 'Basic256Sha256',
          requestTimeoutMs,
          ...options.plc,
        },
      },
      devices: { 'ua-valve': { plc: 'ua', profile: 'valve' } },
    },
    profiles:
      options.requestTimeoutMs === undefined
        ? PROFILES
        : new Map(
            [...PROFILES].map(([name, p]) => [
              name,
              { ...p, timing: { ...p.timing, redispatchGuardMs: requestTimeoutMs + 500 } },
            ]),
          ),
    pkiDir,
    acceptUnknownCertificates: false,
    clock: options.clock ?? systemClock,
    logger: options.logger ?? silentLogger,
  });
  cleanups.push(() => d.close());
  d.start();
  return { driver: d.bindings[0]!.driver, pkiDir };
}

/**
 * secureDriver through a link a test can cut, to `plant`'s PLC `ua`; what it opens is pushed
 * on `cleanups`.
 */
export async function linkedDriver(
  plant: Plant,
  cleanups: Cleanups,
): Promise<{ driver: DeviceDriver; link: TcpLink; pkiDir: string }> {
  const e = plant.plc('ua').endpoint;
  if (e.protocol !== 'opcua') throw new Error('expected an OPC UA PLC');
  const link = await TcpLink.open({ host: '127.0.0.1', port: Number(new URL(e.endpointUrl).port) });
  cleanups.push(() => link.close());
  const { driver, pkiDir } = await secureDriver(
    `opc.tcp://127.0.0.1:${link.port}`,
    e.namespaceUri,
    cleanups,
  );
  return { driver, link, pkiDir };
}

/**
 * Waits for the driver to say the PLC's certificate is not trusted, asking it to connect: a
 * refusal after the driver's `errorsBefore`-th error. Returns the refusal.
 */
export async function untrusted(driver: DeviceDriver, errorsBefore = 0): Promise<string> {
  const end = Date.now() + 20_000;
  const refused = (): boolean =>
    driver.health().errorCount > errorsBefore &&
    /is not trusted: it was put in/.test(driver.health().lastError ?? '');
  while (!refused()) {
    if (Date.now() > end) throw new Error(`no refusal: ${driver.health().lastError}`);
    await driver.read().catch(() => undefined);
    await new Promise((r) => setTimeout(r, 50));
  }
  return driver.health().lastError ?? '';
}

/**
 * Whether a write reached `plant`'s `ua-valve`: the driver's answer, checked against the
 * simulator's own count of writes received.
 */
export async function writeLands(plant: Plant, driver: DeviceDriver): Promise<boolean> {
  const device = plant.device('ua-valve');
  const before = device.counters.writesReceived;
  const sent = await driver
    .write({ action: 'stop', position: null, seq: 1000 + before })
    .then(() => true)
    .catch(() => false);
  expect(device.counters.writesReceived).toBe(sent ? before + 1 : before);
  return sent;
}

/**
 * An OPC UA server certificate and its private key made by openssl in the `own/` folder of the
 * node-opcua PKI at `pkiRoot` (for sluice-sim: `<simPki>/ua/pki`): self-signed, for
 * `applicationUri`, naming the IP addresses `ip` (subjectAltName) and no host name. node-opcua's
 * own certificate maker writes an IPv4-mapped IPv6 address wrong (::ffff:127.0.0.1 as
 * 0:0:0:0:0:0:FFFF:127); openssl writes its 16 octets.
 */
export function opensslServerCertificate(
  pkiRoot: string,
  names: { readonly applicationUri: string; readonly ip: readonly string[] },
): string {
  const own = join(pkiRoot, 'own');
  mkdirSync(join(own, 'certs'), { recursive: true });
  mkdirSync(join(own, 'private'), { recursive: true });
  const config = join(own, 'openssl.cnf');
  writeFileSync(
    config,
    [
      '[req]',
      'distinguished_name = dn',
      'x509_extensions = ext',
      'prompt = no',
      '[dn]',
      'CN = sluice-sim-ua',
      '[ext]',
      'basicConstraints = critical, CA:FALSE',
      'keyUsage = critical, digitalSignature, nonRepudiation, keyEncipherment, dataEncipherment',
      'extendedKeyUsage = serverAuth, clientAuth',
      'subjectKeyIdentifier = hash',
      'authorityKeyIdentifier = keyid',
      `subjectAltName = ${[`URI:${names.applicationUri}`, ...names.ip.map((ip) => `IP:${ip}`)].join(', ')}`,
      '',
    ].join('\n'),
  );
  const certificate = join(own, 'certs', 'certificate.pem');
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-sha256',
      '-days',
      '30',
      '-config',
      config,
      '-keyout',
      join(own, 'private', 'private_key.pem'),
      '-out',
      certificate,
    ],
    { env: { ...process.env, OPENSSL_CONF: config }, stdio: 'ignore' },
  );
  return certificate;
}

/** The PLC's own certificate, as sluice-sim keeps it in its PKI folder `simPki`. */
export function plcCertificate(simPki: string): string {
  return join(simPki, 'ua', 'pki', 'own', 'certs', 'certificate.pem');
}

/**
 * secureDriver to `plant`'s PLC `ua`, whose PKI trusts the PLC's certificate as
 * trusted/certs/plc-ua.pem (an operator's decision), with a session up (a read answered).
 */
export async function trustedDriver(
  plant: Plant,
  simPki: string,
  cleanups: Cleanups,
  options: { readonly clock?: Clock; readonly requestTimeoutMs?: number } = {},
): Promise<{ driver: DeviceDriver; pkiDir: string; trustedFile: string }> {
  const e = plant.plc('ua').endpoint;
  if (e.protocol !== 'opcua') throw new Error('expected an OPC UA PLC');
  let trustedFile = '';
  const { driver, pkiDir } = await secureDriver(e.endpointUrl, e.namespaceUri, cleanups, {
    ...options,
    before: (dir) => {
      const trusted = join(dir, 'client', 'trusted', 'certs');
      mkdirSync(trusted, { recursive: true });
      trustedFile = join(trusted, 'plc-ua.pem');
      copyFileSync(plcCertificate(simPki), trustedFile);
    },
  });
  expect(await readWithin(driver, 20_000)).not.toBeNull();
  return { driver, pkiDir, trustedFile };
}

/**
 * The server's own count of its sessions (open now, ever created), read by a client of the
 * test's own over security None: what the server saw, never the driver's word.
 */
export async function sessionCounter(plant: Plant): Promise<{
  sessions(): Promise<{ current: number; cumulated: number }>;
  close(): Promise<void>;
}> {
  const e = plant.plc('ua').endpoint;
  if (e.protocol !== 'opcua') throw new Error('expected an OPC UA PLC');
  const client = OPCUAClient.create({ endpointMustExist: false });
  await client.connect(e.endpointUrl);
  const session = await client.createSession();
  return {
    async sessions() {
      const [current, cumulated] = await session.read([
        { nodeId: 'ns=0;i=2277', attributeId: AttributeIds.Value }, // CurrentSessionCount
        { nodeId: 'ns=0;i=2278', attributeId: AttributeIds.Value }, // CumulatedSessionCount
      ]);
      return { current: Number(current?.value.value), cumulated: Number(cumulated?.value.value) };
    },
    async close() {
      await session.close().catch(() => undefined);
      await client.disconnect().catch(() => undefined);
    },
  };
}

/** Waits until `ok` holds (checked every 25 ms), at most `ms`; fails naming `what`. */
export async function until(
  what: string,
  ok: () => Promise<boolean> | boolean,
  ms = 20_000,
): Promise<void> {
  const end = Date.now() + ms;
  while (!(await ok())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/**
 * Makes `fs.watch` fail in this process as the kernel makes it fail where the machine's inotify
 * instances are used up (ENOSPC), so that node-opcua-pki's folder watchers cannot run: a fault
 * neither the simulator nor the store can be asked for. Returns what puts `fs.watch` back.
 */
export function failFileWatchers(): () => void {
  const realWatch = fs.watch;
  fs.watch = (): never => {
    throw Object.assign(new Error('ENOSPC: System limit for number of file watchers reached'), {
      code: 'ENOSPC',
      errno: -28,
      syscall: 'watch',
    });
  };
  return () => {
    fs.watch = realWatch;
  };
}

/**
 * A write by `driver` that has reached `plant`'s `ua-valve` (the simulator's own count) and
 * whose answer is held: every write is applied at once and its reply held 3 s (a fault cleared
 * by `cleanups`). Returns the count of writes received before it and the write's outcome
 * (null, or what it failed with).
 */
export async function writeInController(
  plant: Plant,
  driver: DeviceDriver,
  cleanups: Cleanups,
): Promise<{ written: number; outcome: Promise<unknown> }> {
  const device = plant.device('ua-valve');
  device.setFault({ kind: 'latency', ms: 3000, on: 'write' });
  cleanups.push(() => {
    device.clearFault('latency');
  });
  const written = device.counters.writesReceived;
  const outcome = driver.write({ action: 'stop', position: null, seq: 2000 + written }).then(
    () => null,
    (error: unknown) => error,
  );
  await until('the trigger to reach the controller', () => {
    return device.counters.writesReceived === written + 1;
  });
  return { written, outcome };
}

/**
 * The write of writeInController, its session cut under it: it reached the controller, so only
 * "unknown" is honest (the core's rules for a lost connection: readback, the redispatch guard),
 * never a refusal nor "not sent"; and it is not sent again (the simulator's count), nor is any
 * later write.
 */
export async function endedUnknownNotResent(
  plant: Plant,
  driver: DeviceDriver,
  { written, outcome }: { written: number; outcome: Promise<unknown> },
): Promise<void> {
  const device = plant.device('ua-valve');
  const error = await outcome;
  expect(error).toBeInstanceOf(DeviceUnreachableError);
  expect(error).not.toBeInstanceOf(WriteNotSentError);
  expect(error).not.toBeInstanceOf(DeviceRefusedError);
  device.clearFault('latency');
  expect(await writeLands(plant, driver)).toBe(false);
  expect(device.counters.writesReceived).toBe(written + 1);
}
