#!/usr/bin/env node
'use strict';
require('../dist/src/cli/main.js').main(process.argv.slice(2)).then(
  (code) => { if (typeof code === 'number') process.exitCode = code; },
  (err) => {
    console.error(`quiver: ${err && err.code ? err.code + ': ' : ''}${err && err.message ? err.message : err}`);
    process.exitCode = 1;
  },
);
