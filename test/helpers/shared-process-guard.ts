import fs from 'node:fs';
import fsPromises from 'node:fs/promises';
import { isDeepStrictEqual } from 'node:util';
import { afterAll, beforeAll, vi } from 'vitest';

/**
 * The files of one vitest worker run in one process (isolate: false in vitest.config.ts), so a
 * file that left the process changed would change the files after it. This runs around every
 * file and fails the file that did: fake timers still installed, an environment variable set or
 * removed, a listener for a signal or a process-wide error added and not removed, or a function
 * left replaced by a double (DOUBLED).
 */
const WATCHED = ['SIGTERM', 'SIGINT', 'SIGHUP', 'uncaughtException', 'unhandledRejection'] as const;

/**
 * Variables node-opcua sets process-wide as it works, whichever file loaded it: node-opcua-pki
 * points OPENSSL_CONF (and RANDFILE) at its own files before it runs openssl, and
 * node-opcua-crypto sets OPENSSL_CONF around reading a private key and "restores" an unset one
 * as the string "undefined". Not a file's doing: they are put back as they were before the file,
 * as a fresh process per file had them, instead of failing it.
 */
const SET_BY_LIBRARIES = new Set(['OPENSSL_CONF', 'RANDFILE']);

/** Every function of `owner` (a module's object), by its name under `prefix`. */
const functionsOf = (prefix: string, owner: object): (readonly [string, object, string])[] =>
  Object.getOwnPropertyNames(owner)
    .filter((key) => typeof Reflect.get(owner, key) === 'function')
    .map((key) => [`${prefix}.${key}`, owner, key] as const);

/**
 * The functions a file may replace with a double, each of which must be the same function after
 * the file as before it: every function of node:fs and of node:fs/promises (fs.promises, the
 * same object), as the tests replace fs.fdatasync, fs.watch, fs.readdirSync and
 * fs.promises.readdir (failing-fdatasync.ts, slow-fdatasync.ts, opcua-trust.ts and others), and
 * the clocks and timers every file runs on (fake timers aside, which are checked as such).
 */
const DOUBLED: readonly (readonly [string, object, string])[] = [
  ...functionsOf('fs', fs),
  ...functionsOf('fs.promises', fsPromises),
  ['Date.now', Date, 'now'],
  ['performance.now', performance, 'now'],
  ...['setTimeout', 'setInterval', 'setImmediate', 'queueMicrotask'].map(
    (name) => [name, globalThis, name] as const,
  ),
];

const doubled = (): Map<string, unknown> =>
  new Map(DOUBLED.map(([name, owner, key]) => [name, Reflect.get(owner, key)]));

/**
 * graceful-fs (bundled in playwright-core) wraps fs.close and fs.closeSync process-wide the
 * first time it is loaded, once, and keeps the function it wrapped under this symbol. Not a
 * file's doing, and not to be undone (the later files that load it run on the wrapper, as in a
 * fresh process): such a wrapper of the function before the file is not a double left behind.
 */
const GRACEFUL_FS_PREVIOUS = Symbol.for('graceful-fs.previous');

const wrappedByLibrary = (before: unknown, after: unknown): boolean =>
  typeof after === 'function' && Reflect.get(after, GRACEFUL_FS_PREVIOUS) === before;

let env: Record<string, string | undefined> = {};
let functions = new Map<string, unknown>();
let listeners: Record<string, number> = {};

const listenerCounts = (): Record<string, number> =>
  Object.fromEntries(WATCHED.map((event) => [event, process.listenerCount(event)]));

beforeAll(() => {
  env = { ...process.env };
  listeners = listenerCounts();
  functions = doubled();
});

afterAll(() => {
  const left: string[] = [];
  if (vi.isFakeTimers()) left.push('fake timers installed');
  const replaced = [...doubled()].filter(
    ([name, f]) => functions.get(name) !== f && !wrappedByLibrary(functions.get(name), f),
  );
  if (replaced.length > 0) left.push(`replaced: ${replaced.map(([name]) => name).join(', ')}`);
  for (const name of SET_BY_LIBRARIES) {
    const before = env[name];
    if (before === undefined) Reflect.deleteProperty(process.env, name);
    else process.env[name] = before;
  }
  const now = { ...process.env };
  const changed = [...new Set([...Object.keys(env), ...Object.keys(now)])].filter(
    (name) => env[name] !== now[name],
  );
  if (changed.length > 0) left.push(`process.env changed: ${changed.join(', ')}`);
  const counts = listenerCounts();
  if (!isDeepStrictEqual(counts, listeners)) {
    left.push(`process listeners ${JSON.stringify(listeners)} -> ${JSON.stringify(counts)}`);
  }
  if (left.length > 0) {
    throw new Error(`this file left the shared test process changed: ${left.join('; ')}`);
  }
});
