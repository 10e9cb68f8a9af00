// Lists the C++ sources of the CPU addon for binding.gyp, so that adding a file under native/
// needs no edit of the build file. native/cuda/ belongs to the optional cmake-js build only;
// native/fuzz/ holds libFuzzer targets (scripts/fuzz-native.sh), never part of the addon.
'use strict';
const fs = require('fs');
const path = require('path');
const root = __dirname;
const out = [];
(function walk(dir) {
  for (const ent of fs.readdirSync(dir, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1))) {
    const p = path.join(dir, ent.name);
    if (ent.isDirectory()) {
      if (ent.name !== 'cuda' && ent.name !== 'tools' && ent.name !== 'fuzz') walk(p);
    } else if (ent.name.endsWith('.cpp')) {
      out.push(path.relative(path.join(root, '..'), p).split(path.sep).join('/'));
    }
  }
})(root);
process.stdout.write(out.join(' '));
