// What a soak (soak.mjs) must show, as [case name, reason it failed or null] pairs,
// for the suite's short run and bench/soak.mjs alike.
//
// The RSS bound: --memory (the plan stays inside it, 64 MiB of it for code, allocator
// slack, stacks and the tokenizer) plus an allowance for request work that the plan
// does not count: bodies up to --max-body for the connections open at once, rendered
// prompts and token lists, replies (32 MiB). Under ASan the allocator's quarantine of
// freed memory (256 MiB by default) comes on top; redzones and shadow memory fit in
// what the plan leaves (the short run peaks at ~1.3x --memory under ASan, ~0.55x
// without).
export const RSS_ALLOWANCE = 32 << 20;
export const ASAN_QUARANTINE = 256 << 20;

export function rssBound(rep, asan) {
  return rep.budget + RSS_ALLOWANCE + (asan ? ASAN_QUARANTINE : 0);
}

export function checkSoak(rep, { asan = false, healthBoundMs = 3000, minNormal = 10 } = {}) {
  const c = rep.counts;
  const mb = (b) => `${(b / (1 << 20)).toFixed(1)} MiB`;
  const out = [];
  const check = (name, cond, why) => out.push([name, cond ? null : why]);
  const closed = rep.finalHealth ? rep.finalHealth.connections_closed : '?';
  check('soak_no_client_saw_a_wrong_answer', rep.failures.length === 0 && rep.mismatches.length === 0,
    `${rep.failures.length} failures: ${rep.failures.slice(0, 8).join(' | ')} ${rep.mismatches.slice(0, 2).join(' | ')}` +
    ` (the server closed ${closed} connections; idle ${rep.counts.idle_closed}, slow headers ${rep.counts.slow_header_cut})`);
  check('soak_normal_requests_kept_completing', (c.normal_ok || 0) >= minNormal && !c.normal_failed,
    `normal requests: ${c.normal_ok || 0} ok (at least ${minNormal} expected), ${c.normal_failed || 0} failed`);
  check('soak_every_hostile_kind_ran', ['idle_closed', 'slow_header_cut', 'slow_body_ok', 'left_mid_stream', 'left_mid_prefill',
    'oversized_413', 'keyless_401', 'invalid_400'].every((k) => c[k] > 0), `counts: ${JSON.stringify(c)}`);
  check('soak_health_answered_within_bound', rep.health.bad === 0 && rep.health.n > 10 && rep.health.maxMs <= healthBoundMs,
    `/health: ${rep.health.n} polls, ${rep.health.bad} failed, slowest ${rep.health.maxMs} ms (bound ${healthBoundMs} ms)`);
  const bound = rssBound(rep, asan);
  check('soak_peak_rss_within_bound', rep.hwm > 0 && rep.hwm <= bound && rep.planned <= rep.budget,
    `peak RSS ${mb(rep.hwm)} (sampled max ${mb(rep.rssMax)}), plan ${mb(rep.planned)}, bound ${mb(bound)}`);
  check('soak_disk_cache_within_limit', rep.diskMax <= rep.limit && rep.stored >= 2 && rep.removed >= 1,
    `directory peaked at ${mb(rep.diskMax)} of a ${mb(rep.limit)} limit; ${rep.stored} stored, ${rep.removed} removed`);
  check('soak_server_exited_cleanly', !rep.failures.some((f) => /server stop/.test(f)), 'see failures');
  return out;
}
