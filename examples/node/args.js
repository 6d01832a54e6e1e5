// Minimal --flag value parsing for the examples (repeatable flags collect into arrays).
'use strict';

function parseArgs(argv, repeatable = []) {
  const out = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) throw new Error(`unexpected argument ${a}`);
    const name = a.slice(2).replace(/-/g, '_');
    const next = argv[i + 1];
    const value = next === undefined || next.startsWith('--') ? true : (i++, next);
    if (repeatable.includes(name)) (out[name] = out[name] || []).push(value);
    else out[name] = value;
  }
  return out;
}

module.exports = { parseArgs };
