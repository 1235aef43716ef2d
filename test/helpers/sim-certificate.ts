import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { dirname, join } from 'node:path';
import { inject } from 'vitest';
import { startPlant, type PlantInput } from '../../simulators/plant.js';

/**
 * Where node-opcua keeps an OPC UA server's own certificate and private key, relative to the
 * simulator's folder for one PLC (`<pkiDir>/<plc>`, simulators/opcua-server.ts: its server
 * certificate manager's root is `pki` there).
 */
const OWN_FILES = ['pki/own/certs/certificate.pem', 'pki/own/private/private_key.pem'] as const;

/**
 * How long a lock on making a shared certificate may stand before another process takes it
 * over: making one takes 2.5-3 s, longer beside busy cores; a lock older than this was left by a
 * worker that died while making it.
 */
const STALE_LOCK_MS = 60_000;

/** Certificates this process made or found ready, by folder (plants may start concurrently). */
const ready = new Map<string, Promise<string>>();

type SimPkiOptions = { pkiDir: string; ownsPki: true } | Record<string, never>;

/**
 * The startPlant options that let the plant's simulated OPC UA servers serve one certificate
 * made once per test run, instead of an RSA key and certificate made at every start (2.5-3.0 s
 * where a start on a kept one takes 0.6-0.8 s). Each plant still gets a PKI folder of its own
 * (the servers keep the client certificates they accept there: no trust passes from one test
 * to another), seeded with a copy of the shared certificate and key; ownsPki makes the
 * simulator check the copy serves (its URI, host names, validity) and make a new one if not.
 *
 * The shared certificate is made by the first plant start that needs it, under a lock that
 * serialises the run's worker processes, in the run's folder (test/global-setup.ts), which is
 * removed at the end of the run; one per PLC name and host, as node-opcua puts both in it (the
 * subject names the PLC, the configured host joins the DNS names). A plant without an OPC UA PLC,
 * or a file run without the global setup, gets no options: the simulator's default.
 *
 * Not for tests about the server's certificate itself (its making, expiry, trust): they start
 * their plants on the certificates they make.
 */
export async function sharedSimCertificate(input: PlantInput): Promise<SimPkiOptions> {
  const runDir = inject('simPkiDir');
  const opcuaPlcs = Object.entries(input.plcs).filter(([, plc]) => plc.protocol === 'opcua');
  if (runDir === undefined || opcuaPlcs.length === 0) return {};
  mkdirSync(join(runDir, 'plants'), { recursive: true });
  const pkiDir = mkdtempSync(join(runDir, 'plants', 'plant-'));
  for (const [name, plc] of opcuaPlcs) {
    const source = await sharedCertificate(runDir, name, plc.host);
    for (const file of OWN_FILES) {
      const target = join(pkiDir, name, file);
      mkdirSync(dirname(target), { recursive: true });
      copyFileSync(join(source, file), target);
    }
  }
  return { pkiDir, ownsPki: true };
}

/** The folder holding the shared certificate for this PLC name and host, made if need be. */
function sharedCertificate(
  runDir: string,
  name: string,
  host: string | undefined,
): Promise<string> {
  const dir = join(
    runDir,
    'shared',
    encodeURIComponent(host ?? 'default-host'),
    encodeURIComponent(name),
  );
  let made = ready.get(dir);
  if (made === undefined) {
    made = makeOnce(dir, name, host);
    // A failed making is tried again by the next start, not handed to every later one.
    made.catch(() => ready.delete(dir));
    ready.set(dir, made);
  }
  return made;
}

/**
 * Makes the certificate in `dir` unless another process made it or is making it: the lock is a
 * directory (mkdir is atomic across processes), `ready` is written once both files are there.
 */
async function makeOnce(dir: string, name: string, host: string | undefined): Promise<string> {
  const readyFile = join(dir, 'ready');
  const lock = `${dir}.lock`;
  mkdirSync(dirname(dir), { recursive: true });
  for (;;) {
    if (existsSync(readyFile)) return join(dir, name);
    let locked = false;
    try {
      mkdirSync(lock);
      locked = true;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
    if (locked) {
      try {
        if (!existsSync(readyFile)) {
          // The simulator makes it as for any start: a plant with this one PLC, which starts
          // its server on a fresh folder (node-opcua makes the key and certificate) and stops.
          rmSync(dir, { recursive: true, force: true });
          const plant = await startPlant(
            {
              control: { host: '127.0.0.1', port: 0 },
              plcs: {
                [name]: {
                  protocol: 'opcua',
                  ...(host === undefined ? {} : { host }),
                  port: 0,
                  devices: { v: { profile: 'valve' } },
                },
              },
            },
            { ephemeralPorts: true, control: false, pkiDir: dir, ownsPki: true },
          );
          await plant.stop();
          for (const file of OWN_FILES) {
            if (!existsSync(join(dir, name, file))) throw new Error(`sim PKI: no ${file} made`);
          }
          writeFileSync(readyFile, '');
        }
      } finally {
        rmSync(lock, { recursive: true, force: true });
      }
      continue;
    }
    try {
      if (Date.now() - statSync(lock).mtimeMs > STALE_LOCK_MS) {
        rmSync(lock, { recursive: true, force: true });
        continue;
      }
    } catch {
      // The lock went between mkdir and stat: look again.
      continue;
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}
