// Reads a captured request: <dir>/headers.json and <dir>/body.
const fs = require('fs');
const path = require('path');

exports.load = (dir) => ({
  headers: JSON.parse(fs.readFileSync(path.join(dir, 'headers.json'), 'utf8')),
  raw: fs.readFileSync(path.join(dir, 'body'), 'utf8'),
});

exports.verdict = (ok, what) => {
  if (!ok) {
    console.error(`${what}: signature does not match`);
    process.exit(1);
  }
  console.log(`${what}: verified`);
};
