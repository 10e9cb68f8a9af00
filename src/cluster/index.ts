export * from './types';
export * from './epochs';
export * from './replica';
export * from './lease';
export * from './controller';
export * from './format';
export * from './keys';
export * from './sidecar-link';
