/**
 * `quiver bench rpc`: the floor of one request/answer between two processes on this machine, for
 * each transport the server could use, with no Quiver code on either side:
 *
 *   tcp     a raw TCP echo (net): one write each way, the least any protocol can cost
 *   http1   node:http keep-alive, POST /echo answered with the body
 *   grpc    @grpc/grpc-js unary Echo (bytes in, the same bytes out, identity serializers)
 *   h2grpc  the same grpc-js server called by the Quiver client's transport (gRPC on Quiver's own
 *           HTTP/2 framing over a net socket, src/rpc/h2.ts)
 *   h2bare  that client against a bare node:http2 server answering in the same framing
 *   quiver  that client against Quiver's own gRPC server (src/rpc/grpc-server.ts): what `quiver
 *           serve` runs by default, with no handler work
 *
 * A child process serves them all; this process calls each one serially (one call outstanding),
 * alternating transports pass by pass, and prints p50/p99 per transport and payload size. The
 * payloads: 16 bytes (a Count-sized call) and dim x 4 bytes (one Fashion-MNIST query vector).
 * With --quiver HOST:PORT it also times Count and Search round trips against a running server.
 */
import { ChildProcess, spawn } from 'child_process';
import * as http from 'http';
import * as http2 from 'http2';
import * as net from 'net';
import * as grpc from '@grpc/grpc-js';
import { CommandSpec, intFlag, parseCommandLine, stringFlag } from '../src/common/args';
import { GrpcChannel, UnaryMethod } from '../src/rpc/grpc-client';
import { H2GrpcServer } from '../src/rpc/grpc-server';
import { median, pct } from './datasets';

const USAGE = `usage: quiver bench rpc [options]

The round-trip floor between two processes: raw TCP echo, HTTP/1.1 keep-alive echo, grpc-js unary
echo, the Quiver client's transport against the grpc-js server, a bare node:http2 server and Quiver's
own gRPC server; one call outstanding; p50/p99 per transport and payload size.

options:
  --calls N        calls per pass and transport (default 2000)
  --passes N       passes, transports alternating (default 5)
  --bytes N        the larger payload in bytes (default 3136, one 784-d float32 vector)
  --quiver ADDR    also time Count and Search against a running quiver serve (gRPC host:port)
  --collection C   collection for --quiver (default bench)
  --api-key KEY    the API key for --quiver, for a server started with --api-keys (default the
                   environment variable QUIVER_API_KEY)
  --help           this text
`;

export const SPEC: CommandSpec = {
  usage: USAGE,
  flags: Object.fromEntries(['calls', 'passes', 'bytes', 'quiver', 'collection', 'api-key'].map((k) => [k, { type: 'string' }])),
};

const now = (): number => Number(process.hrtime.bigint());
const log = (m: string): void => void process.stdout.write(`${m}\n`);

/** A unary method carrying raw bytes both ways (no protobuf). */
const ECHO: grpc.ServiceDefinition = {
  Echo: {
    path: '/quiver.bench.Echo/Echo',
    requestStream: false,
    responseStream: false,
    requestSerialize: (b: Buffer) => b,
    requestDeserialize: (b: Buffer) => b,
    responseSerialize: (b: Buffer) => b,
    responseDeserialize: (b: Buffer) => b,
  },
};

// ---------------------------------------------------------------- the child: three echo servers

async function serveChild(): Promise<void> {
  const g = new grpc.Server();
  g.addService(ECHO, { Echo: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => cb(null, call.request) });
  const grpcPort = await new Promise<number>((res, rej) =>
    g.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))),
  );
  const h = http.createServer({ keepAliveTimeout: 60_000 }, (req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': body.length });
      res.end(body);
    });
  });
  await new Promise<void>((res) => h.listen(0, '127.0.0.1', res));
  const h2 = http2.createServer();
  h2.on('stream', (stream, headers) => {
    const chunks: Buffer[] = [];
    stream.on('data', (c: Buffer) => chunks.push(c));
    stream.on('end', () => {
      if (headers[':path'] !== ECHO.Echo.path) {
        stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '12' }, { endStream: true });
        return;
      }
      stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
      stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
      stream.end(Buffer.concat(chunks)); // the request's prefix and message, echoed as they came
    });
  });
  await new Promise<void>((res) => h2.listen(0, '127.0.0.1', res));
  const q = new H2GrpcServer(
    new Map([[ECHO.Echo.path, { decode: (b: Buffer) => b, encode: (v: unknown) => v as Buffer, handle: (req: unknown) => Promise.resolve(req) }]]),
    { receiveBytesMax: 64 << 20 },
  );
  const quiverPort = await q.listen('127.0.0.1', 0);
  const t = net.createServer((s) => {
    s.setNoDelay(true);
    s.on('data', (d) => s.write(d));
  });
  await new Promise<void>((res) => t.listen(0, '127.0.0.1', res));
  const port = (srv: net.Server | http.Server): number => (srv.address() as net.AddressInfo).port;
  process.stdout.write(`${JSON.stringify({ grpc: grpcPort, http: port(h), tcp: port(t), h2: port(h2), quiver: quiverPort })}\n`);
  // Lives until the parent closes stdin or kills it.
  process.stdin.on('end', () => process.exit(0));
  process.stdin.resume();
}

// ---------------------------------------------------------------- callers

type Call = (payload: Buffer) => Promise<void>;

function tcpCaller(port: number): Promise<{ call: Call; close: () => void }> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1');
    s.setNoDelay(true);
    let want = 0;
    let done: (() => void) | null = null;
    s.on('data', (d) => {
      want -= d.length;
      if (want <= 0 && done) {
        const f = done;
        done = null;
        f();
      }
    });
    s.once('error', reject);
    s.once('connect', () =>
      resolve({
        call: (p) =>
          new Promise<void>((r) => {
            want = p.length;
            done = r;
            s.write(p);
          }),
        close: () => s.destroy(),
      }),
    );
  });
}

function httpCaller(port: number): { call: Call; close: () => void } {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const call: Call = (p) =>
    new Promise<void>((resolve, reject) => {
      const req = http.request(
        { host: '127.0.0.1', port, method: 'POST', path: '/echo', agent, headers: { 'content-type': 'application/octet-stream', 'content-length': p.length } },
        (res) => {
          res.on('data', () => undefined);
          res.on('end', resolve);
        },
      );
      req.on('error', reject);
      req.end(p);
    });
  return { call, close: () => agent.destroy() };
}

async function grpcCaller(port: number): Promise<{ call: Call; close: () => void }> {
  const Ctor = grpc.makeGenericClientConstructor(ECHO, 'Echo');
  const c = new Ctor(`127.0.0.1:${port}`, grpc.credentials.createInsecure()) as unknown as grpc.Client & {
    Echo(req: Buffer, cb: (e: grpc.ServiceError | null, r: Buffer) => void): void;
  };
  await new Promise<void>((res, rej) => c.waitForReady(Date.now() + 10_000, (e) => (e ? rej(e) : res())));
  const call: Call = (p) => new Promise<void>((resolve, reject) => c.Echo(p, (e) => (e ? reject(e) : resolve())));
  return { call, close: () => c.close() };
}

/** The Quiver client's own transport (src/rpc/grpc-client.ts: gRPC on its own HTTP/2 framing, no grpc-js). */
const ECHO_METHOD: UnaryMethod = {
  path: ECHO.Echo.path,
  requestSerialize: (b) => b as Buffer,
  responseDeserialize: (b) => b,
};

async function h2GrpcCaller(port: number, bytesMax: number): Promise<{ call: Call; close: () => void }> {
  const ch = new GrpcChannel(`127.0.0.1:${port}`, bytesMax);
  await ch.waitForReady(Date.now() + 10_000);
  const call: Call = async (p) => {
    await ch.unary(ECHO_METHOD, p, Date.now() + 30_000);
  };
  return { call, close: () => ch.close() };
}

async function timeCalls(call: () => Promise<unknown>, n: number): Promise<{ p50: number; p99: number }> {
  const lat: number[] = [];
  for (let i = 0; i < n; i++) {
    const s = now();
    await call();
    lat.push(now() - s);
  }
  lat.sort((a, b) => a - b);
  return { p50: pct(lat, 0.5) / 1e3, p99: pct(lat, 0.99) / 1e3 };
}

export async function run(argv: string[]): Promise<number> {
  const p = parseCommandLine(argv, SPEC);
  if (!p) return 0;
  const calls = intFlag(p, 'calls', 2000, 1);
  const passes = intFlag(p, 'passes', 5, 1);
  const big = intFlag(p, 'bytes', 3136, 1);
  const quiver = stringFlag(p, 'quiver');
  const collection = stringFlag(p, 'collection', 'bench');
  const apiKey = stringFlag(p, 'api-key');

  const child: ChildProcess = spawn(process.execPath, [__filename, '--rpc-child'], { stdio: ['pipe', 'pipe', 'inherit'] });
  const cleanup = (): void => {
    if (child.exitCode === null && child.pid) process.kill(child.pid, 'SIGKILL');
  };
  process.once('exit', cleanup);
  try {
    const ports = await new Promise<{ grpc: number; http: number; tcp: number; h2: number; quiver: number }>((resolve, reject) => {
      let out = '';
      child.stdout!.on('data', (b: Buffer) => {
        out += b.toString();
        const nl = out.indexOf('\n');
        if (nl >= 0) resolve(JSON.parse(out.slice(0, nl)));
      });
      child.once('exit', (code) => reject(new Error(`echo child exited with ${code}`)));
    });
    const callers: Record<string, { call: Call; close: () => void }> = {
      tcp: await tcpCaller(ports.tcp),
      http1: httpCaller(ports.http),
      grpc: await grpcCaller(ports.grpc),
      h2grpc: await h2GrpcCaller(ports.grpc, big + 1024),
      h2bare: await h2GrpcCaller(ports.h2, big + 1024),
      quiver: await h2GrpcCaller(ports.quiver, big + 1024),
    };
    const sizes = [16, big];
    const res: Record<string, { p50: number[]; p99: number[] }> = {};
    const names = Object.keys(callers);
    for (const name of names) for (const size of sizes) res[`${name} ${size}`] = { p50: [], p99: [] };
    for (const name of names) await timeCalls(() => callers[name].call(Buffer.alloc(16)), 3000); // warm up: the JIT settles after a few thousand calls
    for (let pass = 0; pass < passes; pass++) {
      for (let i = 0; i < names.length; i++) {
        const name = names[(i + pass) % names.length];
        for (const size of sizes) {
          const payload = Buffer.alloc(size, 7);
          const r = await timeCalls(() => callers[name].call(payload), calls);
          res[`${name} ${size}`].p50.push(r.p50);
          res[`${name} ${size}`].p99.push(r.p99);
        }
      }
    }
    for (const c of Object.values(callers)) c.close();

    const rows: [string, number, number][] = Object.entries(res).map(([k, v]) => [k, median(v.p50), median(v.p99)]);
    if (quiver) {
      // Loaded here so the bare echo never pulls in the Quiver client.
      const { QuiverClient } = await import('../src/client');
      const client = await QuiverClient.connect(quiver, { apiKey });
      const info = await client.describeCollection(collection);
      const q = new Float32Array(info.dim).fill(0.5);
      const count: number[][] = [[], []];
      const search: number[][] = [[], []];
      await timeCalls(() => client.count(collection), 200);
      for (let pass = 0; pass < passes; pass++) {
        const c = await timeCalls(() => client.count(collection), calls);
        const s = await timeCalls(() => client.search(collection, q, { k: 10 }), calls);
        count[0].push(c.p50);
        count[1].push(c.p99);
        search[0].push(s.p50);
        search[1].push(s.p99);
      }
      client.close();
      rows.push([`quiver Count`, median(count[0]), median(count[1])]);
      rows.push([`quiver Search k=10`, median(search[0]), median(search[1])]);
    }
    log(`round trips between two processes, one call outstanding, ${calls} calls x ${passes} passes (median of passes):`);
    for (const [name, p50, p99] of rows) log(`  ${name.padEnd(22)} p50 ${p50.toFixed(1).padStart(7)} us   p99 ${p99.toFixed(1).padStart(7)} us`);
    return 0;
  } finally {
    child.stdin!.end();
    cleanup();
    process.off('exit', cleanup);
  }
}

if (require.main === module && process.argv[2] === '--rpc-child') {
  serveChild().catch((e) => {
    process.stderr.write(`${(e as Error).stack}\n`);
    process.exit(1);
  });
}
