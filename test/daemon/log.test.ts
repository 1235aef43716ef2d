import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterAll, describe, expect, it } from 'vitest';
import { daemonLogger } from '../../src/daemon/log.js';
import { nodeArgs } from '../helpers/entry.js';

/** A stdout stand-in that keeps what is written, a terminal or not. */
function terminal(isTTY: boolean): { stream: NodeJS.WriteStream; text: () => string } {
  let text = '';
  const stream = new Writable({
    write(chunk: Buffer, _encoding, done) {
      text += chunk.toString('utf8');
      done();
    },
  }) as unknown as NodeJS.WriteStream;
  Object.assign(stream, { isTTY });
  return { stream, text: () => text };
}

it('writes pino JSON with key and device when stdout is not a terminal, at the configured level', async () => {
  const out = terminal(false);
  const logger = await daemonLogger('info', out.stream);
  const command = logger.child({ device: 'inlet-valve', key: 'k-42' });
  command.debug({}, 'not at info');
  command.info({ state: 'confirmed' }, 'command settled');
  logger.flush();
  const lines = out
    .text()
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
  expect(lines).toHaveLength(1);
  expect(lines[0]).toMatchObject({
    level: 30,
    device: 'inlet-valve',
    key: 'k-42',
    state: 'confirmed',
    msg: 'command settled',
  });
});

it('is readable on a terminal: device and key before the message, no JSON', async () => {
  const out = terminal(true);
  const logger = await daemonLogger('info', out.stream);
  logger
    .child({ device: 'inlet-valve', key: 'k-42' })
    .info({ state: 'confirmed' }, 'command settled');
  logger.debug({}, 'not at info');
  // eslint-disable-next-line no-control-regex
  const text = out.text().replace(/\u001b\[[0-9;]*m/g, '');
  expect(text).toContain('[inlet-valve k-42] command settled');
  expect(text).toMatch(/state: "confirmed"/);
  expect(text).not.toContain('not at info');
  expect(text.trimStart().startsWith('{')).toBe(false);
});

it('on a terminal, a line without a key shows the device alone, and one without either the message alone', async () => {
  const out = terminal(true);
  const logger = await daemonLogger('info', out.stream);
  logger.child({ device: 'drain-valve' }).warn({}, 'device reads fail');
  logger.info({}, 'sluiced started');
  // eslint-disable-next-line no-control-regex
  const text = out.text().replace(/\u001b\[[0-9;]*m/g, '');
  expect(text).toContain('WARN: [drain-valve] device reads fail');
  expect(text).toContain('INFO: sluiced started');
});

it("writes a turn's lines in one write at the turn's end, in order; a later turn's in another", async () => {
  const writes: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _encoding, done) {
      writes.push(chunk.toString('utf8'));
      done();
    },
  }) as unknown as NodeJS.WriteStream;
  const logger = await daemonLogger('info', stream);
  for (let i = 0; i < 5; i++) logger.child({ device: 'inlet-valve', key: `k-${i}` }).info({}, 'x');
  expect(writes).toHaveLength(0);
  await new Promise((resolve) => setImmediate(resolve));
  expect(writes).toHaveLength(1);
  const keys = writes[0]!
    .trim()
    .split('\n')
    .map((l) => (JSON.parse(l) as { key: string }).key);
  expect(keys).toEqual(['k-0', 'k-1', 'k-2', 'k-3', 'k-4']);
  logger.info({}, 'alone');
  await new Promise((resolve) => setImmediate(resolve));
  expect(writes).toHaveLength(2);
  expect(JSON.parse(writes[1]!)).toMatchObject({ msg: 'alone' });
});

describe('a process that ends in the turn that logged: every line is written', () => {
  const LINES = 2000;
  const dir = mkdtempSync(join(tmpdir(), 'sluice-log-'));
  afterAll(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  /** Runs test/helpers/log-process.ts with stdout a file or a pipe; its exit code and stdout. */
  async function run(
    mode: string,
    stdout: 'file' | 'pipe',
  ): Promise<{ code: number | null; out: string }> {
    const file = join(dir, `${mode}-${stdout}.log`);
    const fd = stdout === 'file' ? openSync(file, 'w') : undefined;
    const child = spawn(
      process.execPath,
      [...nodeArgs('test/helpers/log-process.ts'), mode, String(LINES)],
      { stdio: ['ignore', fd ?? 'pipe', 'pipe'] },
    );
    if (fd !== undefined) closeSync(fd);
    let piped = '';
    child.stdout?.on('data', (chunk: Buffer) => {
      piped += chunk.toString('utf8');
    });
    const [code] = (await once(child, 'close')) as [number | null];
    return { code, out: fd === undefined ? piped : readFileSync(file, 'utf8') };
  }

  function settledKeys(out: string): string[] {
    return out
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { key?: string; msg: string })
      .filter((l) => l.msg === 'command settled')
      .map((l) => l.key!);
  }
  const expected = Array.from({ length: LINES }, (_, i) => `k-${i}`);

  for (const stdout of ['file', 'pipe'] as const) {
    it(`process.exit, stdout a ${stdout}`, async () => {
      const { code, out } = await run('exit', stdout);
      expect(code).toBe(0);
      expect(settledKeys(out)).toEqual(expected);
    });

    it(`an uncaught exception, stdout a ${stdout}: the lines, then the fatal one`, async () => {
      const { code, out } = await run('throw', stdout);
      expect(code).toBe(1);
      expect(settledKeys(out)).toEqual(expected);
      const last = JSON.parse(out.trim().split('\n').at(-1)!) as Record<string, unknown>;
      expect(last).toMatchObject({ level: 60, msg: 'crashed', origin: 'uncaughtException' });
    });

    it(`an unhandled rejection, stdout a ${stdout}`, async () => {
      const { code, out } = await run('reject', stdout);
      expect(code).toBe(1);
      expect(settledKeys(out)).toEqual(expected);
      const last = JSON.parse(out.trim().split('\n').at(-1)!) as Record<string, unknown>;
      expect(last).toMatchObject({ level: 60, origin: 'unhandledRejection' });
    });
  }
});
