import { readFile } from 'node:fs/promises';
import { isIPv4 } from 'node:net';
import type { Socket } from 'node:net';
import { endianness } from 'node:os';

/**
 * What the kernel knows of a connection's peer that Node does not say: whether it still
 * acknowledges what is sent to it. A peer whose network vanished without a FIN or a reset (a
 * tablet carried out of the radio's reach, a switch port pulled, a VPN dropped) is not seen
 * by a write: the kernel takes the bytes, and retransmits them unanswered for as long as its
 * retransmission limit allows (tcp_retries2: about 15 minutes). A write callback or a
 * socket's writableLength says only that the kernel took the bytes, not that the peer did,
 * and TCP keep-alive sends no probe while data waits for its acknowledgement (so a stream
 * that writes a heartbeat never probes). TCP_USER_TIMEOUT would bound it in the kernel, but
 * Node has no setsockopt for it.
 *
 * Linux shows it in /proc/self/net/tcp and tcp6 (of the process's network namespace),
 * one line per connection (net/ipv4/tcp_ipv4.c get_tcp4_sock): the bytes sent and not yet
 * acknowledged (`tx_queue`, write_seq - snd_una), the retransmissions since the last
 * acknowledgement of new data (`retrnsmt`, icsk_retransmits, reset by such an acknowledgement)
 * and the zero-window probes unanswered (`timeout`, icsk_probes_out, reset by any
 * acknowledgement). A peer is silent when bytes wait for its acknowledgement and the kernel
 * has already retransmitted or probed without an answer. A peer that is there but does not
 * read (its receive window closed) answers the kernel's window probes: it is not silent, but
 * its window is closed (`tr` 4: the zero-window probe timer runs, bytes wait for room).
 */

export interface TcpPeer {
  /** Bytes sent and not acknowledged by the peer. */
  readonly unacknowledgedBytes: number;
  /** Bytes wait for the peer, and the kernel's retransmissions or probes went unanswered. */
  readonly silent: boolean;
  /** Bytes wait for room in the peer's receive window, which it keeps closed: it reads nothing. */
  readonly windowClosed: boolean;
}

/**
 * Read through the process's own folder: the daemon's unit mounts /proc with ProcSubset=pid
 * (systemd/sluiced.service), which leaves the processes' folders and `self` but not /proc/net.
 */
const TABLES = ['/proc/self/net/tcp', '/proc/self/net/tcp6'];

/** How many times readTcpPeers has read the tables (tcpTableReads). */
let tableReads = 0;

/**
 * How many times this process has read the kernel's TCP tables (readTcpPeers): each read is of
 * every connection of the namespace, thousands on a busy gateway, so how often the intake's
 * bounds read them is bounded (https-unread.ts), and a test counts it.
 */
export function tcpTableReads(): number {
  return tableReads;
}

/**
 * The TCP connections of this network namespace by connectionOf's key; null where the kernel
 * shows none (not Linux, or /proc not mounted): the caller then has nothing to go by.
 */
export async function readTcpPeers(): Promise<ReadonlyMap<string, TcpPeer> | null> {
  tableReads++;
  const peers = new Map<string, TcpPeer>();
  let read = false;
  for (const table of TABLES) {
    let text: string;
    try {
      text = await readFile(table, 'latin1');
    } catch {
      // No IPv6 in this kernel, or no /proc at all.
      continue;
    }
    read = true;
    for (const line of text.split('\n').slice(1)) {
      const fields = line.trim().split(/\s+/);
      const [, local, remote, , queues, timer, retransmits, , probes] = fields;
      if (probes === undefined || local === undefined || remote === undefined) continue;
      const [txQueue] = (queues ?? '').split(':');
      const unacknowledgedBytes = parseInt(txQueue ?? '', 16);
      const key = `${tableEndpoint(local)}>${tableEndpoint(remote)}`;
      const unanswered = parseInt(retransmits ?? '', 16) > 0 || Number(probes) > 0;
      peers.set(key, {
        unacknowledgedBytes,
        silent: unacknowledgedBytes > 0 && unanswered,
        windowClosed: unacknowledgedBytes > 0 && (timer ?? '').startsWith('04:'),
      });
    }
  }
  return read ? peers : null;
}

/** The key of a connected socket in readTcpPeers' table; null when it is not connected. */
export function connectionOf(socket: Socket): string | null {
  const { localAddress, localPort, remoteAddress, remotePort } = socket;
  if (
    localAddress === undefined ||
    localPort === undefined ||
    remoteAddress === undefined ||
    remotePort === undefined
  ) {
    return null;
  }
  return `${canonicalAddress(localAddress)}:${localPort}>${canonicalAddress(remoteAddress)}:${remotePort}`;
}

/** An address and port as the kernel's table writes them (`0100007F:1F90`), as connectionOf. */
function tableEndpoint(field: string): string {
  const [hex = '', port = ''] = field.split(':');
  const bytes = Buffer.from(hex, 'hex');
  // Each 32-bit word is printed as the host holds it (`%08X` of a __be32).
  if (endianness() === 'LE') {
    for (let i = 0; i + 4 <= bytes.length; i += 4) bytes.subarray(i, i + 4).reverse();
  }
  return `${bytesAddress(bytes)}:${parseInt(port, 16)}`;
}

/** IPv4 dotted; IPv4-mapped IPv6 as its IPv4; other IPv6 as eight groups of four hex digits. */
function bytesAddress(bytes: Buffer): string {
  if (bytes.length === 4) return [...bytes].join('.');
  const mapped = bytes.subarray(0, 10).every((b) => b === 0) && bytes.readUInt16BE(10) === 0xffff;
  if (mapped) return [...bytes.subarray(12)].join('.');
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(bytes.readUInt16BE(i).toString(16).padStart(4, '0'));
  return groups.join(':');
}

/** An address as Node writes it (`::1`, `::ffff:10.0.0.2`, `10.0.0.2`), as bytesAddress. */
function canonicalAddress(address: string): string {
  const bare = address.split('%')[0] ?? address;
  if (isIPv4(bare)) return bare;
  // IPv6, perhaps with an IPv4 tail (`::ffff:10.0.0.2`): the tail as two groups.
  const tail = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(bare);
  const text =
    tail === null
      ? bare
      : bare.slice(0, tail.index) +
        [(Number(tail[1]) << 8) | Number(tail[2]), (Number(tail[3]) << 8) | Number(tail[4])]
          .map((n) => n.toString(16))
          .join(':');
  const [head = '', rest] = text.split('::');
  const left = head === '' ? [] : head.split(':');
  const right = rest === undefined || rest === '' ? [] : rest.split(':');
  const zeros = rest === undefined ? [] : Array<string>(8 - left.length - right.length).fill('0');
  const bytes = Buffer.alloc(16);
  [...left, ...zeros, ...right].forEach((group, i) => {
    bytes.writeUInt16BE(parseInt(group, 16) & 0xffff, i * 2);
  });
  return bytesAddress(bytes);
}
