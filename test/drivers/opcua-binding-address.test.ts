import { readFileSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { hostMismatch } from '../../src/drivers/opcua-binding.js';
import { tempDir } from '../helpers/fixtures.js';
import { opensslServerCertificate } from './opcua-trust.js';

/**
 * The host name check of an OPC UA server certificate (opcua-binding.ts) takes an IPv4 address
 * and its IPv4-mapped IPv6 form (::ffff:a.b.c.d) as one address, both ways, and no other IPv6
 * address for an IPv4 one. On the check function with real certificates (made by openssl,
 * which writes an iPAddress as its 4 or 16 octets), not through sluice-sim. On the real server:
 * an endpoint URL 127.0.0.1 and a certificate naming ::ffff:127.0.0.1 in
 * opcua-server-binding.test.ts, the check by an endpoint URL's IPv6 address in
 * opcua-ipv6-endpoint.test.ts.
 */

const cleanups: (() => void)[] = [];

afterAll(() => {
  for (const c of cleanups.reverse()) c();
});

/** A certificate made by openssl naming the IP addresses `ip`, as DER. */
function certificateNaming(...ip: string[]): Buffer {
  const { dir, cleanup } = tempDir('sluice-binding-');
  cleanups.push(cleanup);
  const pem = readFileSync(
    opensslServerCertificate(dir, { applicationUri: 'urn:sluice-sim:ua', ip }),
    'utf8',
  );
  return Buffer.from(pem.replace(/-----[^-]+-----|\s/g, ''), 'base64');
}

const mismatch = (endpointUrl: string, certificate: Buffer): string | null =>
  hostMismatch(certificate, { plc: 'ua', endpointUrl });

describe('host name check: an IPv4 address and its IPv4-mapped IPv6 form', () => {
  it('an endpoint URL with the mapped address takes a certificate naming the IPv4 one, and no other', () => {
    const ipv4 = certificateNaming('127.0.0.1');
    expect(mismatch('opc.tcp://[::ffff:127.0.0.1]:4840', ipv4)).toBeNull();
    expect(mismatch('opc.tcp://[0:0:0:0:0:FFFF:7F00:1]:4840', ipv4)).toBeNull();
    expect(mismatch('opc.tcp://[::ffff:7f00:1]:4840', ipv4)).toBeNull();
    // Another host's address.
    expect(mismatch('opc.tcp://[::ffff:127.0.0.1]:4840', certificateNaming('127.0.0.2'))).toMatch(
      /^it does not name ::ffff:7f00:1, the host of the endpoint URL \(it names 127\.0\.0\.2\)/,
    );
    // IPv4-compatible (deprecated) and NAT64 (64:ff9b::/96) addresses reach other hosts than
    // the IPv4 address they end with.
    expect(mismatch('opc.tcp://[::127.0.0.1]:4840', ipv4)).not.toBeNull();
    expect(mismatch('opc.tcp://[64:ff9b::127.0.0.1]:4840', ipv4)).not.toBeNull();
  });

  it('an endpoint URL with the IPv4 address takes a certificate naming the mapped one, and no other', () => {
    expect(mismatch('opc.tcp://127.0.0.1:4840', certificateNaming('::ffff:127.0.0.1'))).toBeNull();
    expect(mismatch('opc.tcp://127.0.0.1:4840', certificateNaming('::ffff:127.0.0.2'))).toMatch(
      /^it does not name 127\.0\.0\.1, the host of the endpoint URL \(it names 0:0:0:0:0:FFFF:7F00:2\)/,
    );
    expect(mismatch('opc.tcp://127.0.0.1:4840', certificateNaming('::127.0.0.1'))).not.toBeNull();
  });
});
