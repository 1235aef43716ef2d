import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadUiFiles, UI_FILES, uiDirectory } from '../../src/intake/ui-static.js';
import { ROOT, tempDir } from '../helpers/fixtures.js';

/**
 * The status page's files ship with the build: `npm run build` copies ui/ to dist/ui/
 * (scripts/build-ui.mjs), and the daemon reads them two folders above its module — ui/ from
 * the sources, dist/ui/ when built. They are small, and refer to nothing outside the page.
 */

let dir: string;
let cleanup: () => void;
beforeEach(() => {
  ({ dir, cleanup } = tempDir('sluice-ui-files-'));
});
afterEach(() => {
  cleanup();
});

describe('the status page files', () => {
  it('are found beside src/ from the sources and in dist/ui/ when built', () => {
    expect(uiDirectory()).toBe(join(ROOT, 'ui') + '/');
    const built = pathToFileURL(join(ROOT, 'dist', 'src', 'intake', 'ui-static.js')).href;
    expect(uiDirectory(built)).toBe(join(ROOT, 'dist', 'ui') + '/');
    expect([...loadUiFiles().keys()].sort()).toEqual(Object.keys(UI_FILES).sort());
  });

  it('are copied as they are by the build step', () => {
    const out = join(dir, 'dist-ui');
    execFileSync(process.execPath, [join(ROOT, 'scripts', 'build-ui.mjs'), out]);
    expect(readdirSync(out).sort()).toEqual(readdirSync(join(ROOT, 'ui')).sort());
    for (const name of Object.keys(UI_FILES)) {
      expect(readFileSync(join(out, name)), name).toEqual(readFileSync(join(ROOT, 'ui', name)));
    }
    expect(() => loadUiFiles(out)).not.toThrow();
    expect(() => loadUiFiles(join(dir, 'nowhere'))).toThrow(/ENOENT/);
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as {
      scripts: Record<string, string>;
    };
    expect(pkg.scripts.build).toContain('node scripts/build-ui.mjs');
  });

  it('stay small and load nothing from elsewhere', () => {
    const files = loadUiFiles();
    const total = [...files.values()].reduce((sum, f) => sum + f.body.length, 0);
    expect(total).toBeLessThan(48 * 1024);
    for (const [name, file] of files) {
      const text = file.body.toString('utf8');
      // No CDN, no other origin: every reference is to this page's own files or API.
      expect(text, name).not.toMatch(/(?:src|href)="(?!\/ui\/|#)/);
      expect(text, name).not.toMatch(/@import|url\(\s*['"]?https?:/);
      expect(text, name).not.toMatch(/\b(?:eval|innerHTML|outerHTML|document\.write)\b/);
    }
  });
});
