import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PlantFileError } from '../../simulators/errors.js';
import { defaultPlantPath, packageRoot } from '../../simulators/package-root.js';
import { loadPlantFile, parsePlant, parsePlantYaml } from '../../simulators/plant.js';

// Asymmetric matchers are typed `any`; give them a type the lint rules accept.
const anyString: unknown = expect.any(String);
const matching = (pattern: RegExp): unknown => expect.stringMatching(pattern);

function issuesOf(fn: () => unknown): { path: string; message: string }[] {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(PlantFileError);
    expect((err as PlantFileError).code).toBe('INVALID_PLANT');
    return [...(err as PlantFileError).issues];
  }
  throw new Error('expected a PlantFileError');
}

describe('plant file', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'sluice-sim-plant-'));
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it('finds the package root and the default plant from the source tree', () => {
    expect(existsSync(join(packageRoot(), 'package.json'))).toBe(true);
    expect(existsSync(defaultPlantPath())).toBe(true);
  });

  it('loads the default plant: a Modbus PLC on 5020 and an OPC UA PLC on 4840', async () => {
    const plant = await loadPlantFile(defaultPlantPath());
    expect(plant.control).toEqual({ host: '127.0.0.1', port: 5080 });
    expect(plant.plcs['modbus-plc']).toMatchObject({
      protocol: 'modbus',
      host: '127.0.0.1',
      port: 5020,
      unitId: 1,
      scanMs: 10,
      devices: {
        'inlet-valve': { profile: 'valve', base: 0, travelMs: 1500 },
        'drain-valve': { profile: 'valve', base: 100, travelMs: 1500 },
      },
    });
    expect(plant.plcs['opcua-plc']).toMatchObject({
      protocol: 'opcua',
      port: 4840,
      devices: {
        'outlet-valve': { profile: 'valve' },
        'dosing-actuator': { profile: 'actuator' },
      },
    });
  });

  it('fills defaults', () => {
    const plant = parsePlant({
      plcs: { p: { protocol: 'modbus', port: 0, devices: { v: { profile: 'valve', base: 0 } } } },
    });
    expect(plant.control).toEqual({ host: '127.0.0.1', port: 5080 });
    expect(plant.plcs.p).toMatchObject({
      host: '127.0.0.1',
      unitId: 1,
      scanMs: 10,
      clock: { offsetMs: 0, driftPpm: 0 },
      devices: { v: { travelMs: 1500, initialPosition: 0 } },
    });
  });

  it('reports every problem at once, each with its path', () => {
    const issues = issuesOf(() =>
      parsePlant({
        control: { host: '0.0.0.0' },
        plcs: {
          m: {
            protocol: 'modbus',
            port: 70000,
            devices: {
              a: { profile: 'valve', base: 0 },
              b: { profile: 'valve', base: 5 },
              c: { profile: 'valve', base: 895 },
              d: { profile: 'gate', base: 200 },
            },
          },
          u: {
            protocol: 'opcua',
            port: 4840,
            colour: 'blue',
            devices: {
              a: { profile: 'valve', travelMs: 100, travelTimeoutMs: 100 },
              e: { profile: 'valve', base: 0 },
            },
          },
          'bad.name': { protocol: 'opcua', port: 1, devices: {} },
        },
      }),
    );
    const paths = issues.map((i) => i.path);
    expect(paths).toEqual(
      expect.arrayContaining([
        'control.host',
        'plcs.m.port',
        'plcs.m.devices.d.profile',
        'plcs.u',
        'plcs.u.devices.e',
        'plcs.bad.name',
      ]),
    );
    expect(issues.length).toBeGreaterThanOrEqual(6);
  });

  it('checks the register map, duplicate ids and ports once the shape is right', () => {
    const issues = issuesOf(() =>
      parsePlant({
        control: { port: 5020 },
        plcs: {
          m: {
            protocol: 'modbus',
            port: 5020,
            devices: {
              a: { profile: 'valve', base: 0 },
              b: { profile: 'valve', base: 5 },
              c: { profile: 'valve', base: 895 },
            },
          },
          u: {
            protocol: 'opcua',
            port: 4840,
            devices: { a: { profile: 'valve', travelMs: 100, travelTimeoutMs: 100 } },
          },
          empty: { protocol: 'opcua', port: 0, devices: {} },
        },
      }),
    );
    expect(issues).toEqual(
      expect.arrayContaining([
        { path: 'plcs.m.port', message: 'port 127.0.0.1:5020 is already used by the control API' },
        { path: 'plcs.m.devices.b.base', message: matching(/overlap device a/) },
        { path: 'plcs.m.devices.c.base', message: matching(/overlap the PLC clock/) },
        { path: 'plcs.u.devices.a', message: 'device id "a" is also on PLC m' },
        { path: 'plcs.u.devices.a.travelTimeoutMs', message: anyString },
        { path: 'plcs.empty.devices', message: 'a PLC needs at least one device' },
      ]),
    );
  });

  it('reports YAML syntax and duplicate keys as plant errors', async () => {
    expect(issuesOf(() => parsePlantYaml('plcs: [', 'x.yaml'))[0]?.message).toMatch(/YAML/);
    expect(issuesOf(() => parsePlantYaml('plcs: {}\nplcs: {}\n', 'x.yaml'))[0]?.message).toMatch(
      /DUPLICATE_KEY/,
    );
    const missing = join(dir, 'missing.yaml');
    await expect(loadPlantFile(missing)).rejects.toMatchObject({ code: 'INVALID_PLANT' });
    const file = join(dir, 'plant.yaml');
    await writeFile(
      file,
      'plcs:\n  p: { protocol: modbus, port: 0, devices: { v: { profile: valve } } }\n',
    );
    await expect(loadPlantFile(file)).rejects.toMatchObject({
      issues: [{ path: 'plcs.p.devices.v.base', message: anyString }],
    });
  });
});
