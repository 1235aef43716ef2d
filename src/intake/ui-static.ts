import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { App, Reply } from './https-types.js';

/**
 * The status page's files: hand-written HTML, CSS and JavaScript in the repository's `ui/`
 * folder (nothing is generated, nothing fetched from anywhere), copied as they are to
 * `dist/ui/` by `npm run build` (scripts/build-ui.mjs), so that the built daemon carries them
 * wherever `dist/` goes. They are read once at start and served from memory under `/ui/`, with
 * a Content-Security-Policy that allows nothing but these files and this origin: no inline
 * script or style, no other origin, no framing.
 */

export const UI_FILES: Readonly<Record<string, string>> = {
  'index.html': 'text/html; charset=utf-8',
  'app.js': 'text/javascript; charset=utf-8',
  'app.css': 'text/css; charset=utf-8',
  'icon.svg': 'image/svg+xml',
};

export const CONTENT_SECURITY_POLICY = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self'",
  "connect-src 'self'",
  "form-action 'self'",
  "base-uri 'none'",
  "frame-ancestors 'none'",
].join('; ');

/** What every `/ui/` response carries, the event stream and errors included. */
export const UI_HEADERS: Readonly<Record<string, string>> = {
  'content-security-policy': CONTENT_SECURITY_POLICY,
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
  'cross-origin-opener-policy': 'same-origin',
  'cross-origin-resource-policy': 'same-origin',
};

/**
 * Two folders up from this module: `ui/` beside `src/` when it runs from the sources (tests),
 * `dist/ui/` when it runs built.
 */
export function uiDirectory(from: string = import.meta.url): string {
  return fileURLToPath(new URL('../../ui/', from));
}

export function setUiHeaders(reply: Reply): Reply {
  for (const [name, value] of Object.entries(UI_HEADERS)) reply.header(name, value);
  return reply;
}

export type UiFiles = ReadonlyMap<string, { readonly type: string; readonly body: Buffer }>;

/** Reads the page's files; throws when one is missing. */
export function loadUiFiles(dir: string = uiDirectory()): UiFiles {
  const files = new Map<string, { type: string; body: Buffer }>();
  for (const [name, type] of Object.entries(UI_FILES)) {
    files.set(name, { type, body: readFileSync(join(dir, name)) });
  }
  return files;
}

export function registerUiFiles(app: App, files: UiFiles): void {
  const serve = (name: string) => async (_request: unknown, reply: Reply) => {
    const file = files.get(name);
    if (file === undefined) throw new Error(`status page file ${name} not loaded`);
    return setUiHeaders(reply).code(200).header('content-type', file.type).send(file.body);
  };
  app.get('/ui', async (_request, reply) => setUiHeaders(reply).redirect('/ui/', 308));
  app.get('/ui/', serve('index.html'));
  for (const name of Object.keys(UI_FILES)) {
    if (name !== 'index.html') app.get(`/ui/${name}`, serve(name));
  }
}
