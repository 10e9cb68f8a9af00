/** host:port addresses, as the servers bind them and the client dials them ([v6]:port too). */
import { QuiverError } from '../errors';

export function splitHostPort(addr: string, what: string): { host: string; port: number } {
  const m = /^(\[[^\]]+\]|[^:]+):(\d+)$/.exec(addr);
  if (!m) throw new QuiverError('INVALID_ARGUMENT', `${what} must be host:port (got '${addr}')`);
  const port = Number(m[2]);
  if (port > 65535) throw new QuiverError('INVALID_ARGUMENT', `${what}: port ${port} is out of range`);
  return { host: m[1].replace(/^\[|\]$/g, ''), port };
}

export function joinHostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}
