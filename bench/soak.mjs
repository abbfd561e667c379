// The long server soak (issues 21 and 22): tests/node/soak.mjs for minutes instead of
// the suite's seconds, on the release build, with more normal clients; the same
// checks (tests/node/soak_check.mjs). Loopback only. Run from the repository root:
//   node bench/soak.mjs [SECONDS] [NORMAL_CLIENTS]
// (default 300 s, 4 clients; LAZYMOE_BIN picks the binary, default build/lazymoe).
// Prints the counts, the slowest /health, peak RSS against its bound and the prompt
// cache directory's peak against its limit; exits 1 if a check fails.
import path from 'node:path';

process.env.LAZYMOE_BIN ||= path.resolve('build/lazymoe');
const { runSoak } = await import('../tests/node/soak.mjs');
const { checkSoak, rssBound } = await import('../tests/node/soak_check.mjs');

const seconds = Number(process.argv[2] || 300), clients = Number(process.argv[3] || 4);
const asan = /asan/.test(process.env.LAZYMOE_BIN);
const t0 = Date.now();
const rep = await runSoak({ seconds, normalWorkers: clients, log: (l) => console.log(l) });
const mb = (b) => `${(b / (1 << 20)).toFixed(1)} MiB`;
console.log(`binary ${process.env.LAZYMOE_BIN}; ${seconds} s of load, ${clients} normal clients, ${((Date.now() - t0) / 1000).toFixed(0)} s in all`);
console.log(`counts: ${JSON.stringify(rep.counts)}`);
console.log(`request log lines by status: ${JSON.stringify(rep.status)}; batch: ${rep.finalHealth?.decode_steps} steps carried ${rep.finalHealth?.decoded_tokens} tokens`);
console.log(`connections the server closed (deadlines, room): ${rep.finalHealth?.connections_closed}`);
console.log(`/health: ${rep.health.n} polls, ${rep.health.bad} failed, slowest ${rep.health.maxMs} ms`);
console.log(`peak RSS (VmHWM) ${mb(rep.hwm)}; plan ${mb(rep.planned)} of --memory ${mb(rep.budget)}; bound ${mb(rssBound(rep, asan))}`);
console.log(`prompt cache directory: peak ${mb(rep.diskMax)} of a ${mb(rep.limit)} limit; ${rep.stored} stored, ${rep.removed} removed, ${rep.restored} requests reused cached tokens`);
let failed = 0;
for (const [name, why] of checkSoak(rep, { asan })) {
  console.log(why ? `FAIL ${name}: ${why}` : `ok ${name}`);
  if (why) failed++;
}
process.exitCode = failed ? 1 : 0;
