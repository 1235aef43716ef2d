import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { generate } from 'selfsigned';
import { parse, stringify } from 'yaml';
import { sha256 } from '../src/intake/identities.js';
import type { PlantReady } from './plant-process.js';
import { ROOT } from './paths.js';

/**
 * The site the bench's daemon runs: a site file for the bench plant's Modbus PLC, a loopback
 * certificate, one identity (HTTPS token and MQTT) allowed every valve, a rate limit high
 * enough not to be what is measured, and the shipped valve profile with `timing.scanMs` set
 * to the plant's scan — what a site does for its controller, so that the first readbacks
 * after a write are paced by the scan the plant really has.
 */

export const IDENTITY = 'bench';
export const GATEWAY = 'bench';

export interface Credentials {
  readonly token: string;
  readonly ca: string;
  readonly certFile: string;
  readonly keyFile: string;
}

export interface Site {
  readonly dir: string;
  readonly configPath: string;
  readonly journalPath: string;
  readonly httpsPort: number;
}

export interface ProfileSetup {
  readonly dir: string;
  /** The scan the profile was given; null when the profile has no `timing.scanMs`. */
  readonly scanMs: number | null;
  /** `timing.ackedWriteTakenWithinMs` as given; null: none (the confirm timeout stands). */
  readonly ackedWriteTakenWithinMs: number | null;
}

/**
 * The PLC's `combineReads.maxGap`: any valves whose reads fit one request (125 registers) may
 * share it, as a site sets it for a PLC with one flat register area (the bench plant reads the
 * registers between its valves as 0). With the default (16) only neighbouring valves join (their
 * reads are 8 registers apart): while only every other valve has a command — the first seconds of
 * a recovery, and its end — no read would combine at all.
 */
export const BLOCK_READ_GAP = 125 - 8;

/**
 * The PLC's `connections`: four, each with one request in flight, as a site gives a PLC that
 * serves several Modbus clients. With one, the daemon's event loop idles while each request is
 * on its way (about a sixth of a recovery's CPU profile); with more it works meanwhile. Four
 * rather than two: in twelve alternating quick runs of 2026-12-02 the recovery settled after
 * 9.4–10.7 s in five of six runs with four (14.3 s in one on a slow moment of the machine),
 * against 10.1–13.7 s with two; throughput was the same within the machine's spread.
 */
export const CONNECTIONS = 4;

/** A self-signed certificate for 127.0.0.1 and a bearer token, written into `dir`. */
export async function credentials(dir: string): Promise<Credentials> {
  const pems = await generate([{ name: 'commonName', value: 'localhost' }], {
    keyType: 'ec',
    curve: 'P-256',
    extensions: [{ name: 'subjectAltName', altNames: [{ type: 7, ip: '127.0.0.1' }] }],
  });
  const certFile = join(dir, 'cert.pem');
  const keyFile = join(dir, 'key.pem');
  writeFileSync(certFile, pems.cert);
  writeFileSync(keyFile, pems.private, { mode: 0o600 });
  return { token: randomBytes(24).toString('hex'), ca: pems.cert, certFile, keyFile };
}

/**
 * The shipped valve profile, its controller scan set to the plant's and, when `ackedBoundMs`
 * is given, the plant's bound on how long its controller keeps an acknowledged write
 * (`timing.ackedWriteTakenWithinMs`: sluice-sim takes every received write at its next scan,
 * and holds none unless told to by a fault the bench never sets).
 */
export function valveProfile(
  dir: string,
  scanMs: number,
  ackedBoundMs: number | null = null,
): ProfileSetup {
  mkdirSync(dir, { recursive: true });
  const profile = parse(
    readFileSync(join(ROOT, 'devices', 'profiles', 'valve.yaml'), 'utf8'),
  ) as Record<string, unknown>;
  const timing = profile.timing as Record<string, unknown> | undefined;
  const hasScan = timing !== undefined && 'scanMs' in timing;
  if (hasScan) timing.scanMs = scanMs;
  if (timing !== undefined && ackedBoundMs !== null) timing.ackedWriteTakenWithinMs = ackedBoundMs;
  writeFileSync(join(dir, 'valve.yaml'), stringify(profile));
  return {
    dir,
    scanMs: hasScan ? scanMs : null,
    ackedWriteTakenWithinMs: timing === undefined ? null : ackedBoundMs,
  };
}

/** A loopback port nobody listens on now (for a listener whose port must be known early). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => {
        resolve(port);
      });
    });
  });
}

/** Writes a site file into `dir` for the plant's Modbus valves. */
export async function writeSite(args: {
  readonly dir: string;
  readonly plant: PlantReady;
  readonly credentials: Credentials;
  readonly profilesDir: string;
  readonly mqttUrl: string | null;
  readonly journalPath?: string;
}): Promise<Site> {
  const { dir, plant, credentials: cred } = args;
  mkdirSync(dir, { recursive: true });
  const plc = plant.plcs.find((p) => p.endpoint.protocol === 'modbus');
  if (plc === undefined || plc.endpoint.protocol !== 'modbus') {
    throw new Error('the bench plant has no Modbus PLC');
  }
  const httpsPort = await freePort();
  const journalPath = args.journalPath ?? join(dir, 'state', 'journal.db');
  const devices: Record<string, unknown> = {};
  for (const d of plc.devices) {
    devices[d.id] = { plc: plc.name, profile: 'valve', base: d.base ?? 0 };
  }
  const config = {
    gatewayId: GATEWAY,
    stateDir: join(dir, 'state'),
    profilesDir: args.profilesDir,
    journal: { path: journalPath },
    https: {
      host: '127.0.0.1',
      port: httpsPort,
      certFile: cred.certFile,
      keyFile: cred.keyFile,
      rateLimit: { perSecond: 10_000, burst: 100_000 },
    },
    ...(args.mqttUrl === null
      ? {}
      : {
          mqtt: { url: args.mqttUrl, identity: IDENTITY, clientId: `sluice-bench-${process.pid}` },
        }),
    identities: {
      [IDENTITY]: { tokenSha256: sha256(cred.token).toString('hex'), devices: ['*'] },
    },
    plcs: {
      [plc.name]: {
        protocol: 'modbus',
        host: plc.endpoint.host,
        port: plc.endpoint.port,
        unitId: plc.endpoint.unitId,
        combineReads: { maxGap: BLOCK_READ_GAP },
        connections: CONNECTIONS,
      },
    },
    devices,
  };
  const configPath = join(dir, 'sluice.yaml');
  writeFileSync(configPath, stringify(config));
  return { dir, configPath, journalPath, httpsPort };
}
