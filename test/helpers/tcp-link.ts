import { createConnection, createServer, type Server, type Socket } from 'node:net';

/**
 * A TCP link on loopback that a test can cut and restore: the WAN between a cell's edge broker
 * and the site's central broker. While down, open connections are reset and new ones refused
 * at once, as when a link drops; the listening port stays this link's.
 */
export class TcpLink {
  private readonly sockets = new Set<Socket>();
  private isUp = true;
  private connections = 0;

  private constructor(
    private readonly server: Server,
    readonly port: number,
  ) {}

  /**
   * `holdUpstreamMs`: every chunk a client sends after its first (an MQTT client's CONNECT) is
   * carried to the target that much later, in order — a slow uplink, on which what a client
   * sends after its connection is accepted (its SUBSCRIBE) reaches the broker late.
   */
  static async open(
    target: { host: string; port: number },
    options: { holdUpstreamMs?: number } = {},
  ): Promise<TcpLink> {
    const holder: { link: TcpLink | null } = { link: null };
    const server = createServer((inbound) => {
      const link = holder.link;
      if (link === null || !link.isUp) {
        inbound.resetAndDestroy();
        return;
      }
      link.connections++;
      const outbound = createConnection(target);
      link.sockets.add(inbound);
      link.sockets.add(outbound);
      const close = (): void => {
        inbound.destroy();
        outbound.destroy();
        link.sockets.delete(inbound);
        link.sockets.delete(outbound);
      };
      inbound.on('error', close).on('close', close);
      outbound.on('error', close).on('close', close);
      if (options.holdUpstreamMs === undefined) inbound.pipe(outbound);
      else holdAfterFirst(inbound, outbound, options.holdUpstreamMs);
      outbound.pipe(inbound);
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => {
        resolve();
      });
    });
    const address = server.address();
    const port = typeof address === 'object' && address !== null ? address.port : 0;
    const link = new TcpLink(server, port);
    holder.link = link;
    return link;
  }

  /** Connections accepted and carried while the link was up. */
  get accepted(): number {
    return this.connections;
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** Cuts the link: every connection through it is reset, new ones are refused. */
  down(): void {
    this.isUp = false;
    for (const socket of this.sockets) socket.resetAndDestroy();
    this.sockets.clear();
  }

  up(): void {
    this.isUp = true;
  }

  /**
   * Cuts the link and stops listening: every connection through it is reset, and a connect to
   * its port is refused (ECONNREFUSED) — nothing is accepted, as with a host that is down.
   */
  async refuse(): Promise<void> {
    this.down();
    await new Promise<void>((resolve) => {
      this.server.close(() => {
        resolve();
      });
    });
  }

  /** Listens again on the same port, and carries connections (after refuse). */
  async accept(): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.port, '127.0.0.1', () => {
        this.server.off('error', reject);
        resolve();
      });
    });
    this.up();
  }

  async close(): Promise<void> {
    this.down();
    await new Promise<void>((resolve) => {
      this.server.close(() => {
        resolve();
      });
    });
  }
}

/** Carries `from`'s chunks to `to`, each after the first `holdMs` later, in order. */
function holdAfterFirst(from: Socket, to: Socket, holdMs: number): void {
  let first = true;
  from.on('data', (chunk: Buffer) => {
    if (first) {
      first = false;
      to.write(chunk);
      return;
    }
    // Timers of one delay fire in the order they were set: the chunks keep their order.
    setTimeout(() => {
      if (!to.destroyed) to.write(chunk);
    }, holdMs);
  });
}
