/**
 * Certificates made at test time with the openssl CLI in a temp dir: a CA, and certificates it
 * signs for names (CN and DNS subjectAltName the name, IP subjectAltName 127.0.0.1, for server and
 * client use). `foreign` is a second CA whose certificates the first does not trust. The dir is
 * removed by `remove()`.
 */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as https from 'https';
import * as os from 'os';
import * as path from 'path';
import type { HttpAnswer } from './server-harness';

export const OPENSSL = '/usr/bin/openssl';
export const opensslInstalled = fs.existsSync(OPENSSL);

function openssl(args: string[], cwd: string): void {
  execFileSync(OPENSSL, args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
}

export interface CertFiles {
  cert: string;
  key: string;
  ca: string;
}

export class TestCa {
  private constructor(
    readonly dir: string,
    readonly name: string,
  ) {}

  /** A new CA named `name` in `dir` (a fresh temp dir when not given). */
  static create(name = 'quiver-test-ca', dir = fs.mkdtempSync(path.join(os.tmpdir(), 'quiver-tls-'))): TestCa {
    openssl(
      ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.crt`, '-days', '2', '-subj', `/CN=${name}`,
        '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'],
      dir,
    );
    return new TestCa(dir, name);
  }

  get caFile(): string {
    return path.join(this.dir, `${this.name}.crt`);
  }

  /** Another CA in the same dir: its certificates are foreign to this one. */
  foreign(name: string): TestCa {
    return TestCa.create(name, this.dir);
  }

  /** A certificate for `name` signed by this CA; `file` names its files (default `name`). */
  issue(name: string, file = name): CertFiles {
    const ext = path.join(this.dir, `${file}.ext`);
    fs.writeFileSync(ext, `subjectAltName=DNS:${name},IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n`);
    openssl(['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', `${file}.key`, '-out', `${file}.csr`, '-subj', `/CN=${name}`], this.dir);
    openssl(['x509', '-req', '-in', `${file}.csr`, '-CA', `${this.name}.crt`, '-CAkey', `${this.name}.key`, '-CAcreateserial', '-out', `${file}.crt`, '-days', '2', '-extfile', ext], this.dir);
    return { cert: path.join(this.dir, `${file}.crt`), key: path.join(this.dir, `${file}.key`), ca: this.caFile };
  }

  remove(): void {
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

export interface HttpsOptions {
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
}

/** A JSON request over https with these TLS options (fetch takes no CA); rejects with the socket's or TLS's error. */
export function httpsJson(base: string, method: string, p: string, body: unknown, tls: HttpsOptions): Promise<HttpAnswer> {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const req = https.request(
      `${base}${p}`,
      { method, ...tls, agent: false, headers: data === undefined ? {} : { 'content-type': 'application/json' } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString();
          let parsed: unknown = text;
          try {
            parsed = JSON.parse(text);
          } catch {
            // not JSON: keep the text
          }
          resolve({ status: res.statusCode ?? 0, body: parsed });
        });
      },
    );
    req.on('error', reject);
    req.end(data);
  });
}
