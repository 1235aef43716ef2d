import { describe, it } from 'vitest';
import {
  checkProperty,
  propertyTimeLimitMs,
  PROPERTY_RUNS,
  TOP_UP_MS,
} from '../helpers/invariants-property.js';

/**
 * The invariants under random interleavings on sluice-sim, its devices on a Modbus PLC: the
 * steps, the checks and how to replay a seed are in test/helpers/invariants-property.ts. The
 * same property with the devices on an OPC UA PLC is invariants-opcua.property.test.ts.
 */
describe('invariants under random interleavings, on sluice-sim', () => {
  it(
    'Modbus: I1, I2 and I3 hold, and every command ends',
    async () => {
      await checkProperty('modbus', PROPERTY_RUNS.modbus);
    },
    propertyTimeLimitMs('modbus', PROPERTY_RUNS.modbus) + TOP_UP_MS + 60_000,
  );
});
