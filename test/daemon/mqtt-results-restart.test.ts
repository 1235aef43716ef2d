import { afterAll, describe, expect, it } from 'vitest';
import { mosquittoAvailable, TestClient, type Received } from '../helpers/mosquitto.js';
import { Site } from '../reliability/site.js';

/**
 * Results of `{prefix}/result/{device}` that survive a stop or a crash of the real sluiced
 * (SPEC §5: every terminal outcome; docs/mqtt-api.md). Results the broker has not acknowledged
 * (held through an outage, in flight to a broker that does not answer) were in memory only: a
 * crash or a stop lost them for the result topic's subscribers, the journal kept them. The
 * daemon now keeps, in the journal's meta row, from where results may not all have been
 * acknowledged, and the next start publishes those again from the journal.
 *
 * The commands are refused at the door (EXPIRED: issued a minute ago with a 1 s time to live):
 * terminal outcomes settled at once, each published on the result topic, no valve travel to wait.
 */

const real = mosquittoAvailable();
const sites: Site[] = [];
const clients: TestClient[] = [];

afterAll(async () => {
  for (const client of clients) await client.end();
  for (const site of sites) {
    const pid = site.broker.pid();
    if (pid !== null) process.kill(pid, 'SIGCONT');
    await site.kill();
    await site.close();
  }
});

async function startSite(gatewayId: string): Promise<Site> {
  const site = await Site.start({ gatewayId });
  sites.push(site);
  return site;
}

/** `count` commands refused EXPIRED, keys `prefix-0` …: all settled in the journal. */
async function expiredCommands(site: Site, prefix: string, count: number): Promise<string[]> {
  const keys: string[] = [];
  for (let i = 0; i < count; i++) {
    const key = `${prefix}-${i}`;
    const answer = await site.postCommand(key, {
      device: i % 2 === 0 ? 'mb-valve-1' : 'mb-valve-2',
      action: 'open',
      issuedAt: new Date(Date.now() - 60_000).toISOString(),
      ttlMs: 1_000,
    });
    expect(answer.status).toBeLessThan(500);
    keys.push(key);
  }
  await site.settled(10_000);
  return keys;
}

async function subscriber(site: Site, clientId: string): Promise<TestClient> {
  const client = await TestClient.connect(site.broker.url, { clientId, clean: true });
  clients.push(client);
  await client.subscribe(`sluice/${site.gatewayId}/result/+`);
  return client;
}

/** Each key's result reached the subscriber, equal to the journal's (not a replay). */
async function expectDelivered(site: Site, client: TestClient, keys: string[]): Promise<void> {
  const records = new Map(site.records().map((r) => [r.key, r]));
  for (const key of keys) {
    const record = records.get(key);
    expect(record?.state).toBe('rejected');
    const message: Received = await client.waitFor(
      (m) => m.json()['key'] === key,
      15_000,
      `result of ${key}`,
    );
    expect(message.topic).toBe(`sluice/${site.gatewayId}/result/${record!.device}`);
    expect(message.json()).toEqual(JSON.parse(record!.response!));
    expect(message.json()['replayed']).not.toBe(true);
  }
}

describe.runIf(real)('MQTT results across a stop or a crash of sluiced', () => {
  it('a crash while the broker is down: after it, every result held is published', async () => {
    const site = await startSite('results-crash');
    await site.startDaemon();
    // Connected and saving: a command's result goes out.
    const early = await subscriber(site, 'crash-early');
    const [first] = await expiredCommands(site, 'crash-before', 1);
    await early.waitFor((m) => m.json()['key'] === first, 10_000);

    await site.broker.stop();
    const keys = await expiredCommands(site, 'crash-held', 6);
    await site.kill();

    await site.broker.restart();
    const client = await subscriber(site, 'crash-late');
    await site.startDaemon();
    await expectDelivered(site, client, keys);
  }, 90_000);

  it('a stop while the broker does not acknowledge: after the restart, every result is published, and a restart with none pending publishes none again', async () => {
    const site = await startSite('results-frozen');
    await site.startDaemon();
    const client = await subscriber(site, 'frozen-plant');
    const [first] = await expiredCommands(site, 'frozen-before', 1);
    await client.waitFor((m) => m.json()['key'] === first, 10_000);

    // Frozen: the connection stays up, nothing is acknowledged. More results than the broker's
    // Receive Maximum (20): the rest wait in the gateway's memory.
    const pid = site.broker.pid()!;
    process.kill(pid, 'SIGSTOP');
    const keys = await expiredCommands(site, 'frozen-held', 30);
    expect(await site.stop()).toBe(0);
    process.kill(pid, 'SIGCONT');

    await site.startDaemon();
    await expectDelivered(site, client, keys);

    // Everything acknowledged, a clean stop and a start: a new command's result, published
    // after whatever is re-sent (in settlement order, before new ones), comes alone.
    await until(() => site.logs.some((l) => l.includes('published again the results')));
    expect(await site.stop()).toBe(0);
    const seen = client.messages.length;
    await site.startDaemon();
    const [marker] = await expiredCommands(site, 'frozen-after', 1);
    await client.waitFor((m) => m.json()['key'] === marker, 10_000);
    expect(client.messages.slice(seen).map((m) => m.json()['key'])).toEqual([marker]);
  }, 90_000);
});

async function until(probe: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!probe()) {
    if (Date.now() > end) throw new Error(`not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
