import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  judgeObservation,
  type GatewayClockPolicy,
  type PtpObservation,
} from '../../src/core/gateway-clock.js';
import type { Exec, ExecResult } from '../../src/clock/exec.js';
import { parsePmcOutput, PMC_QUERIES, ptpReader } from '../../src/clock/pmc.js';
import { tempDir } from '../helpers/fixtures.js';

/** Outputs of linuxptp 3.1.1's pmc: see fixtures/README.md for which are recorded. */
const FIXTURES = join(import.meta.dirname, 'fixtures', 'pmc');
const fixture = (name: string): string => readFileSync(join(FIXTURES, name), 'utf8');

const POLICY: GatewayClockPolicy = { maxOffsetNs: 1_000_000, holdoverMs: 10_000 };

function observed(name: string): PtpObservation {
  const parsed = parsePmcOutput(fixture(name));
  if (!parsed.ok) throw new Error(`${name}: ${parsed.error}`);
  return parsed.observation;
}

function failure(name: string): { error: string; answered: boolean } {
  const parsed = parsePmcOutput(fixture(name));
  if (parsed.ok) throw new Error(`${name} parsed`);
  return { error: parsed.error, answered: parsed.answered };
}

describe('pmc output (recorded from ptp4l 3.1.1)', () => {
  it('a free-running slave following its grandmaster: UNCALIBRATED, gmPresent, live offset', () => {
    const o = observed('slave-uncalibrated.txt');
    expect(o).toMatchObject({
      source: 'ptp',
      clockIdentity: 'fe0fe1.fffe.75124f',
      ports: [{ identity: 'fe0fe1.fffe.75124f-1', state: 'UNCALIBRATED' }],
      gmPresent: true,
      gmIdentity: '7607ba.fffe.905df3',
      masterOffsetNs: -488,
      offsetFromMasterNs: -488,
      stepsRemoved: 1,
      notes: [],
    });
    // Not SLAVE: not locked, unless the policy says the ptp4l runs free.
    expect(judgeObservation(o, POLICY)).toMatchObject({
      locked: false,
      portState: 'UNCALIBRATED',
      offsetNs: -488,
      grandmaster: '7607ba.fffe.905df3',
    });
    expect(judgeObservation(o, POLICY).detail).toContain('port UNCALIBRATED');
    expect(judgeObservation(o, { ...POLICY, acceptUncalibrated: true }).locked).toBe(true);
  });

  it('slave-only, grandmaster gone: LISTENING with a stale gmPresent and offset: not locked, offset dropped', () => {
    const o = observed('slave-only-listening-gm-lost.txt');
    expect(o).toMatchObject({
      ports: [{ state: 'LISTENING' }],
      gmPresent: true,
      gmIdentity: '7607ba.fffe.905df3',
      masterOffsetNs: 159,
    });
    const judged = judgeObservation(o, { ...POLICY, acceptUncalibrated: true });
    expect(judged).toMatchObject({ locked: false, portState: 'LISTENING', offsetNs: null });
    expect(judged.detail).toContain('no port follows a master');
  });

  it('grandmaster gone, slave not slave-only: MASTER, gmPresent false', () => {
    const o = observed('slave-master-gm-lost.txt');
    expect(o).toMatchObject({
      ports: [{ state: 'MASTER' }],
      gmPresent: false,
      gmIdentity: 'fe0fe1.fffe.75124f',
    });
    const judged = judgeObservation(o, { ...POLICY, acceptUncalibrated: true });
    expect(judged).toMatchObject({ locked: false, grandmaster: null, offsetNs: null });
    expect(judged.detail).toContain('gmPresent false');
  });

  it('link down: FAULTY, gmPresent false', () => {
    const o = observed('slave-faulty-link-down.txt');
    expect(o).toMatchObject({ ports: [{ state: 'FAULTY' }], gmPresent: false });
    expect(judgeObservation(o, POLICY)).toMatchObject({ locked: false, portState: 'FAULTY' });
  });

  it('a grandmaster: MASTER, and LISTENING just after its start; never locked', () => {
    const master = observed('grandmaster-master.txt');
    expect(master).toMatchObject({
      ports: [{ state: 'MASTER' }],
      gmPresent: false,
      stepsRemoved: 0,
    });
    expect(judgeObservation(master, POLICY).locked).toBe(false);
    const listening = observed('grandmaster-listening-at-start.txt');
    expect(listening.ports).toEqual([{ identity: '7607ba.fffe.905df3-1', state: 'LISTENING' }]);
    expect(judgeObservation(listening, POLICY).locked).toBe(false);
  });

  it('two ports: the one following the master is reported', () => {
    const o = observed('boundary-two-ports.txt');
    expect(o.ports.map((p) => p.state)).toEqual(['UNCALIBRATED', 'MASTER']);
    const judged = judgeObservation(o, { ...POLICY, acceptUncalibrated: true });
    expect(judged).toMatchObject({ locked: true, portState: 'UNCALIBRATED', offsetNs: 233 });
  });

  it('two ports, one FAULTY, one MASTER: no port follows a master: all states reported', () => {
    const o = observed('boundary-jbod-port-faulty.txt');
    expect(o.ports.map((p) => p.state)).toEqual(['FAULTY', 'MASTER']);
    const judged = judgeObservation(o, { ...POLICY, acceptUncalibrated: true });
    expect(judged).toMatchObject({ locked: false, portState: 'FAULTY,MASTER', offsetNs: null });
  });

  it('answers of other clocks (-b 1) are ignored: the first clock to answer is the local one', () => {
    const o = observed('boundary-hops-1-two-clocks.txt');
    expect(o).toMatchObject({
      clockIdentity: 'fe0fe1.fffe.75124f',
      ports: [{ state: 'UNCALIBRATED' }],
      gmPresent: true,
      masterOffsetNs: 333,
      offsetFromMasterNs: 333,
    });
    expect(o.notes.join()).toContain('7607ba.fffe.905df3');
  });

  it('PORT_DATA_SET refused (MANAGEMENT_ERROR_STATUS, matched by its sequence number)', () => {
    const f = failure('port-data-set-error-status.txt');
    expect(f.answered).toBe(true);
    expect(f.error).toContain('refused GET PORT_DATA_SET');
  });

  it('no answer: a wrong domain, or no ptp4l behind the socket (pmc exits 0 all the same)', () => {
    expect(failure('no-answer-wrong-domain.txt')).toEqual({
      answered: false,
      error: 'no answer from ptp4l',
    });
    expect(failure('no-answer-no-socket.txt').answered).toBe(false);
    expect(parsePmcOutput('').ok).toBe(false);
  });
});

describe('pmc output (hand-made)', () => {
  it('SLAVE, grandmaster present, offset within the bound: locked', () => {
    const o = observed('hand-slave-locked.txt');
    expect(judgeObservation(o, POLICY)).toMatchObject({
      locked: true,
      portState: 'SLAVE',
      offsetNs: -488,
      grandmaster: '7607ba.fffe.905df3',
    });
  });

  it('a negative offset beyond the bound: not locked, offset reported', () => {
    const o = observed('hand-slave-negative-offset-beyond.txt');
    expect(o.masterOffsetNs).toBe(-2_500_000);
    expect(o.offsetFromMasterNs).toBe(-2_500_000);
    const judged = judgeObservation(o, POLICY);
    expect(judged).toMatchObject({ locked: false, offsetNs: -2_500_000 });
    expect(judged.detail).toContain('offset -2500000 ns beyond ±1000000 ns');
  });

  it('without TIME_STATUS_NP: no observation', () => {
    expect(failure('hand-missing-time-status.txt')).toEqual({
      answered: true,
      error: 'no TIME_STATUS_NP answer from ptp4l',
    });
  });

  it('cut off inside TIME_STATUS_NP: no observation', () => {
    expect(failure('hand-truncated.txt').error).toContain('without gmPresent');
  });

  it('error and "timed out" lines around the blocks are ignored', () => {
    expect(observed('hand-noise-lines.txt')).toEqual(observed('hand-slave-locked.txt'));
  });

  it('without CURRENT_DATA_SET: an observation, with a note', () => {
    const text = fixture('hand-slave-locked.txt');
    const o = parsePmcOutput(text.slice(0, text.indexOf('\tfe0fe1.fffe.75124f-0 seq 2')));
    expect(o.ok && o.observation.offsetFromMasterNs).toBe(null);
    expect(o.ok && o.observation.notes).toEqual(['no CURRENT_DATA_SET answer']);
  });
});

describe('ptpReader (injected exec)', () => {
  let server: Server;
  let socket: string;
  let dir: { dir: string; cleanup: () => void };

  beforeAll(async () => {
    dir = tempDir('sluice-pmc-');
    // A real socket file for the reader's pre-check; the exec is the fake.
    socket = join(dir.dir, 'ptp4l.sock');
    server = createServer();
    await new Promise<void>((resolve) => server.listen(socket, resolve));
  });
  afterAll(async () => {
    await new Promise((resolve) => server.close(resolve));
    dir.cleanup();
  });

  const result = (over: Partial<ExecResult>): ExecResult => ({
    stdout: '',
    stderr: '',
    code: 0,
    timedOut: false,
    error: null,
    ...over,
  });

  function scripted(...outputs: ExecResult[]): { exec: Exec; calls: string[][] } {
    const calls: string[][] = [];
    const exec: Exec = (file, args) => {
      calls.push([file, ...args]);
      return Promise.resolve(outputs[Math.min(calls.length, outputs.length) - 1] ?? result({}));
    };
    return { exec, calls };
  }

  it('runs one pmc per reading: -u -b 0, the socket, its own reply socket, the domain', async () => {
    const { exec, calls } = scripted(result({ stdout: fixture('hand-slave-locked.txt') }));
    const read = ptpReader({ udsPath: socket, domain: 3, clientSocketDir: dir.dir, exec });
    const probe = await read();
    expect(probe.kind).toBe('observed');
    expect(calls).toHaveLength(1);
    const [file, ...args] = calls[0]!;
    expect(file).toBe('pmc');
    expect(args.slice(0, 5)).toEqual(['-u', '-b', '0', '-s', socket]);
    expect(args[5]).toBe('-i');
    expect(args[6]?.startsWith(join(dir.dir, 'sluice-pmc-'))).toBe(true);
    expect(args.slice(7)).toEqual(['-d', '3', ...PMC_QUERIES]);
  });

  it('removes the reply socket a killed pmc leaves behind', async () => {
    let left = '';
    const exec: Exec = (_file, args) => {
      left = args[args.indexOf('-i') + 1] ?? '';
      writeFileSync(left, '');
      return Promise.resolve(result({ timedOut: true, code: null }));
    };
    const probe = await ptpReader({ udsPath: socket, clientSocketDir: dir.dir, exec })();
    expect(probe).toEqual({
      kind: 'unreachable',
      source: 'ptp',
      error: 'pmc timed out after 2000 ms',
    });
    expect(left).not.toBe('');
    expect(existsSync(left)).toBe(false);
  });

  it('asks once more when the answer is missing or partial (pmc waits only 100 ms)', async () => {
    const { exec, calls } = scripted(
      result({ stdout: fixture('hand-truncated.txt') }),
      result({ stdout: fixture('hand-slave-locked.txt') }),
    );
    const probe = await ptpReader({ udsPath: socket, clientSocketDir: dir.dir, exec })();
    expect(probe.kind).toBe('observed');
    expect(calls).toHaveLength(2);
  });

  it('no answer twice: unreachable, saying where to look', async () => {
    const { exec, calls } = scripted(result({ stdout: fixture('no-answer-wrong-domain.txt') }));
    const probe = await ptpReader({ udsPath: socket, clientSocketDir: dir.dir, exec })();
    expect(calls).toHaveLength(2);
    expect(probe.kind === 'unreachable' && probe.error).toContain(
      `ptp4l did not answer at ${socket} (domain 0?`,
    );
  });

  it('a partial answer twice: unreachable, with what was missing', async () => {
    const { exec } = scripted(result({ stdout: fixture('hand-missing-time-status.txt') }));
    const probe = await ptpReader({ udsPath: socket, clientSocketDir: dir.dir, exec })();
    expect(probe.kind === 'unreachable' && probe.error).toContain('partial answer from ptp4l at');
    expect(probe.kind === 'unreachable' && probe.error).toContain('no TIME_STATUS_NP');
  });

  it('pmc failing (exit 255, its reply socket not creatable): its stderr in the error', async () => {
    const { exec } = scripted(
      result({ code: 255, stderr: fixture('unprivileged-default-client-socket.stderr') }),
    );
    const probe = await ptpReader({ udsPath: socket, clientSocketDir: dir.dir, exec })();
    expect(probe.kind === 'unreachable' && probe.error).toBe(
      'pmc exited with status 255: pmc[2686.843]: uds: bind failed: Permission denied; pmc[2686.843]: failed to open transport; failed to create pmc',
    );
  });

  it('pmc missing', async () => {
    const { exec } = scripted(result({ code: null, error: 'pmc: ENOENT' }));
    const probe = await ptpReader({ udsPath: socket, clientSocketDir: dir.dir, exec })();
    expect(probe.kind === 'unreachable' && probe.error).toBe('pmc could not run: pmc: ENOENT');
  });

  it('no socket, or not a socket: unreachable without running pmc', async () => {
    const { exec, calls } = scripted(result({}));
    const none = await ptpReader({ udsPath: join(dir.dir, 'nope'), exec })();
    expect(none.kind === 'unreachable' && none.error).toContain('no ptp4l socket at');
    const file = join(dir.dir, 'plain');
    writeFileSync(file, '');
    const plain = await ptpReader({ udsPath: file, exec })();
    expect(plain.kind === 'unreachable' && plain.error).toBe(`${file} is not a socket`);
    expect(calls).toHaveLength(0);
  });

  it('refuses a reply-socket directory too long for a UNIX socket path', () => {
    expect(() => ptpReader({ udsPath: socket, clientSocketDir: `/${'d'.repeat(100)}` })).toThrow(
      /too long/,
    );
  });
});
