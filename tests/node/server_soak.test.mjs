// The short server soak (issues 21 and 22; the long one is bench/soak.mjs): normal
// clients beside idle, slow, leaving, oversized, keyless and malformed ones on one
// `serve --parallel 4` with a small --memory and a small disk prompt cache. Proves:
// every normal answer equals the one the request got alone; /health answers within a
// bound throughout; the server's peak RSS stays under --memory plus a stated
// allowance; the prompt cache directory never exceeds its limit; every kind of
// hostile client got its answer; the server exits cleanly (no sanitizer report).
import { testCase, assert, done, LAZYMOE } from './harness.mjs';
import { runSoak } from './soak.mjs';
import { checkSoak } from './soak_check.mjs';

const asan = /asan/.test(LAZYMOE);
// Under ASan (the suite) ~30 s in all: 10 requests for the references (each API
// streamed and not, the long prompts), 10 s of load.
const rep = await runSoak({ seconds: asan ? 10 : 20, shortPrompts: asan ? 1 : 4, longPrompts: 3, log: (l) => console.log(l) });
console.log(`# ${JSON.stringify({ ...rep, mismatches: rep.mismatches.slice(0, 3) })}`);
// 3 clients over 10 s of ASan on a loaded 2-core machine complete about 9-11 requests
for (const [name, why] of checkSoak(rep, { asan, minNormal: asan ? 5 : 10 })) await testCase(name, async () => assert(!why, why));
done();
