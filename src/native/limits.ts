/** Limits of the native core (the same numbers as native/common/limits.h). */
export const dimMax = 65536;
export const topKMax = 4096;
export const efMax = 65536;
export const labelNone = 0xffffffff;
export const batchVectorsMax = 1 << 24;
