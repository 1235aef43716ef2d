import { isIP } from 'node:net';
import { z } from 'zod';

/**
 * The network addresses of a site file — a listen host, a PLC's host, a broker's or an OPC UA
 * server's URL — checked for what the libraries that use them take as given. None of them
 * refuses a malformed address when it is handed over: the error comes at the first connection
 * (or the listen), after `sluiced --check` has called the file valid. A host written with its
 * port (`10.0.0.20:502`) made every read fail with "getaddrinfo ENOTFOUND" for as long as the
 * daemon ran, and the HTTPS listener's start fail with exit 1, which systemd restarts every 2 s;
 * a broker URL with a port past 65535 ended the start the same way (node:net throws
 * ERR_SOCKET_BAD_PORT), and one whose port was not a number (`mqtt://broker:88a3`) was taken by
 * MQTT.js, which reads URLs with url.parse, for the default port 1883.
 */

/** One label of a host name: letters, digits, "-" inside, "_" as some plant DNS has it. */
const LABEL = /^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$/;

/**
 * What is wrong with a host to connect to or listen on (null: nothing): an IP address (a
 * link-local IPv6 one with the name of its interface as its zone), or a host name of letters,
 * digits, "-" and "_" in dot-separated labels, the last not a number.
 */
export function hostProblem(host: string): string | null {
  if (isIP(host) === 6) return zoneProblem(host);
  if (isIP(host) !== 0) return null;
  const name = host.endsWith('.') ? host.slice(0, -1) : host;
  const why = /^\[.*\]$/.test(host)
    ? 'an IPv6 address is written without brackets here'
    : /^[A-Za-z][A-Za-z0-9+.-]*:\/\//.test(host)
      ? 'a URL: give the host alone'
      : /:\d*$/.test(host)
        ? 'the port is a field of its own, port'
        : null;
  if (why !== null) return `${JSON.stringify(host)} is not a host (${why})`;
  // No host name ends in a number: this one is an IPv4 address written otherwise, which
  // getaddrinfo reads as inet_aton does — a leading 0 makes an octet octal, so the
  // 192.168.001.020 a PLC's panel shows is 192.168.1.16, another controller; 10.1 is 10.0.0.1.
  if (/^(?:\d+|0x[0-9a-f]*)$/i.test(name.split('.').at(-1) ?? '')) {
    return `${JSON.stringify(host)} is not an IPv4 address as written (four numbers 0..255 without leading zeros): the system would read it as another address, or as none (a leading 0 makes a number octal: 192.168.001.020 is 192.168.1.16)`;
  }
  if (name.length > 0 && name.length <= 253 && name.split('.').every((l) => LABEL.test(l))) {
    return null;
  }
  return `${JSON.stringify(host)} is not a host (not an IP address, nor a host name of letters, digits, "-" and "_" between dots)`;
}

/**
 * What is wrong with the zone of an IPv6 host (null: nothing). The system reaches a link-local
 * address (fe80::/10) only through the interface its zone names (`fe80::1%eth0`): without one,
 * every connection to it, or the listen on it, failed at once (EINVAL) for as long as the
 * daemon ran. The system looks the zone up as an interface's name: an index (`%2`) fails alike.
 */
function zoneProblem(host: string): string | null {
  const at = host.indexOf('%');
  const address = at < 0 ? host : host.slice(0, at);
  if (!isLinkLocal(address)) return null;
  const example = `"${address}%eth0" for an address on eth0`;
  if (at < 0) {
    return `${JSON.stringify(host)} is a link-local address (fe80::/10) without a zone: the system reaches it only through the interface its zone names, and fails without one (EINVAL); write the interface's name after it, as ${example}`;
  }
  if (/^\d+$/.test(host.slice(at + 1))) {
    return `${JSON.stringify(host)} gives its zone as a number: the system takes the interface's name there, and fails with an index (EINVAL); write the name, as ${example}`;
  }
  return null;
}

/** Whether an IPv6 address (without a zone) is link-local, fe80::/10: its first group fe80..febf. */
function isLinkLocal(address: string): boolean {
  let first: string;
  try {
    // The address written out: its first group, lower case, without leading zeros.
    first = new URL(`http://[${address}]/`).hostname.slice(1).split(':')[0] ?? '';
  } catch {
    return false;
  }
  return first !== '' && (parseInt(first, 16) & 0xffc0) === 0xfe80;
}

/**
 * What is wrong with the address of a URL to connect to (null: nothing): a host, and a port
 * (when given) from 1 to 65535, as the WHATWG URL parser reads it. The URL's scheme is checked
 * by its field's own rule.
 */
export function urlAddressProblem(url: string): string | null {
  // The authority, as written: [user@]host[:port], up to the path, query or fragment; the
  // user info runs to the last "@" (as WHATWG URL and url.parse read it), and is never shown.
  const authority = /^[A-Za-z][A-Za-z0-9+.-]*:\/\/(?:[^/?#]*@)?([^/?#@]*)/.exec(url)?.[1];
  if (authority === undefined) return 'is not a URL (scheme://host:port)';
  const m = /^(\[[^\]]*\]|[^:]*)(?::(.*))?$/.exec(authority);
  const host = m?.[1] ?? '';
  const port = m?.[2];
  if (host === '') return `names no host (${JSON.stringify(authority)})`;
  if (port !== undefined && port !== '') {
    if (!/^\d+$/.test(port) || Number(port) < 1 || Number(port) > 65535) {
      return `port ${JSON.stringify(port)} is not a number from 1 to 65535`;
    }
  }
  if (host.startsWith('[')) {
    const problem = bracketedAddressProblem(host);
    if (problem !== null) return problem;
  } else {
    const problem = hostProblem(decodeHost(host));
    if (problem !== null) return problem;
  }
  try {
    new URL(url);
  } catch {
    return 'is not a valid URL';
  }
  return null;
}

/**
 * What is wrong with the IPv6 address of a URL, in its brackets (null: nothing). A link-local
 * address (fe80::/10) is reached only through the interface its zone names (`fe80::1%eth0`), and
 * the URL parser the libraries use takes no zone: without one the connection fails at once
 * (EINVAL), with one the URL is refused.
 */
function bracketedAddressProblem(host: string): string | null {
  const address = host.slice(1, -1);
  const zone = /%(?:25)?(.*)$/.exec(address);
  const why =
    'a URL cannot carry the zone (the interface) a link-local address is reached through: give the server a global or unique local (fd00::/8) address, or a host name that resolves to such an address';
  if (zone !== null && isIP(address.slice(0, zone.index)) === 6) {
    return `host ${host} names a zone (%${zone[1] ?? ''}): ${why}`;
  }
  if (isIP(address) !== 6) return `host ${host} is not an IPv6 address`;
  if (isLinkLocal(address)) return `host ${host} is a link-local address (fe80::/10): ${why}`;
  return null;
}

/** A host as written in a URL, percent-escapes undone (none is expected in a plant's). */
function decodeHost(host: string): string {
  try {
    return decodeURIComponent(host);
  } catch {
    return host;
  }
}

/** A host and port as an operator reads them: an IPv6 address in brackets (`[::1]:8443`). */
export function hostAndPort(host: string, port: number): string {
  return `${isIP(host) === 6 ? `[${host}]` : host}:${port}`;
}

/** A host field of the configuration: refused with what hostProblem finds wrong with it. */
export const hostSchema = z
  .string()
  .min(1)
  .superRefine((host, ctx) => {
    const problem = hostProblem(host);
    if (problem !== null) ctx.addIssue({ code: 'custom', message: problem });
  });

/**
 * What is wrong with an entry of https.trustedProxies (null: nothing): an IP address, or a
 * range of them as an address and a prefix length (`10.0.4.0/24`, `fd00::/64`). A host name
 * is not taken: the peer's address is what is compared, and a name would be resolved once, at
 * the start, to an address the site file does not show.
 */
export function proxyAddressProblem(entry: string): string | null {
  const [address = '', prefix, extra] = entry.split('/');
  const family = isIP(address);
  if (family === 0 || extra !== undefined) {
    return `${JSON.stringify(entry)} is not an IP address or a range (address/prefix length)`;
  }
  if (prefix === undefined) return null;
  const max = family === 4 ? 32 : 128;
  if (!/^\d{1,3}$/.test(prefix) || Number(prefix) < 1 || Number(prefix) > max) {
    // 0 is every address: the header would be believed from any client, which is no proxy.
    return `${JSON.stringify(entry)}: the prefix length must be 1–${max} (0 would believe any client's X-Forwarded-For)`;
  }
  return null;
}

/** https.trustedProxies: refused with what proxyAddressProblem finds wrong with an entry. */
export const proxyAddressSchema = z
  .string()
  .min(1)
  .superRefine((entry, ctx) => {
    const problem = proxyAddressProblem(entry);
    if (problem !== null) ctx.addIssue({ code: 'custom', message: problem });
  });
