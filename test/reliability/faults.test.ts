import ModbusSerial from 'modbus-serial';
import { beforeAll, expect, it } from 'vitest';
import type { DeviceFaultInput } from '../../simulators/plant.js';
import { DAEMON_CLIENT, GW, faultCampaign } from './fault-campaign.js';
import type { Site } from './site.js';
import {
  assertInvariants,
  journalState,
  moving,
  nowIso,
  plantWrites,
  recordOf,
  settledResult,
  until,
  writesOf,
  writesReceived,
  type ResultDoc,
} from './support.js';

/**
 * Fault campaign (issue 10): the real `sluiced` process against sluice-sim (Modbus and OPC UA)
 * and a real Mosquitto, under the faults a plant network has — connection resets and lost
 * replies mid-command, a broker restart with QoS 1 redelivery, commands that waited in the
 * daemon's persistent session at the broker past their deadline, an OPC UA server power cycle,
 * stuck valves, the controller's own 0x88 from another master or a hand-moved valve, and
 * controller clocks far off. The journal's filesystem full or read-only is in
 * faults-journal.test.ts, on a site of its own (fault-campaign.ts), so that the two files go to
 * two workers at once. Every verdict is taken from ground truth: the simulators' write logs
 * (per sequence number) and the journal, through `Site.verify()`, and every negative ("nothing
 * was written") is read only after an event that proves the daemon has handled the message (a
 * later command's result).
 */

// modbus-serial is CommonJS (`module.exports = ModbusRTU`): the default import is the class.
const ModbusRTU = ModbusSerial as unknown as typeof ModbusSerial.default;

faultCampaign('fault campaign on the real daemon', { opcua: true }, (f) => {
  let site: Site;
  beforeAll(() => {
    site = f.site;
  });
  const { mqttResult, publish, confirmed, startTally, report } = f;

  it('connection resets and lost replies mid-command: each command confirmed with exactly one write', async () => {
    const faults: { name: string; fault: DeviceFaultInput }[] = [
      {
        name: 'reset before the write',
        fault: { kind: 'reset', when: 'before', on: 'write', count: 1 },
      },
      {
        name: 'reset after the write',
        fault: { kind: 'reset', when: 'after', on: 'write', count: 1 },
      },
      { name: 'reply to the write lost', fault: { kind: 'drop', on: 'write', count: 1 } },
      { name: 'replies to reads lost', fault: { kind: 'drop', on: 'read', count: 3 } },
      { name: 'reset on reads', fault: { kind: 'reset', when: 'before', on: 'read', count: 2 } },
    ];
    const tally = startTally();
    const outcomes: string[] = [];
    // One device per PLC at a time, the two PLCs side by side.
    await Promise.all(
      ['mb-valve-1', 'ua-valve'].map(async (device) => {
        // A first command without faults: a controller that still shows its power-up echo (0)
        // cannot prove a lost write unapplied (a restarted controller shows the same), so a
        // lost first write is never sent again and ends unconfirmed — honest, not the case here.
        await confirmed(`link-${device}-first`, {
          device,
          action: moving(site, device),
          issuedAt: nowIso(),
        });
        for (const [i, { name, fault }] of faults.entries()) {
          const key = `link-${device}-${i}-${fault.kind}`;
          site.plant.device(device).setFault(fault);
          const result = await confirmed(key, {
            device,
            action: moving(site, device),
            issuedAt: nowIso(),
          });
          site.plant.device(device).clearFaults();
          expect(result.seq, `${device}: ${name} wrote nothing`).not.toBeNull();
          expect(site.plant.device(device).state).toBe(
            result.action === 'open' ? 'OPEN' : 'CLOSED',
          );
          outcomes.push(`${device} ${name}: ${recordOf(site, key)?.attempts ?? '?'} attempt(s)`);
        }
      }),
    );
    assertInvariants(site);
    report(tally, 'PLC resets and lost replies (Modbus + OPC UA)', 'all confirmed, 1 write each');
    console.log(`link faults: ${outcomes.join('; ')}`);
  }, 60_000);

  it('Mosquitto restarts while commands are published: each runs exactly once, duplicates replayed', async () => {
    const tally = startTally();
    const issuedAt = nowIso();
    const commands: { device: string; payload: Record<string, unknown> }[] = [];
    for (const device of ['mb-valve-1', 'mb-valve-2']) {
      const first = moving(site, device);
      const second = first === 'open' ? 'close' : 'open';
      commands.push({ device, payload: { key: `broker-${device}-1`, action: first, issuedAt } });
      commands.push({ device, payload: { key: `broker-${device}-2`, action: second, issuedAt } });
    }
    commands.push({
      device: 'mb-actuator',
      payload: { key: 'broker-act-1', action: 'move', position: 30, issuedAt },
    });
    commands.push({
      device: 'mb-actuator',
      payload: { key: 'broker-act-2', action: 'move', position: 70, issuedAt },
    });
    // Half go out just before the broker stops (some reach the daemon, some wait in its
    // session at the broker); the rest are published while it is down (held by the client).
    const sent = commands
      .slice(0, 3)
      .map((c) => publish(c.device, { ...c.payload, ttlMs: 60_000 }));
    await site.broker.stop();
    sent.push(...commands.slice(3).map((c) => publish(c.device, { ...c.payload, ttlMs: 60_000 })));
    await site.broker.restart();
    await Promise.all(sent);
    const results = await Promise.all(commands.map((c) => mqttResult(String(c.payload.key))));
    // Clients retry after the outage: the same keys again, answered as replays.
    await Promise.all(commands.map((c) => publish(c.device, { ...c.payload, ttlMs: 60_000 })));
    for (const c of commands) await mqttResult(String(c.payload.key), true);
    for (const r of results) {
      expect(r, JSON.stringify(r)).toMatchObject({ state: 'confirmed' });
      const records = site.records().filter((x) => x.key === r.key);
      expect(records).toHaveLength(1);
      expect(writesOf(site, r.device, r.seq)).toBe(r.seq === null ? 0 : 1);
    }
    assertInvariants(site);
    const redelivered = commands.filter((c) =>
      site.broker.deliveriesTo(DAEMON_CLIENT, `sluice/${GW}/cmd/${c.device}`).some((d) => d.dup),
    ).length;
    report(
      tally,
      'Mosquitto restart, QoS 1 redelivery',
      `all confirmed once; DUP redeliveries seen on ${redelivered} topic(s)`,
    );
  }, 90_000);

  it('commands that waited in the persistent session past their deadline are never written (I3)', async () => {
    const tally = startTally();
    const before = plantWrites(site);
    await site.stop();
    const issuedAt = nowIso();
    const stale = [
      { device: 'mb-valve-1', key: 'stale-mb', ttlMs: 1_000 },
      { device: 'ua-valve', key: 'stale-ua', ttlMs: 1_000 },
      { device: 'mb-valve-2', key: 'stale-mb2', ttlMs: 1_000 },
    ];
    for (const s of stale) {
      await publish(s.device, {
        key: s.key,
        action: moving(site, s.device),
        issuedAt,
        ttlMs: s.ttlMs,
      });
    }
    // MQTT 5 message expiry instead of issuedAt: the broker drops it before the gateway is back.
    await publish(
      'mb-valve-1',
      { key: 'expired-mb', action: moving(site, 'mb-valve-1') },
      { properties: { messageExpiryInterval: 1 } },
    );
    await until(
      () => (Date.now() > Date.parse(issuedAt) + 1_500 ? true : undefined),
      5_000,
      'the deadlines to pass',
      50,
    );
    // Markers behind them on the same topics: once their results are out, the daemon has
    // handled every message queued before them.
    for (const device of ['mb-valve-1', 'ua-valve', 'mb-valve-2']) {
      await publish(device, {
        key: `fresh-${device}`,
        action: moving(site, device),
        issuedAt: nowIso(),
        ttlMs: 60_000,
      });
    }
    await site.startDaemon();
    for (const device of ['mb-valve-1', 'ua-valve', 'mb-valve-2']) {
      const marker = await mqttResult(`fresh-${device}`);
      expect(marker, JSON.stringify(marker)).toMatchObject({ state: 'confirmed' });
    }
    for (const s of stale) {
      const result = await mqttResult(s.key);
      expect(result).toMatchObject({ state: 'rejected', code: 'STALE_COMMAND', seq: null });
      expect(recordOf(site, s.key)).toMatchObject({
        state: 'rejected',
        seq: null,
        dispatchedAt: null,
      });
    }
    expect(recordOf(site, 'expired-mb')).toBeUndefined();
    // Ground truth: the only writes since the daemon stopped are the three markers'.
    expect(plantWrites(site) - before).toBe(3);
    for (const device of ['mb-valve-1', 'ua-valve', 'mb-valve-2']) {
      const marker = recordOf(site, `fresh-${device}`)!;
      expect(writesOf(site, device, marker.seq)).toBe(1);
    }
    assertInvariants(site);
    report(
      tally,
      'stale commands queued at the broker (I3)',
      '3 STALE_COMMAND unwritten, 1 expired at the broker, 3 markers once',
    );
  }, 90_000);

  it('OPC UA server power cycle: a taken write is never sent again, a write lost with the link is never claimed', async () => {
    const device = 'ua-valve';
    const sim = site.plant.device(device);
    const plc = site.plant.plc('ua');
    const tally = startTally();

    // 1. Power lost while the valve travels on this command's write: the echo register is
    // volatile (back to 0), the valve stops where it is. The command cannot be confirmed and
    // must not be written again.
    const travelKey = 'ua-power-during-travel';
    await site.postCommand(travelKey, { device, action: moving(site, device), issuedAt: nowIso() });
    const dispatched = await journalState(site, travelKey, ['dispatched', 'confirmed']);
    await until(
      () =>
        sim.writesOfSeq(dispatched.seq!).some((w) => w.outcome === 'accepted') ? true : undefined,
      5_000,
      'the controller to take the write',
      2,
    );
    plc.powerCycle({ offMs: 1_000 });
    const travel = await settledResult(site, travelKey, 30_000);
    expect(writesOf(site, device, travel.seq)).toBe(1);
    if (travel.state === 'confirmed') {
      // Only honest when the valve had reached its end before the power went.
      expect(sim.state).toBe(travel.action === 'open' ? 'OPEN' : 'CLOSED');
    }

    // 2. Power lost while the write is held on the link: it dies with the link (never applied)
    // and the echo comes back as 0. Nothing proves the write unapplied by the rule (the echo
    // moved), so it is not sent again; the outcome is honest.
    const heldKey = 'ua-power-write-held';
    sim.setFault({ kind: 'latency', ms: 400, when: 'before', on: 'write' });
    await site.postCommand(heldKey, { device, action: moving(site, device), issuedAt: nowIso() });
    await journalState(site, heldKey, ['dispatched', 'confirmed', 'rejected', 'failed']);
    await new Promise((r) => setTimeout(r, 100));
    // The RTC comes back 15 s slow: the next freshness judgement needs a new skew estimate.
    plc.powerCycle({ offMs: 500, clockOffsetMs: -15_000 });
    sim.clearFaults();
    const held = await settledResult(site, heldKey, 30_000);
    expect(writesOf(site, device, held.seq)).toBeLessThanOrEqual(1);
    if (held.state === 'confirmed') expect(writesOf(site, device, held.seq)).toBe(1);

    // 3. Power is back with the RTC 15 s slow: beyond the controller skew bound (SPEC §6) a
    // command is refused CLOCK_SKEW and not written (without a bound, or under `warn`, it runs
    // and is judged by its echo). Once the clock is set right, the next command runs at once.
    const slowKey = 'ua-after-power';
    await site.postCommand(slowKey, { device, action: moving(site, device), issuedAt: nowIso() });
    const slow = await settledResult(site, slowKey);
    if (slow.state === 'rejected') {
      expect(slow, JSON.stringify(slow)).toMatchObject({ code: 'CLOCK_SKEW', seq: null });
    } else {
      expect(slow, JSON.stringify(slow)).toMatchObject({ state: 'confirmed' });
      expect(writesOf(site, device, slow.seq)).toBe(1);
    }
    plc.clearFault('clock');
    const after = await confirmed('ua-clock-set-right', {
      device,
      action: moving(site, device),
      issuedAt: nowIso(),
    });
    expect(after.seq).not.toBeNull();
    assertInvariants(site);
    report(
      tally,
      'OPC UA power cycle (travel, held write, slow RTC)',
      `${travel.state}/${travel.code}, ${held.state}/${held.code}, slow RTC ${slow.state}/${slow.code}, then confirmed`,
    );
  }, 90_000);

  it('stuck valve: DEVICE_FAULT 0x81 with one write; retries replay; commands in FAULT are refused unwritten', async () => {
    const device = 'mb-valve-2';
    const sim = site.plant.device(device);
    const tally = startTally();
    sim.setFault({ kind: 'stuck-travel' });
    const command = { device, action: moving(site, device), issuedAt: nowIso() };
    await site.postCommand('stuck-1', command);
    const stuck = await settledResult(site, 'stuck-1');
    expect(stuck).toMatchObject({ state: 'failed', code: 'DEVICE_FAULT', faultCode: '0x81' });
    expect(writesOf(site, device, stuck.seq)).toBe(1);
    // Retries on both intakes: the stored outcome, no write.
    const writes = writesReceived(site, device);
    const retry = await site.postCommand('stuck-1', command);
    expect(retry.status).toBe(502);
    expect(retry.headers['idempotent-replayed']).toBe('true');
    await publish(device, { key: 'stuck-1', ...command });
    expect(await mqttResult('stuck-1', true)).toMatchObject({ code: 'DEVICE_FAULT' });
    // The mirror knows FAULT: an open is an illegal transition, refused without a write (I4).
    await site.postCommand('stuck-2', { device, action: 'open', issuedAt: nowIso() });
    expect(await settledResult(site, 'stuck-2')).toMatchObject({
      state: 'rejected',
      code: 'ILLEGAL_TRANSITION',
      faultCode: '0x88',
      seq: null,
    });
    expect(writesReceived(site, device)).toBe(writes);
    sim.clearFaults();
    const reset = await confirmed('stuck-reset', { device, action: 'reset', issuedAt: nowIso() });
    expect(reset.seq).not.toBeNull();
    expect(['STOPPED', 'CLOSED']).toContain(sim.state);

    // Sensor disagreement during travel: FAULT 0x82 ends the command in flight.
    const actuator = site.plant.device('mb-actuator');
    const target = actuator.position < 50 ? 95 : 5;
    await site.postCommand('sensor-1', {
      device: 'mb-actuator',
      action: 'move',
      position: target,
      issuedAt: nowIso(),
    });
    const moved = await journalState(site, 'sensor-1', ['dispatched', 'confirmed']);
    await until(
      () => (actuator.writesOfSeq(moved.seq!).some((w) => w.outcome !== null) ? true : undefined),
      5_000,
      'the actuator to take the move',
      2,
    );
    actuator.setFault({ kind: 'position-sensor' });
    const sensor = await settledResult(site, 'sensor-1');
    expect(writesOf(site, 'mb-actuator', sensor.seq)).toBe(1);
    if (sensor.state === 'confirmed') {
      // Only when the actuator had arrived before the fault (a stalled test process).
      console.warn('sensor-1: the actuator arrived before the sensor fault');
    } else {
      expect(sensor).toMatchObject({ state: 'failed', code: 'DEVICE_FAULT', faultCode: '0x82' });
    }
    actuator.clearFaults();
    await confirmed('sensor-reset', { device: 'mb-actuator', action: 'reset', issuedAt: nowIso() });
    assertInvariants(site);
    report(
      tally,
      'stuck valve 0x81, sensor 0x82',
      'DEVICE_FAULT 0x81/0x82 once, 0x88 unwritten, resets confirmed',
    );
  }, 60_000);

  it("the controller's own 0x88: another master moves the device between the bridge's read and its write", async () => {
    const tally = startTally();
    // Actuator: the bridge reads IDLE and sends a move; another master's move reaches the
    // controller just before it: move while MOVING is the controller's 0x88.
    const actuator = site.plant.device('mb-actuator');
    // At the end of its stroke, so that the other master's move (to the other end) travels.
    await confirmed('foreign-act-prep', {
      device: 'mb-actuator',
      action: 'move',
      position: 100,
      issuedAt: nowIso(),
    });
    await controllerRefuses(
      'foreign-act',
      'mb-actuator',
      { action: 'move', position: 60 },
      { code: 5, setpoint: 0, seq: 60_001 },
    );
    await until(() => (actuator.state === 'IDLE' ? true : undefined), 5_000, 'actuator idle');
    // The mirror resynchronised: the next move is judged on a fresh read and confirmed.
    await confirmed('foreign-act-after', {
      device: 'mb-actuator',
      action: 'move',
      position: 60,
      issuedAt: nowIso(),
    });

    // Valve: another Modbus master (a real client on its own connection) opens it and stops it
    // near the top. The bridge's mirror is stale; it sends an open (STOPPED → OPENING) that the
    // other master's close overtakes on the controller (CLOSING): 0x88.
    const valve = site.plant.device('mb-valve-2');
    if (valve.state !== 'CLOSED') {
      await confirmed('foreign-valve-prep', {
        device: 'mb-valve-2',
        action: 'close',
        issuedAt: nowIso(),
      });
    }
    await otherMaster('mb-valve-2', 1, 60_002);
    await until(() => (valve.position > 30 ? true : undefined), 5_000, 'valve a third open');
    await otherMaster('mb-valve-2', 3, 60_003);
    await until(() => (valve.state === 'STOPPED' ? true : undefined), 5_000, 'valve stopped');
    expect(valve.position).toBeGreaterThan(20);
    await controllerRefuses(
      'foreign-valve',
      'mb-valve-2',
      { action: 'open' },
      {
        code: 2,
        setpoint: 0,
        seq: 60_004,
      },
    );
    await until(() => (valve.state === 'CLOSED' ? true : undefined), 5_000, 'valve closed');
    await confirmed('foreign-valve-after', {
      device: 'mb-valve-2',
      action: 'open',
      issuedAt: nowIso(),
    });

    // A hand-moved valve: opened by hand in LOCAL, back in REMOTE. The bridge reads before it
    // acts: an open is a confirmed no-op, a close is written once.
    const hand = site.plant.device('mb-valve-1');
    hand.setLocal(true, 100);
    await until(() => (hand.state === 'LOCAL' ? true : undefined), 5_000, 'LOCAL');
    hand.setLocal(false);
    await until(() => (hand.state === 'OPEN' ? true : undefined), 5_000, 'OPEN by hand');
    const noop = await confirmed('hand-open', {
      device: 'mb-valve-1',
      action: 'open',
      issuedAt: nowIso(),
    });
    expect(noop.seq).toBeNull();
    // Switched to LOCAL while the bridge's close travels: the command cannot be confirmed and
    // is never written again.
    await site.postCommand('hand-during', {
      device: 'mb-valve-1',
      action: 'close',
      issuedAt: nowIso(),
    });
    const during = await journalState(site, 'hand-during', ['dispatched']);
    await until(
      () =>
        hand.writesOfSeq(during.seq!).some((w) => w.outcome === 'accepted') ? true : undefined,
      5_000,
      'the close taken',
      2,
    );
    hand.setLocal(true, 30);
    const interrupted = await settledResult(site, 'hand-during');
    // Written once whatever happened; confirmed only if the valve had closed before the switch
    // (a stalled test process lets the simulated valve finish its travel in one scan): then
    // the readback after the write showed CLOSED, which verify() checks against the log.
    expect(writesOf(site, 'mb-valve-1', interrupted.seq)).toBe(1);
    if (interrupted.state === 'confirmed') {
      console.warn('hand-during: the valve closed before it was switched to LOCAL');
    }
    hand.setLocal(false);
    await until(() => (hand.state === 'STOPPED' ? true : undefined), 5_000, 'STOPPED by hand');
    await confirmed('hand-after', { device: 'mb-valve-1', action: 'close', issuedAt: nowIso() });
    assertInvariants(site);
    report(
      tally,
      "controller's 0x88, another master, by hand",
      `0x88 raised by the controller twice; by hand: no-op, ${interrupted.code}, confirmed`,
    );
  }, 60_000);

  it('controller clocks far off and stepping: refused or confirmed honestly, never written twice, and usable again once set right', async () => {
    const tally = startTally();
    const observed: string[] = [];
    const skewOf = async (device: string): Promise<number | null> => {
      const answer = await site.https('GET', `/v1/devices/${device}`);
      const view = JSON.parse(answer.body) as { skew: { offsetMs: number } | null };
      return view.skew?.offsetMs ?? null;
    };
    let n = 0;
    const command = async (device: string): Promise<ResultDoc> => {
      const key = `clock-${device}-${n++}`;
      await site.postCommand(key, { device, action: moving(site, device), issuedAt: nowIso() });
      return settledResult(site, key);
    };
    // The two PLCs side by side: a clock fault is the PLC's own, and each has its own valve.
    const pairs = [
      ['mb', 'mb-valve-1'],
      ['ua', 'ua-valve'],
    ] as const;
    const clocksOf = async ([plc, device]: (typeof pairs)[number]): Promise<void> => {
      // Far beyond any bound (SPEC §6, maxControllerSkewMs): refused CLOCK_SKEW and never
      // written; without a bound (or under `warn`) the skew only places readbacks in time and
      // the command is confirmed by its echo. Then set right: the very next command runs.
      for (const offsetMs of [2 * 3_600_000, -2 * 3_600_000]) {
        site.plant.plc(plc).setFault({ kind: 'clock', offsetMs });
        const far = await command(device);
        observed.push(
          `${device} ${offsetMs / 3_600_000} h: ${far.state} ${far.code} (skew ${await skewOf(device)} ms)`,
        );
        if (far.state === 'rejected') {
          expect(far, JSON.stringify(far)).toMatchObject({ code: 'CLOCK_SKEW', seq: null });
        } else {
          expect(far, JSON.stringify(far)).toMatchObject({ state: 'confirmed' });
          expect(writesOf(site, device, far.seq)).toBe(1);
          expect(site.plant.device(device).state).toBe(far.action === 'open' ? 'OPEN' : 'CLOSED');
        }
        site.plant.plc(plc).clearFault('clock');
        const right = await command(device);
        expect(
          right,
          `${device} after its clock was set right: ${JSON.stringify(right)}`,
        ).toMatchObject({
          state: 'confirmed',
        });
        expect(writesOf(site, device, right.seq)).toBe(1);
      }
      // Within the bound (1.5 s): confirmed.
      site.plant.plc(plc).setFault({ kind: 'clock', offsetMs: 1_500 });
      const near = await command(device);
      expect(near, JSON.stringify(near)).toMatchObject({ state: 'confirmed' });
      expect(writesOf(site, device, near.seq)).toBe(1);
      site.plant.plc(plc).clearFault('clock');
      // A step of an hour forward while the command travels (after the controller took it):
      // judged by its echo, written once.
      const key = `clock-step-${device}`;
      await site.postCommand(key, { device, action: moving(site, device), issuedAt: nowIso() });
      const rec = await journalState(site, key, ['dispatched', 'confirmed', 'rejected', 'failed']);
      expect(rec.state, `${key}: ${rec.code ?? ''} ${rec.detail ?? ''}`).not.toBe('rejected');
      const sim = site.plant.device(device);
      await until(
        () => (sim.writesOfSeq(rec.seq!).some((w) => w.outcome === 'accepted') ? true : undefined),
        5_000,
        'the write taken',
        2,
      );
      site.plant.plc(plc).setFault({ kind: 'clock', offsetMs: 3_600_000 });
      const stepped = await settledResult(site, key);
      expect(writesOf(site, device, stepped.seq)).toBe(1);
      if (stepped.state === 'confirmed') {
        expect(sim.state).toBe(stepped.action === 'open' ? 'OPEN' : 'CLOSED');
      }
      observed.push(`${device} +1 h step mid-travel: ${stepped.state} ${stepped.code}`);
      site.plant.plc(plc).clearFault('clock');
      const after = await command(device);
      expect(after, `${device} after the step was undone: ${JSON.stringify(after)}`).toMatchObject({
        state: 'confirmed',
      });
    };
    await Promise.all(pairs.map(clocksOf));
    assertInvariants(site);
    console.log(`controller clocks: ${observed.join('; ')}`);
    report(
      tally,
      'controller clock ±2 h, 1.5 s, +1 h step mid-travel',
      observed.filter((o) => o.startsWith('mb-valve-1')).join(', '),
    );
  }, 90_000);

  /** A Modbus command written by another master over its own connection (a real client). */
  async function otherMaster(device: string, code: number, seq: number): Promise<void> {
    const endpoint = site.plant.plc('mb').endpoint;
    if (endpoint.protocol !== 'modbus') throw new Error('mb is not a Modbus PLC');
    const base = site.plant.device(device).base ?? 0;
    site.markForeignWrite(device, seq);
    const client = new ModbusRTU();
    await client.connectTCP(endpoint.host, { port: endpoint.port });
    try {
      client.setID(endpoint.unitId);
      client.setTimeout(2_000);
      await client.writeRegisters(base + 10, [code, 0, seq]);
    } finally {
      await new Promise((resolve) => {
        client.close(resolve);
      });
    }
  }

  /**
   * Another master's command reaches the controller between the bridge's read and its write:
   * the moment the bridge's write arrives at the controller, the other master's arrives just
   * before it (the controller takes both in that order in its next scan), which makes the
   * bridge's command illegal there: the controller raises 0x88. Deterministic, no timing.
   */
  async function controllerRefuses(
    key: string,
    device: string,
    command: Record<string, unknown>,
    foreign: { code: number; setpoint: number; seq: number },
  ): Promise<void> {
    const sim = site.plant.device(device);
    const receive = sim.receiveWrite.bind(sim);
    let overtaken = false;
    site.markForeignWrite(device, foreign.seq);
    // Every front end hands the writes it receives to the device's receiveWrite.
    sim.receiveWrite = (write) => {
      if (!overtaken && write.seq !== foreign.seq) {
        overtaken = true;
        receive(foreign);
      }
      receive(write);
    };
    try {
      await site.postCommand(key, { device, ...command, issuedAt: nowIso() });
      const result = await settledResult(site, key);
      expect(result, JSON.stringify(result)).toMatchObject({
        state: 'rejected',
        code: 'ILLEGAL_TRANSITION',
        faultCode: '0x88',
      });
      // Written once, and the controller's own log says it refused it after the other's.
      expect(overtaken).toBe(true);
      expect(sim.writesOfSeq(result.seq!).map((w) => w.outcome)).toEqual(['rejected-0x88']);
      expect(sim.writesOfSeq(foreign.seq).map((w) => w.outcome)).toEqual(['accepted']);
    } finally {
      sim.receiveWrite = receive;
    }
  }
});
