import { isIP } from 'node:net';

/**
 * The IPv4 address an IPv4-mapped IPv6 address (::ffff:a.b.c.d, RFC 4291 2.5.5.2) names, or
 * null for any other address: a socket to either reaches the one IPv4 host. The WHATWG URL
 * serialiser writes an IPv6 address in one form (RFC 5952), a mapped one as ::ffff: and two
 * groups of hex digits (::ffff:127.0.0.1 is ::ffff:7f00:1), however it was written.
 */
export function mappedIpv4(address: string): string | null {
  if (isIP(address) !== 6) return null;
  let hostname: string;
  try {
    hostname = new URL(`http://[${address}]/`).hostname;
  } catch {
    // A zone (`fe80::1%eth0`) is no part of a URL.
    return null;
  }
  const mapped = /^\[::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})\]$/.exec(hostname);
  if (mapped === null) return null;
  const high = parseInt(mapped[1] ?? '0', 16);
  const low = parseInt(mapped[2] ?? '0', 16);
  return [high >> 8, high & 0xff, low >> 8, low & 0xff].join('.');
}
