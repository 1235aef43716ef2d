import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { systemClock, type Clock } from '../../src/core/clock.js';
import { MqttIntake } from '../../src/intake/mqtt.js';
import { intakeConfig } from '../helpers/mosquitto.js';
import { mosquittoAvailable, until, useMqttSite } from '../helpers/mqtt-site.js';
import { TcpLink } from '../helpers/tcp-link.js';

/**
 * The MQTT session's reconnect backoff starts again from its minimum after a connection that
 * lasted (a stable one): how long it lasted is a duration, measured on the monotonic clock. On
 * the wall clock, a step back while connected (chrony or ptp4l stepping it, an operator) made a
 * long connection look negative, and the next reconnect waited as if the broker had never
 * been reached.
 */

const real = mosquittoAvailable();
if (!real) console.warn('mosquitto not installed: MQTT reconnect clock test skipped');

describe.runIf(real)('MQTT reconnect backoff and the wall clock', () => {
  // No test here addresses `u1`: no OPC UA PLC (seconds of CPU to start and stop).
  const site = useMqttSite({}, { opcua: false });

  it('a connection that lasted resets the backoff though the wall clock stepped back meanwhile', async () => {
    // The broker behind a link the test cuts; the intake's clocks shifted at will.
    const broker = new URL(site.broker.url);
    const link = await TcpLink.open({ host: broker.hostname, port: Number(broker.port) });
    site.cleanups.push(() => link.close());
    const shift = { wall: 0, mono: 0 };
    const clock: Clock = {
      now: () => systemClock.now() + shift.wall,
      elapsed: () => systemClock.elapsed() + shift.mono,
      sleep: (ms, signal) => systemClock.sleep(ms, signal),
    };
    const lines: { msg: string; reconnectInMs?: number }[] = [];
    const logger = pino(
      { level: 'debug' },
      {
        write(line: string) {
          lines.push(JSON.parse(line) as { msg: string; reconnectInMs?: number });
        },
      },
    );
    const delays = (msg: string): number[] =>
      lines.filter((l) => l.msg === msg).map((l) => l.reconnectInMs ?? Number.NaN);

    // Refused at first: each failed attempt grows the backoff.
    await link.refuse();
    const intake = new MqttIntake({
      config: intakeConfig(`mqtt://127.0.0.1:${link.port}`),
      gatewayId: 'gw-clock-step',
      pipeline: site.stack.pipeline,
      identities: site.stack.identities,
      metrics: site.stack.metrics,
      logger,
      clock,
      reconnect: { minMs: 100, maxMs: 20_000 },
    });
    site.cleanups.push(() => intake.stop());
    intake.start();
    await until(
      () => (delays('MQTT connection attempt failed').length >= 4 ? true : undefined),
      20_000,
      'four failed attempts',
    );
    await link.accept();
    await until(
      () => (lines.some((l) => l.msg === 'connected to the MQTT broker') ? true : undefined),
      20_000,
      'the connection',
    );
    // Connected for 11 s (past the 10 s that make a connection stable), during which the wall
    // clock was stepped back an hour.
    shift.mono += 11_000;
    shift.wall += 11_000 - 3_600_000;
    link.down();
    const [delay] = await until(
      () => {
        const after = delays('disconnected from the MQTT broker');
        return after.length > 0 ? after : undefined;
      },
      20_000,
      'the disconnection',
    );
    // From the minimum again (100 ms: between 50 and 100 with its jitter), not the fifth step
    // of a backoff that never reached the broker (800 ms and more).
    expect(delay).toBeLessThanOrEqual(100);
  }, 60_000);
});
