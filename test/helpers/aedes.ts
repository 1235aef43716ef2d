import { createServer, type AddressInfo, type Server } from 'node:net';
import { Aedes, type AedesOptions } from 'aedes';

export interface AedesBroker {
  readonly url: string;
  readonly aedes: Aedes;
  close(): Promise<void>;
}

/**
 * The broker the demo embeds (aedes: MQTT 3.1.1 only), on an ephemeral loopback port; `options`
 * as aedes takes them (an authorizer that refuses, say).
 */
export async function startAedes(options: AedesOptions = {}): Promise<AedesBroker> {
  const aedes = await Aedes.createBroker(options);
  const server: Server = createServer(aedes.handle);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `mqtt://127.0.0.1:${port}`,
    aedes,
    close: async () => {
      await new Promise<void>((resolve) => {
        aedes.close(() => {
          resolve();
        });
      });
      await new Promise<void>((resolve) =>
        server.close(() => {
          resolve();
        }),
      );
    },
  };
}
