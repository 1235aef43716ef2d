import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { startPlant, type PlantInput } from '../../simulators/plant.js';
import { sharedSimCertificate } from '../helpers/sim-certificate.js';
import { connectOpcua, opcuaEndpoint, releaseClientPki } from './opcua-client.js';

/**
 * The tests' plants serve one OPC UA server certificate made once per run
 * (test/helpers/sim-certificate.ts): a start on it takes 0.6-0.8 s where making one took
 * 2.5-3.0 s. Ground truth: the certificate each running server presents to a client
 * (GetEndpoints). Should the simulator stop finding the seeded files (node-opcua's PKI layout
 * changed, or the copy no longer served this host), each start would make its own again and
 * the two certificates below would differ.
 */

const PLANT: PlantInput = {
  control: { host: '127.0.0.1', port: 0 },
  plcs: {
    mb: {
      protocol: 'modbus',
      host: '127.0.0.1',
      port: 0,
      devices: { v: { profile: 'valve', base: 0 } },
    },
    ua: {
      protocol: 'opcua',
      host: '127.0.0.1',
      port: 0,
      devices: { 'ua-valve': { profile: 'valve' } },
    },
  },
};

afterAll(async () => {
  await releaseClientPki();
});

/** Starts a plant as the tests do; returns its PKI folder and the certificate it presents. */
async function startOnShared(): Promise<{ pkiDir: string; presented: X509Certificate }> {
  const pki = await sharedSimCertificate(PLANT);
  if (!('pkiDir' in pki)) throw new Error('no shared certificate: run under vitest.config.ts');
  const plant = await startPlant(PLANT, { ephemeralPorts: true, control: false, ...pki });
  try {
    const ua = await connectOpcua(opcuaEndpoint(plant.plc('ua').endpoint).endpointUrl);
    try {
      const der = (await ua.client.getEndpoints())[0]?.serverCertificate;
      if (der === undefined) throw new Error('the server presented no certificate');
      return { pkiDir: pki.pkiDir, presented: new X509Certificate(der) };
    } finally {
      await ua.close();
    }
  } finally {
    await plant.stop();
  }
}

it('two plants serve the one certificate of the run, each from a PKI folder of its own', async () => {
  const first = await startOnShared();
  const second = await startOnShared();
  expect(second.presented.fingerprint256).toBe(first.presented.fingerprint256);
  // Each folder holds what its server serves: the copy was not replaced by a new certificate.
  const certificateFile = (pkiDir: string): string =>
    join(pkiDir, 'ua', 'pki', 'own', 'certs', 'certificate.pem');
  for (const { pkiDir } of [first, second]) {
    const onDisk = new X509Certificate(readFileSync(certificateFile(pkiDir)));
    expect(onDisk.fingerprint256).toBe(first.presented.fingerprint256);
  }
  // Not one folder: the client certificates a server accepts stay with its own test.
  expect(second.pkiDir).not.toBe(first.pkiDir);
});

it('gives a plant without an OPC UA PLC nothing: it makes no certificate', async () => {
  const modbusOnly: PlantInput = { ...PLANT, plcs: { mb: PLANT.plcs.mb! } };
  expect(await sharedSimCertificate(modbusOnly)).toEqual({});
});
