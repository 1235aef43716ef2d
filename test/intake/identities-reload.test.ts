import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { IdentityRegistry, sha256 } from '../../src/intake/identities.js';
import { tempDir } from '../helpers/fixtures.js';

/**
 * IdentityRegistry.reloadTokenFiles, the reload's part (SIGHUP) for token files: what a file
 * may not hold is refused as at start, keeping the token read before, and the others are
 * replaced all the same. The real process over TLS is reload-token-rotation.test.ts.
 */

let dir: string;
let cleanup: () => void;
beforeEach(() => {
  ({ dir, cleanup } = tempDir('sluice-identities-reload-'));
});
afterEach(() => {
  cleanup();
});

function registry(): { reg: IdentityRegistry; a: string; b: string } {
  const a = join(dir, 'a');
  const b = join(dir, 'b');
  writeFileSync(a, 'token-a\n');
  writeFileSync(b, 'token-b\n');
  const reg = new IdentityRegistry({
    a: { tokenFile: a, devices: ['*'] },
    b: { tokenFile: b, devices: ['*'] },
    c: { tokenSha256: sha256('token-c').toString('hex'), devices: ['*'] },
  });
  return { reg, a, b };
}

describe('IdentityRegistry.reloadTokenFiles', () => {
  it("refuses another identity's token, keeping the one before, and takes the other file", () => {
    const { reg, a, b } = registry();
    writeFileSync(a, 'token-c\n');
    writeFileSync(b, 'token-b2\n');
    const outcomes = reg.reloadTokenFiles(() => true);
    expect(outcomes).toEqual([
      {
        identity: 'a',
        file: a,
        outcome: 'kept',
        error: `identities.a.tokenFile: ${a} holds the same token as identities.c's; a token must name one identity`,
      },
      { identity: 'b', file: b, outcome: 'replaced' },
    ]);
    expect(reg.byToken('token-a')?.name).toBe('a');
    expect(reg.byToken('token-c')?.name).toBe('c');
    expect(reg.byToken('token-b2')?.name).toBe('b');
    expect(reg.byToken('token-b')).toBeUndefined();
  });

  it('two files swapped with each other are taken; one taking the token the other drops is too', () => {
    const { reg, a, b } = registry();
    writeFileSync(a, 'token-b\n');
    writeFileSync(b, 'token-a\n');
    expect(reg.reloadTokenFiles(() => true).map((o) => o.outcome)).toEqual([
      'replaced',
      'replaced',
    ]);
    expect(reg.byToken('token-b')?.name).toBe('a');
    expect(reg.byToken('token-a')?.name).toBe('b');
  });

  it('a file taking a token another file keeps is refused; a file not re-read is not read', () => {
    const { reg, a, b } = registry();
    writeFileSync(a, 'token-b\n');
    writeFileSync(b, 'token-new\n');
    expect(reg.reloadTokenFiles((file) => file === a)).toEqual([
      {
        identity: 'a',
        file: a,
        outcome: 'kept',
        error: `identities.a.tokenFile: ${a} holds the same token as identities.b's; a token must name one identity`,
      },
    ]);
    expect(reg.byToken('token-a')?.name).toBe('a');
    expect(reg.byToken('token-b')?.name).toBe('b');
    expect(reg.byToken('token-new')).toBeUndefined();
  });

  it('a token no header can carry is refused as at start, naming the file, never the token', () => {
    const { reg, a } = registry();
    writeFileSync(a, 'two words\n');
    const [outcome] = reg.reloadTokenFiles(() => true);
    expect(outcome).toMatchObject({ identity: 'a', outcome: 'kept' });
    expect(outcome?.outcome === 'kept' && outcome.error).toContain(`${a} holds a space`);
    expect(JSON.stringify(outcome)).not.toContain('two words');
    expect(reg.byToken('token-a')?.name).toBe('a');
  });
});
