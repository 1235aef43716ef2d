import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../../simulators/cli-main.js';
import { api, until } from './helpers.js';
import { nodeArgs } from '../helpers/entry.js';

class Capture extends Writable {
  text = '';
  override _write(chunk: Buffer, _encoding: BufferEncoding, done: () => void): void {
    this.text += chunk.toString();
    done();
  }
}

function io(signal = new AbortController().signal) {
  return { stdout: new Capture(), stderr: new Capture(), signal };
}

describe('sluice-sim command', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'sluice-sim-cli-'));
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it('prints its usage', async () => {
    const streams = io();
    expect(await runCli(['--help'], streams)).toBe(0);
    expect(streams.stdout.text).toMatch(/Usage: sluice-sim \[--plant FILE\]/);
  });

  it('refuses unknown options and invalid plant files with exit code 2', async () => {
    let streams = io();
    expect(await runCli(['--bogus'], streams)).toBe(2);
    expect(streams.stderr.text).toMatch(/bogus/);
    const file = join(dir, 'bad.yaml');
    await writeFile(
      file,
      'plcs:\n  p: { protocol: modbus, port: 99999, devices: { v: { profile: valve, base: 0 } } }\n',
    );
    streams = io();
    expect(await runCli(['--plant', file, '--log-level', 'silent'], streams)).toBe(2);
    expect(streams.stderr.text).toMatch(/plcs\.p\.port/);
  });

  it('runs a plant file, prints one line per PLC and the control API, and stops on the signal', async () => {
    const file = join(dir, 'plant.yaml');
    await writeFile(
      file,
      [
        'control: { port: 0 }',
        'plcs:',
        '  m:',
        '    protocol: modbus',
        '    port: 0',
        '    devices:',
        '      v: { profile: valve, base: 0 }',
        '      l: { profile: valve, layout: limit-switch, base: 100 }',
        '      f: { profile: actuator, layout: float, base: 200 }',
        '  u: { protocol: opcua, port: 0, devices: { a: { profile: actuator } } }',
        '',
      ].join('\n'),
    );
    const stop = new AbortController();
    const streams = io(stop.signal);
    const exit = runCli(['--plant', file, '--log-level', 'silent'], streams);
    await until(() => streams.stdout.text.includes('control: '), { attempts: 300, everyMs: 50 });
    const lines = streams.stdout.text.trim().split('\n');
    expect(lines[1]).toMatch(
      /^m: modbus tcp:\/\/127\.0\.0\.1:\d+ unit 1 — v \(valve @0\), l \(valve limit-switch @100\), f \(actuator float @200\)$/,
    );
    expect(lines[2]).toMatch(
      /^u: opcua {2}opc\.tcp:\/\/127\.0\.0\.1:\d+ ns urn:sluice:sim:u — a \(actuator\)$/,
    );
    const controlUrl = /control: (\S+)/.exec(streams.stdout.text)?.[1] ?? '';
    expect((await api(controlUrl, 'GET', '/devices')).status).toBe(200);
    stop.abort();
    expect(await exit).toBe(0);
    expect(streams.stdout.text).toMatch(/stopped\n$/);
  }, 20_000);

  it('a plant without an OPC UA PLC never loads node-opcua, so prints none of its warnings', async () => {
    const file = join(dir, 'modbus-only.yaml');
    await writeFile(
      file,
      [
        'control: { port: 0 }',
        'plcs:',
        '  m: { protocol: modbus, port: 0, devices: { v: { profile: valve, base: 0 } } }',
        '',
      ].join('\n'),
    );
    const child = spawn(process.execPath, [...nodeArgs('simulators/cli.ts'), '--plant', file], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr.on('data', (c: Buffer) => (out += c.toString()));
    const exited = new Promise((resolve) => child.once('exit', resolve));
    await until(() => out.includes('control: '), { attempts: 400, everyMs: 50 });
    child.kill('SIGTERM');
    await exited;
    expect(out).toMatch(/stopped\n$/);
    expect(out).not.toMatch(/NODE-OPCUA|node-opcua|Creating default certificate/);
  }, 30_000);
});
