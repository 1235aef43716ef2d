import { statSync, type Stats } from 'node:fs';

/**
 * What stat says of a file the operator named or the configuration gives. Not existsSync: it is
 * false as well for a file in a folder this user may not search (EACCES), and a journal under
 * the unit's StateDirectory (0700) or the site file under /etc/sluice (0750) then read as "no
 * journal", "no configuration: give --config", when the file is there and the fix is sudo.
 */
export type Lookup =
  | { readonly kind: 'found'; readonly stats: Stats }
  | { readonly kind: 'missing' }
  | { readonly kind: 'denied' }
  | { readonly kind: 'failed'; readonly code: string };

export function lookUp(path: string): Lookup {
  try {
    return { kind: 'found', stats: statSync(path) };
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? String(error);
    if (code === 'ENOENT' || code === 'ENOTDIR') return { kind: 'missing' };
    if (code === 'EACCES') return { kind: 'denied' };
    return { kind: 'failed', code };
  }
}
