import { describe, expect, it } from 'vitest';
import { checkInventory, inventorySchema } from '../../src/drivers/inventory.js';
import { PROFILES } from '../helpers/fixtures.js';

/** Site-file mistakes in the device inventory, each refused with its path and a reason. */

const plc = { protocol: 'modbus', host: '127.0.0.1', port: 5020 } as const;

function schemaErrors(input: unknown): string[] {
  const result = inventorySchema.safeParse(input);
  return result.success ? [] : result.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`);
}

describe('device inventory', () => {
  it('a misspelt PLC or device key is an error, not a silent default', () => {
    expect(
      schemaErrors({
        plcs: { p: { ...plc, clockRegistr: 120 } },
        devices: { v: { plc: 'p', profile: 'valve', base: 0, bsae: 100 } },
      }),
    ).toEqual(['plcs.p: Unrecognized key: "clockRegistr"', 'devices.v: Unrecognized key: "bsae"']);
  });

  it('clockRegister moved to the profile, and the error says where', () => {
    expect(schemaErrors({ plcs: { p: { ...plc, clockRegister: 120 } }, devices: {} })).toEqual([
      'plcs.p.clockRegister: no longer a PLC setting: the controller clock is the profile field modbus.status.clock (docs/device-profiles.md)',
    ]);
  });

  it('an OPC UA security mode without a policy, or a policy without a mode', () => {
    const ua = {
      protocol: 'opcua',
      endpointUrl: 'opc.tcp://127.0.0.1:4840',
      namespaceUri: 'urn:x',
    };
    const inventory = inventorySchema.parse({
      plcs: {
        a: { ...ua, securityMode: 'SignAndEncrypt' },
        b: { ...ua, securityPolicy: 'Basic256Sha256' },
        c: { ...ua, securityMode: 'Sign', securityPolicy: 'Basic256Sha256' },
        d: ua,
      },
      devices: {},
    });
    expect(checkInventory(inventory, PROFILES)).toEqual([
      'plcs.a.securityPolicy: securityMode SignAndEncrypt needs a policy (Basic256Sha256, Aes128_Sha256_RsaOaep or Aes256_Sha256_RsaPss); None goes with securityMode None only',
      'plcs.b.securityMode: securityPolicy Basic256Sha256 needs securityMode Sign or SignAndEncrypt; with None nothing is signed or encrypted',
    ]);
  });

  it("an OPC UA server certificate's settings that would check nothing, or a pin that is no SHA-256", () => {
    const ua = {
      protocol: 'opcua',
      endpointUrl: 'opc.tcp://10.0.0.21:4840',
      namespaceUri: 'urn:x',
    };
    const secure = { ...ua, securityMode: 'SignAndEncrypt', securityPolicy: 'Basic256Sha256' };
    const pin = 'AB:'.repeat(31) + 'AB';
    expect(
      schemaErrors({ plcs: { a: { ...secure, serverCertificateSha256: 'ab12' } }, devices: {} }),
    ).toEqual([
      'plcs.a.serverCertificateSha256: the SHA-256 of the server certificate: 64 hexadecimal digits, in pairs separated by ":" or not',
    ]);
    const inventory = inventorySchema.parse({
      plcs: {
        a: { ...ua, serverCertificateSha256: pin },
        b: { ...ua, acceptHostNameMismatch: false },
        c: { ...secure, serverCertificateSha256: pin, acceptHostNameMismatch: true },
        d: { ...secure, serverCertificateSha256: pin.replaceAll(':', '').toLowerCase() },
        e: { ...secure, acceptHostNameMismatch: true },
      },
      devices: {},
    });
    expect(checkInventory(inventory, PROFILES)).toEqual([
      'plcs.a.serverCertificateSha256: needs securityMode Sign or SignAndEncrypt; with None the server presents no certificate',
      'plcs.b.acceptHostNameMismatch: needs securityMode Sign or SignAndEncrypt; with None the server presents no certificate',
      'plcs.c.acceptHostNameMismatch: has no effect with serverCertificateSha256 (a pinned certificate is not checked for its host name); leave it out',
    ]);
  });

  it('an OPC UA endpoint on port 80, which node-opcua would connect on 4840', () => {
    const ua = { protocol: 'opcua', namespaceUri: 'urn:x' };
    const inventory = inventorySchema.parse({
      plcs: {
        a: { ...ua, endpointUrl: 'opc.tcp://10.0.0.21:80' },
        b: { ...ua, endpointUrl: 'opc.tcp://[fd00::21]:080/UA/Server' },
        c: { ...ua, endpointUrl: 'opc.tcp://10.0.0.21:8080' },
        d: { ...ua, endpointUrl: 'opc.tcp://10.0.0.21' },
      },
      devices: {},
    });
    const refusal =
      "port 80 cannot be used: node-opcua takes it for http's default port and connects to 4840 instead; serve OPC UA on another port (4840 is its registered one)";
    expect(checkInventory(inventory, PROFILES)).toEqual([
      `plcs.a.endpointUrl: ${refusal}`,
      `plcs.b.endpointUrl: ${refusal}`,
    ]);
  });

  it('a base that pushes a field past register 65535', () => {
    const inventory = inventorySchema.parse({
      plcs: { p: plc },
      devices: { v: { plc: 'p', profile: 'float-positioner', base: 65520 } },
    });
    expect(checkInventory(inventory, PROFILES)).toEqual([
      'devices.v.base: 65520 puts profile "float-positioner" field modbus.status.time at 65539, past register 65535',
      'devices.v.base: 65520 puts profile "float-positioner" field modbus.status.clock at 65543, past register 65535',
    ]);
  });

  it('two devices whose command registers overlap on one PLC', () => {
    const inventory = inventorySchema.parse({
      plcs: { p: plc },
      devices: {
        a: { plc: 'p', profile: 'valve', base: 0 },
        b: { plc: 'p', profile: 'float-positioner', base: 11 },
      },
    });
    expect(checkInventory(inventory, PROFILES)).toEqual([
      'devices.b.base: its command registers 11..14 overlap those of device a (10..12) on PLC p',
    ]);
  });
});
