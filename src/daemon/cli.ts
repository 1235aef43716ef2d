#!/usr/bin/env node
// sluiced — the Sluice daemon. `sluiced --config FILE` runs it; `--check` runs every check the
// start runs (schema, cross-references, device profiles and inventory, the files it reads),
// creates nothing, and prints what the daemon would run. Exit codes: 0 clean stop (or a valid
// configuration), 1 runtime failure (a journal upgrade without the room it needs included), 2
// invalid configuration, 3 a journal damaged, not a journal or of a newer Sluice (the unit does
// not restart on 2 or 3) — at start as under --check, and before anything is created on disk.
//
// This entry only holds SIGHUP (early-hangup.ts) before it loads the daemon (run.ts): loading
// its modules and reading the configuration take a second or more, and a SIGHUP meanwhile (a
// reload, a terminal hanging up) would end the process by Node's default action.
import { holdHangups } from './early-hangup.js';

holdHangups();
await import('./run.js');
