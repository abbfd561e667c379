// Shared by the node tests: prints "ok NAME" / "FAIL NAME: reason" lines that
// tests/run.sh aggregates, and exits non-zero if any case failed.
import { execFileSync, spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const LAZYMOE = process.env.LAZYMOE_BIN || path.join(ROOT, 'build', 'asan', 'lazymoe');
let failures = 0;

export async function testCase(name, fn) {
  try {
    await fn();
    console.log(`ok ${name}`);
  } catch (e) {
    failures++;
    console.log(`FAIL ${name}: ${String(e && e.stack || e).split('\n').slice(0, 6).join(' | ')}`);
  }
}

export function assert(cond, msg) { if (!cond) throw new Error(msg || 'assertion failed'); }

/** Runs the lazymoe CLI, returns {status, stdout, stderr}. */
export function lazymoe(args, input) {
  const r = spawnSync(LAZYMOE, args, { input, encoding: 'utf8', maxBuffer: 1 << 28 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

export function done() { process.exitCode = failures ? 1 : 0; }
export { execFileSync };
