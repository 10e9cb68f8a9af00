/**
 * TLS material and the rules every hop applies to it.
 *
 * A node has one certificate (cert and key files) that it serves on its client endpoints (gRPC and
 * HTTP) and presents as a client to other nodes and their sidecars, plus the cluster's CA. Its
 * identity is a name in the certificate: the subject CN or a DNS subjectAltName. Between nodes a
 * peer is checked against the node id the cluster map names (not the host name dialled), so the
 * same certificate serves clients (who check the host name, e.g. an IP subjectAltName) and peers.
 *
 * Servers ask every client for a certificate: one that is presented must be signed by the CA or
 * the connection is closed (the handshake is TLS's; the refusal ours, right after it). A client
 * without a certificate may use the client API; the node service and the replication streams take
 * only a node's certificate.
 */
import * as fs from 'fs';
import * as net from 'net';
import * as tls from 'tls';
import { QuiverError } from '../errors';

/** Where the PEM files are (read again on reload). `ca` is the CA whose signature a peer's certificate must carry. */
export interface TlsFiles {
  cert: string;
  key: string;
  ca?: string;
}

/** The files' contents, checked to make a secure context. */
export interface TlsMaterial {
  cert: Buffer;
  key: Buffer;
  ca?: Buffer;
}

function readPem(file: string, what: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (e) {
    throw new QuiverError('NOT_FOUND', `cannot read the ${what} ${file}: ${(e as Error).message}`);
  }
}

/** Reads the files; a key that does not match the certificate, or a file that is no PEM, is INVALID_ARGUMENT. */
export function readTls(files: TlsFiles): TlsMaterial {
  const m: TlsMaterial = { cert: readPem(files.cert, 'certificate'), key: readPem(files.key, 'key') };
  if (files.ca !== undefined) m.ca = readPem(files.ca, 'CA certificate');
  try {
    tls.createSecureContext(m);
  } catch (e) {
    throw new QuiverError('INVALID_ARGUMENT', `TLS files ${[files.cert, files.key, files.ca].filter(Boolean).join(', ')}: ${(e as Error).message}`);
  }
  return m;
}

/** A server's options: its certificate, and a client's certificate asked for and checked against the CA (see refuseUnverified). */
export function serverTlsOptions(m: TlsMaterial): tls.TlsOptions {
  return { cert: m.cert, key: m.key, ca: m.ca, requestCert: m.ca !== undefined, rejectUnauthorized: false };
}

/** Closes a connection whose client presented a certificate the CA did not sign; true if it did. */
export function refuseUnverified(socket: tls.TLSSocket): boolean {
  if (socket.authorized || !presented(socket)) return false;
  socket.destroy();
  return true;
}

function presented(socket: tls.TLSSocket): boolean {
  return socket.getPeerCertificate().raw !== undefined;
}

/** The names a certificate gives its holder: the subject CN and the DNS subjectAltNames. */
export function certNames(cert: tls.PeerCertificate): string[] {
  const names = new Set<string>();
  const cn = cert.subject?.CN;
  if (typeof cn === 'string') names.add(cn);
  for (const part of (cert.subjectaltname ?? '').split(', ')) if (part.startsWith('DNS:')) names.add(part.slice(4));
  return [...names];
}

/** The names of the peer's certificate if the CA signed it, else null (cleartext, none presented, or unverified). */
export function verifiedNames(socket: net.Socket): string[] | null {
  if (!(socket instanceof tls.TLSSocket) || !socket.authorized) return null;
  return certNames(socket.getPeerCertificate());
}

/**
 * A client's options: the CA to check the server with, and the certificate to present. With
 * `peer`, the server must be that node (a name of its certificate), whatever host was dialled.
 */
export function clientTlsOptions(m: TlsMaterial, peer?: string): tls.ConnectionOptions {
  const o: tls.ConnectionOptions = { ca: m.ca, cert: m.cert, key: m.key };
  if (peer !== undefined) o.checkServerIdentity = (_host, cert) => checkPeerIdentity(peer, cert);
  return o;
}

/** Undefined when the certificate names node `peer`, else the error that ends the handshake. */
export function checkPeerIdentity(peer: string, cert: tls.PeerCertificate): Error | undefined {
  const names = certNames(cert);
  return names.includes(peer) ? undefined : new Error(`the peer's certificate names ${names.join(', ') || 'nobody'}, not node '${peer}'`);
}
