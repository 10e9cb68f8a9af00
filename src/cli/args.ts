/** A small flag parser: --key value, --key=value, --flag (boolean), positionals. */
import { QuiverError } from '../errors';

export interface ParsedArgs {
  flags: Map<string, string | true>;
  positionals: string[];
}

export function parseArgs(argv: string[], booleans: readonly string[] = []): ParsedArgs {
  const flags = new Map<string, string | true>();
  const positionals: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a.startsWith('--')) {
      const eq = a.indexOf('=');
      if (eq > 0) flags.set(a.slice(2, eq), a.slice(eq + 1));
      else {
        const key = a.slice(2);
        if (booleans.includes(key) || i + 1 >= argv.length || argv[i + 1].startsWith('--')) flags.set(key, true);
        else flags.set(key, argv[++i]);
      }
    } else positionals.push(a);
  }
  return { flags, positionals };
}

export function flagString(p: ParsedArgs, key: string, fallback?: string): string | undefined {
  const v = p.flags.get(key);
  if (v === undefined) return fallback;
  if (v === true) throw new QuiverError('INVALID_ARGUMENT', `--${key} needs a value`);
  return v;
}

export function flagInt(p: ParsedArgs, key: string, fallback: number): number {
  const v = flagString(p, key);
  if (v === undefined) return fallback;
  const n = Number(v);
  if (!Number.isInteger(n)) throw new QuiverError('INVALID_ARGUMENT', `--${key} must be an integer, got '${v}'`);
  return n;
}

export function flagList(p: ParsedArgs, key: string, fallback: number[]): number[] {
  const v = flagString(p, key);
  if (v === undefined) return fallback;
  return v.split(',').map((s) => {
    const n = Number(s);
    if (!Number.isFinite(n)) throw new QuiverError('INVALID_ARGUMENT', `--${key}: '${s}' is not a number`);
    return n;
  });
}

export function flagBool(p: ParsedArgs, key: string): boolean {
  return p.flags.get(key) === true || p.flags.get(key) === 'true';
}
