/** The real etcd of the cluster tests: the benchmark's launcher (bench/etcd-process.ts). */
export * from '../bench/etcd-process';
