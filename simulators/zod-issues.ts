import type { z } from 'zod';
import type { PlantFileIssue } from './errors.js';

/** Flattens a zod error into path/message pairs, every issue at once. */
export function zodIssues(error: z.ZodError): PlantFileIssue[] {
  return error.issues.map((issue) => ({
    path: issue.path.map((part) => String(part)).join('.'),
    message: issue.message,
  }));
}
