#!/usr/bin/env node
'use strict';
// Searches, builds and fsyncs all run on libuv's pool; the default of 4 threads would let a few long
// searches delay a WAL fsync. Must be set before the pool is first used.
if (!process.env.UV_THREADPOOL_SIZE) process.env.UV_THREADPOOL_SIZE = '16';
require('../dist/src/cli/main.js').main(process.argv.slice(2)).then(
  (code) => { if (typeof code === 'number') process.exitCode = code; },
  (err) => {
    console.error(`quiver: ${err && err.code ? err.code + ': ' : ''}${err && err.message ? err.message : err}`);
    process.exitCode = 1;
  },
);
