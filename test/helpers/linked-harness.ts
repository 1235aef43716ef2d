import type { TestContext } from 'vitest';
import type { CommandWrite } from '../../src/core/driver.js';
import { SimHarness, type SimHarnessOptions } from './sim-harness.js';
import { TcpLink } from './tcp-link.js';

/**
 * A SimHarness whose lives reach the Modbus PLC `mb` through a TCP link the test can refuse: the
 * simulator cannot time a link drop to the instant a write is handed to the driver, so the test
 * refuses the link then, and the real driver, finding no connection, refuses the write unsent.
 */
export interface LinkedHarness {
  readonly h: SimHarness;
  readonly link: TcpLink;
  /**
   * Hands each of v1's writes in this life to `intercept` in place of its driver, with the
   * driver's own write to call (a restart builds new drivers, without it).
   */
  interceptWrites(
    intercept: (
      command: CommandWrite,
      signal: AbortSignal | undefined,
      write: (command: CommandWrite, signal?: AbortSignal) => Promise<void>,
    ) => Promise<void>,
  ): void;
  /** Refuses the link and waits until v1's driver has seen its connection go. */
  refuseLink(): Promise<void>;
}

/** Starts a warm SimHarness and restarts it so that its lives from then on reach `mb` through a link. */
export async function linkedHarness(
  onTestFinished: TestContext['onTestFinished'],
  options: SimHarnessOptions = {},
): Promise<LinkedHarness> {
  const h = await SimHarness.start({ warm: true, ...options });
  onTestFinished(() => h.close());
  const e = h.plant.plc('mb').endpoint;
  if (e.protocol !== 'modbus') throw new Error('mb is not a Modbus PLC');
  const link = await TcpLink.open({ host: e.host, port: e.port });
  onTestFinished(() => link.close());
  // The lives from here on reach the PLC through the link.
  await h.crash();
  const inventory = h.inventory.bind(h);
  h.inventory = () => {
    const i = inventory();
    i.plcs.mb = { ...i.plcs.mb!, port: link.port } as (typeof i.plcs)[string];
    return i;
  };
  await h.restart();
  const v1 = () => h.drivers.bindings.find((b) => b.id === 'v1')!.driver;
  return {
    h,
    link,
    interceptWrites(intercept) {
      const driver = v1();
      const write = driver.write.bind(driver);
      driver.write = (command, signal) => intercept(command, signal, write);
    },
    async refuseLink() {
      await link.refuse();
      await h.until(() => !v1().health().connected, 5_000, 'the connection lost');
    },
  };
}

/** The lines of `key`'s history that say a write of it found no connection and was not sent. */
export function unsentLines(h: SimHarness, key: string): string[] {
  return h.notes(key).filter((n) => n.includes('was not sent: no connection to the controller'));
}

/** Waits for the history line that says `key`'s write found no connection. */
export async function refusedUnsent(
  h: SimHarness,
  key: string,
  what = `${key}'s write refused for want of a connection`,
): Promise<void> {
  await h.until(() => unsentLines(h, key).length > 0, 10_000, what);
}
