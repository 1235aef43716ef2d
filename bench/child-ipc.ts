import type { ChildMessage, ChildRequest } from './children.js';

/** The child side of children.ts: answers the bench's requests over the IPC channel. */

export type Handlers = Record<string, (args: unknown) => unknown>;

function send(message: ChildMessage): void {
  if (process.send === undefined) throw new Error('not started by the bench (no IPC channel)');
  process.send(message);
}

export function ready(data: unknown): void {
  send({ type: 'ready', data });
}

export function serve(handlers: Handlers): void {
  process.on('message', (message: ChildRequest) => {
    void (async () => {
      const handler = handlers[message.op];
      try {
        if (handler === undefined) throw new Error(`unknown request ${message.op}`);
        const result = await handler(message.args);
        send({ type: 'answer', id: message.id, ok: true, result: result ?? null });
      } catch (error) {
        send({
          type: 'answer',
          id: message.id,
          ok: false,
          error: error instanceof Error ? error.message : String(error),
        });
      }
    })();
  });
}

/** Runs `stop` once at SIGTERM or SIGINT (or when the bench goes away), then exits. */
export function onStop(stop: () => Promise<void>): void {
  let stopping = false;
  const handle = (): void => {
    if (stopping) return;
    stopping = true;
    stop().then(
      () => process.exit(0),
      (error: unknown) => {
        console.error(error);
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', handle);
  process.on('SIGINT', handle);
  process.on('disconnect', handle);
}
