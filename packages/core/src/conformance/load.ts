import { readFileSync } from 'node:fs';
import { parseVectorLines, VectorError, type ConformanceVector } from './vector.js';

/**
 * Reads and validates a JSON Lines vector file. Throws a `VectorError` naming the file (and, for a bad
 * vector, the line and the field) when the file cannot be read or any line is not a valid vector.
 */
export function loadVectorFile(path: string): ConformanceVector[] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'is a directory' : e instanceof Error ? e.message : String(e);
    throw new VectorError(path, 0, '', `cannot read the vector file: ${why}`);
  }
  return parseVectorLines(text, path);
}
