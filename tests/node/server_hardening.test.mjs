// Connection handling under hostile clients (issue 22), loopback only: idle and slow
// connections must not lock others out, a client without the key gets its 401 before
// sending its body, and a second server cannot take the port. Every wait is bounded.
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { testCase, assert, done, LAZYMOE } from './harness.mjs';
import { startServer, http, SERVER_MODEL } from './server_harness.mjs';

const KEY = 'hardening-key';
const server = await startServer(['--api-key', KEY, '--header-timeout', '2']);
const port = Number(new URL(server.url).port);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
function within(p, ms, what) {
  let timer;
  return Promise.race([p, new Promise((_, rej) => { timer = setTimeout(() => rej(new Error(`${what}: no answer in ${ms} ms`)), ms); })])
    .finally(() => clearTimeout(timer));
}

// A raw connection: resolves once connected; `data` gathers what the server sends,
// `closed` resolves when the server closes it.
function connect() {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    const c = { sock: s, data: '' };
    c.closed = new Promise((r) => s.on('close', r));
    s.on('data', (d) => { c.data += d.toString('latin1'); });
    s.on('error', () => {});
    s.on('connect', () => resolve(c));
    s.on('close', () => resolve(c));
  });
}

await testCase('server_idle_connections_do_not_lock_out', async () => {
  // 80 connections that send nothing: more than --max-connections (64). Before the fix
  // they took every slot and /health went unanswered until the 600 s idle timeout.
  const idle = [];
  for (let i = 0; i < 80; i++) idle.push(await connect());
  await sleep(300);
  try {
    const h = await within(http(`${server.url}/health`, { method: 'GET' }), 5000, '/health');
    assert(h.status === 200, `/health ${h.status}`);
    const r = await within(http(`${server.url}/v1/chat/completions`, {
      body: { messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 },
      headers: { authorization: `Bearer ${KEY}` },
    }), 30000, 'chat');
    assert(r.status === 200 && r.json.choices.length === 1, `chat ${r.status} ${r.text.slice(0, 200)}`);
  } finally {
    for (const c of idle) c.sock.destroy();
  }
});

await testCase('server_sheds_unused_connections_before_kept_alive_ones', async () => {
  // A client's kept-alive connection, idle between its requests, outlives connections
  // that never sent a request when the server must shed. Before, the oldest connection
  // waiting for headers went first: the client's, idle since its last answer (the soak
  // saw an SDK request fail with a connection error this way).
  const ka = await connect();
  const ask = () => new Promise((resolve) => {
    const before = ka.data.length;
    ka.sock.write('GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');
    const t = setInterval(() => { if (/"status"/.test(ka.data.slice(before))) { clearInterval(t); resolve(true); } }, 10);
    ka.closed.then(() => { clearInterval(t); resolve(false); });
  });
  assert(await within(ask(), 5000, 'first request'), 'first request unanswered');
  // The answer says how long the server keeps an idle connection (--header-timeout 2):
  // without it, node's fetch reuses idle connections for 4 s and, between 2 and 4 s,
  // sends requests into connections the server is closing (the soak saw them cut).
  assert(/\r\nKeep-Alive: timeout=2\r\n/i.test(ka.data), `no Keep-Alive timeout: ${ka.data.slice(0, 300)}`);
  await sleep(300);
  const idle = [];
  for (let i = 0; i < 70; i++) idle.push(await connect()); // past 3/4 of 64 from this address, and past 64
  await sleep(300);
  try {
    assert(await within(ask(), 5000, 'kept-alive request'), 'the kept-alive connection was shed before unused ones');
  } finally {
    ka.sock.destroy();
    for (const c of idle) c.sock.destroy();
  }
});

await testCase('server_slow_headers_cut_at_deadline', async () => {
  // Headers sent slowly and never finished: closed after --header-timeout (2 s).
  const c = await connect();
  c.sock.write('GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n');
  const t0 = Date.now();
  await within(c.closed, 8000, 'slow headers');
  const s = (Date.now() - t0) / 1000;
  assert(s >= 1 && s < 8, `closed after ${s} s`);
});

await testCase('server_keyless_upload_refused_before_body', async () => {
  // Expect: 100-continue without a key: 401 at once, never "100 Continue".
  let c = await connect();
  c.sock.write('POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n' +
               'Content-Length: 31457280\r\nExpect: 100-continue\r\n\r\n');
  await within(c.closed, 5000, '401 to an Expect: 100-continue upload');
  assert(/^HTTP\/1\.1 401/.test(c.data), `got: ${c.data.slice(0, 80)}`);
  assert(!/100 Continue/i.test(c.data), 'a keyless client was told to continue');
  // A 30 MiB body announced and begun: the 401 comes before the client sends the rest.
  c = await connect();
  c.sock.write('POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n' +
               'Content-Length: 31457280\r\n\r\n' + '{"messages": ['.padEnd(4096, ' '));
  await within(c.closed, 5000, '401 to a large keyless upload');
  assert(/^HTTP\/1\.1 401/.test(c.data), `got: ${c.data.slice(0, 80)}`);
  // the server still answers keyed requests
  const h = await within(http(`${server.url}/v1/models`, { method: 'GET', headers: { 'x-api-key': KEY } }), 5000, 'models');
  assert(h.status === 200, `models ${h.status}`);
});

await testCase('server_oversized_upload_refused_before_body_when_asked', async () => {
  // A keyed client asking (Expect: 100-continue) to send a body over --max-body: 413 at
  // once. Before, it was told "100 Continue" and refused only after the whole upload.
  const c = await connect();
  c.sock.write('POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n' +
               `Authorization: Bearer ${KEY}\r\nContent-Length: 41943040\r\nExpect: 100-continue\r\n\r\n`);
  await within(c.closed, 5000, '413 to an oversized Expect: 100-continue upload');
  assert(/^HTTP\/1\.1 413/.test(c.data) && /larger than the server's limit/.test(c.data), `got: ${c.data.slice(0, 200)}`);
  assert(!/100 Continue/i.test(c.data), 'an oversized upload was told to continue');
});

await testCase('server_second_instance_refused_on_port', async () => {
  // Before the fix SO_REUSEPORT let a second server share the port (and traffic).
  const proc = spawn(LAZYMOE, ['serve', SERVER_MODEL, '--port', String(port), '--ctx', '512', '--no-warm-start'],
                     { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  proc.stderr.on('data', (d) => { log += d; });
  const code = await within(new Promise((r) => proc.on('exit', (c) => r(c))), 60000, 'second server').catch((e) => {
    proc.kill('SIGKILL');
    throw e;
  });
  assert(code !== 0 && !/listening on/.test(log), `second server: exit ${code}: ${log.slice(-300)}`);
  assert(log.includes(`port ${port}`), `message does not name the port: ${log.slice(-300)}`);
});

await testCase('server_conflicting_content_length_400', async () => {
  const c = await connect();
  c.sock.write('POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n' +
               `Authorization: Bearer ${KEY}\r\nContent-Length: 5\r\nContent-Length: 50\r\n\r\n{"a":1}`);
  await within(c.closed, 5000, 'conflicting Content-Length');
  assert(/^HTTP\/1\.1 400/.test(c.data) && /conflicting Content-Length/.test(c.data), `got: ${c.data.slice(0, 200)}`);
});

await testCase('server_oversized_prompts_stop_counting_and_health_answers', async () => {
  // Before: every prompt was tokenized to the end (500k one-character messages: ~0.9 GB
  // and 7.6 s each, all at once). Now tokenization stops a few times past the input limit
  // and at most two requests are prepared at once; /health answers meanwhile.
  const messages = Array.from({ length: 30000 }, (_, i) => ({ role: i % 2 ? 'assistant' : 'user', content: 'x' }));
  const auth = { authorization: `Bearer ${KEY}` };
  const big = () => http(`${server.url}/v1/chat/completions`, { body: { messages, max_tokens: 4 }, headers: auth });
  const pending = [big(), big(), big(), big()];
  const h = await within(http(`${server.url}/health`, { method: 'GET', headers: auth }), 20000, '/health during big requests');
  assert(h.status === 200, `health ${h.status}`);
  for (const r of await within(Promise.all(pending), 120000, 'oversized requests')) {
    assert(r.status === 400 && r.json.error.code === 'context_length_exceeded' &&
      /counting stopped there/.test(r.json.error.message), `${r.status} ${r.text.slice(0, 300)}`);
    const n = Number(/prompt has (\d+) tokens/.exec(r.json.error.message)[1]);
    assert(n > 4096 && n < 4 * 4096 + 64, `counted ${n} tokens for a prompt of ~150k`);
  }
  const ok = await http(`${server.url}/v1/chat/completions`, { body: { messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 }, headers: auth });
  assert(ok.status === 200, `normal request after: ${ok.status} ${ok.text.slice(0, 200)}`);
});

await testCase('server_template_failures_are_classified', async () => {
  // Before: every render failure was a 400 blaming the client. Now the template's own
  // refusal (raise_exception) is a 400, input past a render limit a 413, and a failure of
  // the template itself a 500 -- the server's fault, without local paths.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lazymoe-tpl-'));
  let srv;
  try {
    for (const f of fs.readdirSync(SERVER_MODEL))
      if (f !== 'chat_template.jinja') fs.symlinkSync(path.join(SERVER_MODEL, f), path.join(dir, f));
    fs.writeFileSync(path.join(dir, 'chat_template.jinja'),
      "{%- for m in messages -%}{%- if m.role == 'system' -%}{{ raise_exception('no system messages') }}{%- endif -%}" +
      "{%- if m.content == 'boom' -%}{{ m.nothing.deeper }}{%- endif -%}" +
      "{%- if m.content == 'big' -%}{%- for i in range(100000000) -%}x{%- endfor -%}{%- endif -%}" +
      "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endfor -%}" +
      "{%- if add_generation_prompt -%}<|im_start|>assistant\n{%- endif -%}");
    srv = await startServer([], {}, dir);
    const ask = (messages) => http(`${srv.url}/v1/chat/completions`, { body: { messages, max_tokens: 2 } });
    let r = await ask([{ role: 'system', content: 'x' }, { role: 'user', content: 'hi' }]);
    assert(r.status === 400 && /refuses these messages: .*no system messages/.test(r.json.error.message), `${r.status} ${r.text}`);
    r = await ask([{ role: 'user', content: 'big' }]);
    assert(r.status === 413 && /too large to render/.test(r.json.error.message), `${r.status} ${r.text}`);
    r = await ask([{ role: 'user', content: 'boom' }]);
    assert(r.status === 500 && /chat template failed/.test(r.json.error.message) && !r.text.includes(dir), `${r.status} ${r.text}`);
    r = await ask([{ role: 'user', content: 'hi' }]);
    assert(r.status === 200, `${r.status} ${r.text}`);
  } finally {
    if (srv) await srv.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

// Runs `lazymoe serve` on a model directory that must be refused: resolves with the
// exit code and log, or throws if the server starts listening.
function serveRefused(dir) {
  const proc = spawn(LAZYMOE, ['serve', dir, '--port', '0', '--ctx', '512', '--no-warm-start'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  return within(new Promise((resolve, reject) => {
    proc.stderr.on('data', (d) => {
      log += d;
      if (/listening on/.test(log)) { proc.kill('SIGKILL'); reject(new Error(`it started serving: ${log.slice(-300)}`)); }
    });
    proc.on('exit', (code) => resolve({ code, log }));
  }), 60000, 'serve').catch((e) => { proc.kill('SIGKILL'); throw e; });
}

await testCase('server_refuses_broken_chat_template', async () => {
  // Before the fix it started, said it was healthy, and answered every request 400.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lazymoe-broken-'));
  try {
    for (const f of fs.readdirSync(SERVER_MODEL))
      if (f !== 'chat_template.jinja') fs.symlinkSync(path.join(SERVER_MODEL, f), path.join(dir, f));
    fs.writeFileSync(path.join(dir, 'chat_template.jinja'), "{{ raise_exception('this template is broken') }}");
    const { code, log } = await serveRefused(dir);
    assert(code !== 0 && /chat template/.test(log) && /this template is broken/.test(log), `exit ${code}: ${log.slice(-300)}`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

await testCase('server_stops_cleanly_after_hostile_clients', async () => {
  await server.stop();
});
done();
