import { describe, it } from 'vitest';
import {
  checkProperty,
  propertyTimeLimitMs,
  PROPERTY_RUNS,
  TOP_UP_MS,
} from '../helpers/invariants-property.js';

/**
 * The invariants under random interleavings on sluice-sim (test/helpers/invariants-property.ts),
 * the devices on an OPC UA PLC: the same steps and checks as on Modbus
 * (invariants.property.test.ts), where the refusal of connections drops the driver's one session
 * (it reconnects and makes a new one), a lost write is a channel cut before the request is
 * processed, a dropped reply one whose answer never comes.
 */
describe('invariants under random interleavings, on sluice-sim', () => {
  it(
    'OPC UA: I1, I2 and I3 hold, and every command ends',
    async () => {
      await checkProperty('opcua', PROPERTY_RUNS.opcua);
    },
    propertyTimeLimitMs('opcua', PROPERTY_RUNS.opcua) + TOP_UP_MS + 60_000,
  );
});
