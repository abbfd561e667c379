// The SentencePiece ids that tests/test_gguf_model.c (spm_no_byte_pieces) expects, from
// google/sentencepiece itself compiled to wasm (npm @sctg/sentencepiece-js, not a test
// dependency):
//   mkdir /tmp/spjs && cd /tmp/spjs && npm install @sctg/sentencepiece-js@1.3.3
//   NODE_PATH=/tmp/spjs/node_modules node tools/spm_reference_ids.mjs
// It writes the test's vocabulary (spm_pieces with "x", "y", "z" for the byte pieces) as a
// BPE ModelProto (sentencepiece_model.proto: pieces 1 {piece 1, score 2, type 3},
// trainer_spec 2 {model_type 3, vocab_size 4, byte_fallback 35}, normalizer_spec 3 {name 1,
// add_dummy_prefix 3, remove_extra_whitespaces 4, escape_whitespaces 5}) and prints the
// ids of each text; with --bytes the test's three byte pieces stay and byte_fallback is
// set, which SentencePiece refuses to load (not all 256 byte pieces).
import { createRequire } from 'node:module';
const require = createRequire(process.env.NODE_PATH ? `${process.env.NODE_PATH}/` : import.meta.url);
const { SentencePieceProcessor } = await import(require.resolve('@sctg/sentencepiece-js'));

const bytes = process.argv.includes('--bytes');
const varint = (n) => { const o = []; do { o.push((n & 0x7f) | (n > 0x7f ? 0x80 : 0)); n >>>= 7; } while (n); return o; };
const tag = (f, w) => varint((f << 3) | w);
const str = (f, s) => { const b = [...Buffer.from(s, 'utf8')]; return [...tag(f, 2), ...varint(b.length), ...b]; };
const f32 = (f, v) => { const b = Buffer.alloc(4); b.writeFloatLE(v); return [...tag(f, 5), ...b]; };
const int = (f, v) => [...tag(f, 0), ...varint(v)];
const msg = (f, b) => [...tag(f, 2), ...varint(b.length), ...b];
const pieces = [['<unk>', 0, 2], ['<s>', 0, 3], ['</s>', 0, 3],
  ...(bytes ? [['<0x41>', 0, 6], ['<0xC3>', 0, 6], ['<0xA9>', 0, 6]] : [['x', -9, 1], ['y', -9, 1], ['z', -9, 1]]),
  ['\u2581', -1, 1], ['a', -2, 1], ['b', -2, 1], ['ab', -5, 1], ['ba', -5, 1], ['\u2581a', -3, 1]];
const proto = [
  ...pieces.flatMap(([p, s, t]) => msg(1, [...str(1, p), ...f32(2, s), ...int(3, t)])),
  ...msg(2, [...int(3, 2), ...int(4, pieces.length), ...(bytes ? int(35, 1) : [])]),
  ...msg(3, [...str(1, 'identity'), ...int(3, 1), ...int(4, 0), ...int(5, 1)]),
];
const sp = new SentencePieceProcessor();
await sp.loadFromB64StringModel(Buffer.from(proto).toString('base64'));
if (!sp.encodeIds('abab').length) {
  console.log('SentencePiece refused the model (its encoder gives nothing)');
  process.exit(0);
}
const texts = ['abab', 'A\u00e9\u20ac', 'A a\u20ac\u20acb', 'x\u20acy\u00e9\u00e9 a', 'A\u00e9 \u20ac', ' ',
  'a' + '\u20ac'.repeat(5000) + 'b'];
for (const t of texts) console.log(JSON.stringify(t.length > 40 ? `${t.slice(0, 12)}...` : t), JSON.stringify(sp.encodeIds(t)));
