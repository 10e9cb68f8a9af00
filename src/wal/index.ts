/** The write-ahead log (DESIGN.md section 5): format, append with group commit, reader, truncation. */
export * from './format';
export * from './wal';
export { crc32c } from './crc32c';
