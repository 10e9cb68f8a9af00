/**
 * The HTTP server's cap on connections (node:http's own maxConnections only drops new ones, so a
 * peer holding idle sockets would lock out health checks). At `max`, a new connection displaces
 * the oldest one that has not sent a whole request head yet, else the one idle longest between
 * requests; if every connection has a request in progress, the new one is taken into a small
 * reserve, where only the health, metrics and status paths are answered (anything else: 503
 * UNAVAILABLE) and the connection closes after its answer; past the reserve it is closed at once.
 */
import type * as http from 'http';
import type * as net from 'net';

/** What a reserve connection may ask for: liveness, readiness, metrics and the status page. */
const RESERVE_PATHS = new Set(['/healthz', '/readyz', '/metrics', '/', '/index.html', '/v1/cluster', '/v1/node']);

interface Conn {
  /** Requests in progress (headers received, answer not done). */
  busy: number;
  /** When its last answer was done (0: none yet). */
  activeAt: number;
  reserve: boolean;
}

export type HttpConnectionEvent = 'connection_refused' | 'connection_displaced';

export class HttpConnections {
  private readonly conns = new Map<net.Socket, Conn>();
  /** Connections that have not sent a whole request head yet, oldest first. */
  private readonly fresh = new Set<net.Socket>();
  private reserved = 0;

  constructor(
    private readonly max: number,
    private readonly reserveMax: number,
    private readonly onEvent: (e: HttpConnectionEvent) => void,
  ) {}

  /** The server's 'connection' listener. */
  readonly accept = (socket: net.Socket): void => {
    let reserve = false;
    if (this.conns.size - this.reserved >= this.max && !this.displace()) {
      if (this.reserved >= this.reserveMax) {
        this.onEvent('connection_refused');
        socket.destroy();
        return;
      }
      reserve = true;
      this.reserved++;
    }
    this.conns.set(socket, { busy: 0, activeAt: 0, reserve });
    if (!reserve) this.fresh.add(socket);
    socket.once('close', () => {
      if (this.conns.get(socket)?.reserve) this.reserved--;
      this.conns.delete(socket);
      this.fresh.delete(socket);
    });
  };

  private displace(): boolean {
    let victim: net.Socket | undefined = this.fresh.values().next().value;
    if (!victim) {
      let oldest = Infinity;
      for (const [socket, c] of this.conns) {
        if (c.busy === 0 && !c.reserve && c.activeAt < oldest) {
          oldest = c.activeAt;
          victim = socket;
        }
      }
    }
    if (!victim) return false;
    this.onEvent('connection_displaced');
    this.conns.delete(victim); // its 'close' comes later; its place is taken now
    this.fresh.delete(victim);
    victim.destroy();
    return true;
  }

  /** Wraps the request listener: a request keeps its connection busy until its answer is done. */
  wrap(listener: http.RequestListener): http.RequestListener {
    return (req, res) => {
      const c = this.conns.get(req.socket);
      if (c) {
        c.busy++;
        this.fresh.delete(req.socket);
        res.once('close', () => {
          c.busy--;
          c.activeAt = Date.now();
        });
        if (c.reserve) {
          res.setHeader('connection', 'close');
          if (!RESERVE_PATHS.has((req.url ?? '/').split('?')[0])) {
            const body = JSON.stringify({
              error: { code: 'UNAVAILABLE', message: `the server is at its limit of ${this.max} connections; this one answers only ${[...RESERVE_PATHS].join(', ')}` },
            });
            res.writeHead(503, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
            res.end(body);
            return;
          }
        }
      }
      listener(req, res);
    };
  }
}
