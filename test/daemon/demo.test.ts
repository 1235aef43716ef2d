import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { createServer } from 'node:net';
import { createInterface } from 'node:readline';
import { expect, it } from 'vitest';
import { ROOT } from '../helpers/fixtures.js';
import { hasCommand, realComponent } from '../helpers/real.js';

/**
 * The README's first command: `npm start` comes up (building first when needed), the curl
 * command it prints opens a valve, and Ctrl-C stops everything, leaving no process and no port.
 */

const PORTS = [8443, 1883, 5020, 4840, 5080];

async function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', () => {
      resolve(false);
    });
    server.listen(port, '127.0.0.1', () =>
      server.close(() => {
        resolve(true);
      }),
    );
  });
}

const curl = realComponent('curl', hasCommand('curl'), 'apt-get install curl');

it.runIf(curl)(
  'npm start comes up, its printed curl command opens a valve, Ctrl-C leaves nothing behind',
  async () => {
    for (const port of PORTS) {
      if (!(await portFree(port))) throw new Error(`port ${port} is taken: the demo cannot start`);
    }
    const child = spawn('npm', ['start', '--silent'], {
      cwd: ROOT,
      env: { ...process.env, SLUICE_DEMO_TOKEN: 'demo-test-token', SLUICE_MQTT_URL: '' },
      stdio: ['ignore', 'pipe', 'inherit'],
      detached: true,
    });
    const lines: string[] = [];
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => {
          reject(new Error(`demo did not come up:\n${lines.join('\n')}`));
        }, 120_000);
        createInterface({ input: child.stdout }).on('line', (line) => {
          lines.push(line);
          if (line.includes('Ctrl-C stops everything')) {
            clearTimeout(timer);
            resolve();
          }
        });
        child.once('exit', (code) => {
          reject(new Error(`demo exited with ${code}:\n${lines.join('\n')}`));
        });
      });
      const text = lines.join('\n');
      expect(text).toContain('https://127.0.0.1:8443');
      expect(text).toContain('demo-test-token');
      // The printed curl command, exactly as a user would paste it.
      const start = lines.findIndex((l) => l.trim().startsWith('curl '));
      const command = lines
        .slice(start, start + 3)
        .map((l) => l.trim().replace(/\\$/, ''))
        .join(' ');
      const out = execFileSync('sh', ['-c', `${command} -sS -w '\\n%{http_code}'`], {
        encoding: 'utf8',
        timeout: 30_000,
      });
      const [body, status] = [
        out.slice(0, out.lastIndexOf('\n')),
        out.slice(out.lastIndexOf('\n') + 1),
      ];
      expect(status).toBe('200');
      expect(JSON.parse(body)).toMatchObject({
        device: 'inlet-valve',
        state: 'confirmed',
        code: 'OK',
      });
      // The printed mosquitto_pub command works too, when the client is installed.
      if (hasCommand('mosquitto_pub')) {
        const pub = lines.findIndex((l) => l.trim().startsWith('mosquitto_pub '));
        const pubCommand = lines
          .slice(pub, pub + 2)
          .map((l) => l.trim().replace(/\\$/, ''))
          .join(' ');
        const r = spawnSync('sh', ['-c', pubCommand], { encoding: 'utf8', timeout: 10_000 });
        expect(r.status).toBe(0);
      }
    } finally {
      const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>(
        (resolve) =>
          child.once('exit', (code, signal) => {
            resolve({ code, signal });
          }),
      );
      // Ctrl-C in a terminal: SIGINT to the whole foreground process group (npm and the demo).
      if (child.exitCode === null) process.kill(-child.pid!, 'SIGINT');
      const result = await Promise.race([
        exited,
        new Promise<'timeout'>((r) =>
          setTimeout(() => {
            r('timeout');
          }, 20_000),
        ),
      ]);
      if (result === 'timeout') process.kill(-child.pid!, 'SIGKILL');
      expect(result).not.toBe('timeout');
      // npm itself ends by the signal; the demo under it stops cleanly and says so.
      if (result !== 'timeout') expect(result.code === 0 || result.signal === 'SIGINT').toBe(true);
      await new Promise((r) => setTimeout(r, 500));
      expect(lines.join('\n')).toContain('stopping');
    }
    // Nothing left behind: no process of the group, every port free again.
    expect(() => process.kill(-child.pid!, 0)).toThrow();
    for (const port of PORTS) expect(await portFree(port)).toBe(true);
  },
  180_000,
);
