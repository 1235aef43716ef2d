import { Writable } from 'node:stream';
import { expect, it } from 'vitest';
import { daemonLogger } from '../../src/daemon/log.js';

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
