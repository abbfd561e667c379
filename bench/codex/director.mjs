// A pass-through proxy between Codex CLI and `lazymoe serve --allow-forced-output`
// that plays the model's decisions: the demo model cannot drive an agent, so each
// POST /v1/responses gets a `lazymoe_forced_output` chosen by how many tool results
// the conversation holds. lazymoe still renders the prompt, evaluates every token,
// parses the tool calls out of the text and streams the Responses events; Codex
// runs the calls. Usage: node director.mjs UPSTREAM_URL PORT_FILE LOG_FILE
import http from 'node:http';
import fs from 'node:fs';

const [upstream, portFile, logFile] = process.argv.slice(2);
const call = (name, param, value) =>
  `<tool_call>\n<function=${name}>\n<parameter=${param}>\n${value}\n</parameter>\n</function>\n</tool_call>`;
// Turn by turn: reasoning and a shell command, a patch through the freeform apply_patch tool, a final answer.
const TURNS = [
  '<think>\nFirst create the file with the shell.\n</think>\n\n' + call('exec_command', 'cmd', "printf 'hello from lazymoe\\n' > hello.txt && cat hello.txt"),
  call('apply_patch', 'input', '*** Begin Patch\n*** Update File: hello.txt\n@@\n-hello from lazymoe\n+hello from codex and lazymoe\n*** End Patch'),
  'Done: hello.txt was created with the shell tool and edited with apply_patch.',
];
const log = (o) => fs.appendFileSync(logFile, JSON.stringify(o) + '\n');

http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (d) => chunks.push(d));
  req.on('end', async () => {
    let body = Buffer.concat(chunks);
    const entry = { method: req.method, url: req.url };
    if (req.method === 'POST' && req.url.startsWith('/v1/responses')) {
      const j = JSON.parse(body.toString('utf8'));
      const outputs = (j.input || []).filter((it) => /_call_output$/.test(it.type || ''));
      j.lazymoe_forced_output = TURNS[Math.min(outputs.length, TURNS.length - 1)];
      Object.assign(entry, {
        turn: outputs.length, stream: j.stream, items: (j.input || []).map((it) => it.type || 'message'),
        tools: (j.tools || []).map((t) => `${t.type}:${t.name || ''}`), outputs: outputs.map((o) => o.output),
      });
      body = Buffer.from(JSON.stringify(j));
    }
    const headers = { ...req.headers, 'content-length': String(body.length) };
    delete headers.host;
    delete headers['accept-encoding'];
    const up = await fetch(upstream + req.url, { method: req.method, headers, body: req.method === 'GET' ? undefined : body });
    res.writeHead(up.status, { 'content-type': up.headers.get('content-type') || 'application/json' });
    let text = '';
    for await (const part of up.body) {
      text += Buffer.from(part).toString('utf8');
      res.write(part);
    }
    res.end();
    entry.status = up.status;
    entry.events = [...text.matchAll(/^event: (\S+)/gm)].map((m) => m[1]);
    log(entry);
  });
}).listen(0, '127.0.0.1', function () {
  fs.writeFileSync(portFile, String(this.address().port));
});
