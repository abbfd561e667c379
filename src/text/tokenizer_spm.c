/* SentencePiece ("llama") vocabularies from GGUF files, encoded and decoded the way
 * llama.cpp does (llama-vocab.cpp: llm_tokenizer_spm_session, token_to_piece,
 * detokenize), which is what a GGUF file's tokenizer means to the programs that use it.
 *
 * A GGUF file keeps no merge list for these vocabularies, only each piece's score. The
 * text of a section (between added tokens) gets a leading space when add_space_prefix
 * says so and the section starts the text or follows an added token, then every space
 * becomes U+2581 ("▁"). Encoding starts from the text's characters and repeatedly merges
 * the adjacent pair whose concatenation is the highest-scoring piece of the vocabulary
 * (equal scores: the leftmost pair first); a final symbol that is no piece (only a single
 * character can be one) becomes its bytes as <0xNN> pieces, or the byte as a piece of its
 * own, or the unknown token; in a vocabulary without <0xNN> pieces a run of such
 * characters becomes one unknown token (below). Every piece of the vocabulary takes part, whatever its type
 * (llama.cpp's text_to_token); where two ids spell the same piece the later one wins.
 * A long section is encoded in chunks of about 4 KB cut where no piece spans the cut (so
 * the ids are the whole section's), and encoding stops once the caller's limit on ids is
 * passed, as the BPE tokenizer stops between words.
 *
 * Decoding maps each id by its token type: normal pieces with "▁" back to spaces, byte
 * pieces to their byte, user-defined ones as written, control and unknown ones as written
 * unless special tokens are skipped, unused ones to nothing; with add_space_prefix the
 * first piece of the text loses one leading space.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "text/tokenizer_internal.h"

struct tb_spm {
    tb_strmap vocab;   /* piece -> id */
    float *score;      /* [n] */
    uint8_t *type;     /* [n] GGUF token types (1 normal ... 6 byte) */
    int32_t n;
    int32_t unk_id;    /* -1: none */
    int byte_pieces;   /* some <0xNN> piece is there: SentencePiece's byte_fallback */
    int add_space_prefix;
    size_t max_piece;  /* bytes of the longest piece */
};

enum { TYPE_NORMAL = 1, TYPE_UNKNOWN = 2, TYPE_CONTROL = 3, TYPE_USER = 4, TYPE_UNUSED = 5, TYPE_BYTE = 6 };

int tb_spm_parse(json_t *model, lm_tokenizer *tok, tb_spm **out, char *err) {
    *out = NULL;
    json_t *vocab = json_object_get(model, "vocab"), *types = json_object_get(model, "token_types");
    if (!json_is_array(vocab) || !json_array_size(vocab))
        return lm_errf(err, "SentencePiece model: \"vocab\" must be a non-empty array of [piece, score]");
    size_t n = json_array_size(vocab);
    if (n > INT32_MAX / 2) return lm_errf(err, "SentencePiece model: too many pieces");
    if (types && (!json_is_array(types) || json_array_size(types) != n))
        return lm_errf(err, "SentencePiece model: \"token_types\" must list one type per piece");
    tb_spm *m = calloc(1, sizeof *m);
    if (!m) return lm_errf(err, "out of memory");
    m->n = (int32_t)n;
    m->score = malloc(sizeof(float) * n);
    m->type = malloc(n);
    if (!m->score || !m->type) goto oom;
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(vocab, i), *p = json_array_get(e, 0), *s = json_array_get(e, 1);
        if (!json_is_string(p) || !json_is_number(s)) {
            lm_errf(err, "SentencePiece model: vocab[%zu] is not [piece, score]", i);
            goto fail;
        }
        m->score[i] = (float)json_number_value(s);
        if (json_string_length(p) > m->max_piece) m->max_piece = json_string_length(p);
        m->type[i] = types ? (uint8_t)json_integer_value(json_array_get(types, i)) : TYPE_NORMAL;
        if (tb_strmap_put(&m->vocab, json_string_value(p), json_string_length(p), (int32_t)i) ||
            tb_set_token(tok, (int32_t)i, json_string_value(p), json_string_length(p)))
            goto oom;
    }
    json_t *unk = json_object_get(model, "unk_id");
    m->unk_id = json_is_integer(unk) && json_integer_value(unk) >= 0 && json_integer_value(unk) < (json_int_t)n
                    ? (int32_t)json_integer_value(unk)
                    : -1;
    for (int b = 0; b < 256 && !m->byte_pieces; b++) {
        char piece[8];
        snprintf(piece, sizeof piece, "<0x%02X>", b);
        m->byte_pieces = tb_strmap_get(&m->vocab, piece, 6, -1) >= 0;
    }
    m->add_space_prefix = !json_is_false(json_object_get(model, "add_space_prefix"));
    *out = m;
    return 0;
oom:
    lm_errf(err, "out of memory");
fail:
    tb_spm_free(m);
    return -1;
}

void tb_spm_free(tb_spm *m) {
    if (!m) return;
    tb_strmap_free(&m->vocab);
    free(m->score);
    free(m->type);
    free(m);
}

int32_t tb_spm_vocab_id(const tb_spm *m, const char *s, size_t len) { return tb_strmap_get(&m->vocab, s, len, -1); }

int tb_spm_add_space_prefix(const tb_spm *m) { return m->add_space_prefix; }

/* ---- encoding ---- */

typedef struct {
    size_t off, n;   /* bytes of the text; n == 0 once merged into the left neighbour */
    int prev, next;  /* neighbours, -1 at the ends */
} symbol;

typedef struct {
    int left, right;
    float score;
    size_t size;
} bigram;

/* a comes out of the queue before b: higher score, then the leftmost */
static int before(const bigram *a, const bigram *b) {
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

typedef struct {
    bigram *v;
    size_t n, cap;
} heap;

static int heap_push(heap *h, bigram b) {
    if (LM_GROW(h->v, h->cap, h->n + 1) != 0) return -1;
    size_t i = h->n++;
    while (i && before(&b, &h->v[(i - 1) / 2])) {
        h->v[i] = h->v[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h->v[i] = b;
    return 0;
}

static bigram heap_pop(heap *h) {
    bigram top = h->v[0], last = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n) break;
        if (c + 1 < h->n && before(&h->v[c + 1], &h->v[c])) c++;
        if (!before(&h->v[c], &last)) break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (h->n) h->v[i] = last;
    return top;
}

typedef struct {
    const tb_spm *m;
    const char *text;
    symbol *sym;
    heap q;
    int unk_run; /* the last id of the section is the unknown token of characters without pieces */
} session;

static int try_bigram(session *s, int left, int right) {
    if (left < 0 || right < 0) return 0;
    size_t size = s->sym[left].n + s->sym[right].n;
    int32_t id = tb_strmap_get(&s->m->vocab, s->text + s->sym[left].off, size, -1);
    if (id < 0) return 0;
    return heap_push(&s->q, (bigram){left, right, s->m->score[id], size});
}

static int push_id(int32_t id, int32_t **ids, size_t *n, size_t *cap) {
    if (LM_GROW(*ids, *cap, *n + 1) != 0) return -1;
    (*ids)[(*n)++] = id;
    return 0;
}

/* The id of byte b: its <0xNN> piece, else the byte as a piece, else unknown.
 *
 * A byte whose <0xNN> piece is missing from a vocabulary that has others: llama.cpp
 * (byte_to_token) throws std::out_of_range from the tokenize call; SentencePiece refuses
 * to load such a model at all ("there are not 256 byte pieces although `byte_fallback` is
 * true", model_interface.cc), and its encoder, were it loaded, would map each byte of a
 * character without a piece through PieceToId, which answers the unknown id for a missing
 * piece (sentencepiece_processor.cc, PopulateSentencePieceText). That is what this does:
 * the unknown id per such byte, an error only when there is no unknown token either. A
 * vocabulary with no <0xNN> piece at all is a SentencePiece model without byte_fallback
 * (its loader refuses byte pieces without it), encoded in encode_chunk as SentencePiece
 * encodes one. */
static int32_t byte_id(const tb_spm *m, unsigned char b) {
    char buf[8];
    snprintf(buf, sizeof buf, "<0x%02X>", b);
    int32_t id = tb_strmap_get(&m->vocab, buf, 6, -1);
    if (id < 0) id = tb_strmap_get(&m->vocab, (const char *)&b, 1, -1);
    return id >= 0 ? id : m->unk_id;
}

/* Length of the UTF-8 sequence led by byte c as llama.cpp counts it (by its high bits). */
static size_t utf8_len(unsigned char c) {
    static const size_t lookup[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return lookup[c >> 4];
}

/* Encodes t[lo, hi), a chunk of a section that no piece spans the ends of, appending
 * ids while *n <= max_ids. sym holds hi - lo symbols. */
static int encode_chunk(session *ss, size_t lo, size_t hi, size_t max_ids, int32_t **ids, size_t *n, size_t *cap,
                        char *err) {
    const tb_spm *m = ss->m;
    const char *t = ss->text;
    ss->q.n = 0;
    int count = 0;
    for (size_t off = lo; off < hi; count++) {
        size_t k = utf8_len((unsigned char)t[off]);
        if (k > hi - off) k = hi - off;
        ss->sym[count] = (symbol){off, k, count - 1, off + k == hi ? -1 : count + 1};
        off += k;
    }
    for (int i = 1; i < count; i++)
        if (try_bigram(ss, i - 1, i)) return lm_errf(err, "out of memory");
    while (ss->q.n) {
        bigram b = heap_pop(&ss->q);
        symbol *l = &ss->sym[b.left], *r = &ss->sym[b.right];
        /* a pair one of whose symbols has changed since it was queued */
        if (!l->n || !r->n || l->n + r->n != b.size) continue;
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) ss->sym[r->next].prev = b.left;
        if (try_bigram(ss, l->prev, b.left) || try_bigram(ss, b.left, l->next)) return lm_errf(err, "out of memory");
    }
    /* Every merged symbol is a piece (pairs are queued only when they are); a single
     * character that is not becomes bytes. Without byte pieces (SentencePiece without
     * byte_fallback) it is unknown, and so is a run of such characters, once: SentencePiece
     * merges consecutive unknown pieces into one (PopulateSentencePieceText), where
     * llama.cpp throws (no <0xNN> piece to fall back on). */
    for (int i = 0; count && i != -1 && *n <= max_ids; i = ss->sym[i].next) {
        const symbol *y = &ss->sym[i];
        int32_t id = tb_strmap_get(&m->vocab, t + y->off, y->n, -1);
        if (id >= 0) {
            if (push_id(id, ids, n, cap)) return lm_errf(err, "out of memory");
            ss->unk_run = 0;
            continue;
        }
        if (!m->byte_pieces) {
            if (m->unk_id < 0)
                return lm_errf(err, "the vocabulary has no piece for \"%.*s\" (no byte pieces, no unknown token)",
                               (int)y->n, t + y->off);
            if (!ss->unk_run && push_id(m->unk_id, ids, n, cap)) return lm_errf(err, "out of memory");
            ss->unk_run = 1;
            continue;
        }
        for (size_t j = 0; j < y->n && *n <= max_ids; j++) {
            int32_t bid = byte_id(m, (unsigned char)t[y->off + j]);
            if (bid < 0)
                return lm_errf(err, "the vocabulary has no piece for byte 0x%02X (no <0x%02X>, no unknown token)",
                               (unsigned char)t[y->off + j], (unsigned char)t[y->off + j]);
            if (push_id(bid, ids, n, cap)) return lm_errf(err, "out of memory");
        }
    }
    return 0;
}

/* Whether a piece of the vocabulary spans byte c of t[lo, len) (lo: a cut no piece
 * spans). If none does, no pair across c is ever queued, so the merges on either side
 * never meet, and t[lo, c) and t[c, len) encode apart to the ids they encode to
 * together. */
static int piece_spans(const tb_spm *m, const char *t, size_t lo, size_t c, size_t len) {
    for (size_t s = c - lo >= m->max_piece ? c - m->max_piece + 1 : lo; s < c; s++)
        for (size_t e = c + 1; e <= len && e - s <= m->max_piece; e++)
            if (tb_strmap_get(&m->vocab, t + s, e - s, -1) >= 0) return 1;
    return 0;
}

/* A cut costs up to max_piece^2 / 2 lookups of up to max_piece bytes to check: texts are
 * cut only with vocabularies whose pieces are at most MAX_CUT_PIECE bytes (SentencePiece's
 * default limit is 16 characters; LLaMA's longest piece is 48 bytes), others encoded
 * whole, so that a vocabulary with a huge piece cannot make cutting the costly part. */
enum { CHUNK = 4096, CUT_TRIES = 16, MAX_CUT_PIECE = 64 };

/* The end of the chunk from lo: the first character boundary at or past lo + CHUNK that
 * no piece spans, else the end of the text. CUT_TRIES boundaries are tried from there,
 * then as many from twice as far, and so on. */
static size_t next_cut(const tb_spm *m, const char *t, size_t lo, size_t len) {
    size_t c = lo, want = CHUNK;
    if (m->max_piece > MAX_CUT_PIECE) return len;
    while (c < len) {
        while (c < len && c - lo < want) c += utf8_len((unsigned char)t[c]);
        for (int k = 0; k < CUT_TRIES && c < len; k++, c += utf8_len((unsigned char)t[c]))
            if (!piece_spans(m, t, lo, c, len)) return c;
        want = 2 * (c - lo);
    }
    return len;
}

int tb_spm_encode(const tb_spm *m, const char *s, size_t len, int prefix_space, size_t max_ids, int32_t **ids,
                  size_t *n, size_t *cap, char *err) {
    static const char space[] = "\xE2\x96\x81";
    lm_strbuf t = {0};
    int rc = -1;
    session ss = {m, NULL, NULL, {0}, 0};
    size_t sym_cap = 0;
    if (prefix_space && lm_strbuf_append(&t, space, 3)) goto oom;
    for (size_t i = 0; i < len; i++)
        if (s[i] == ' ' ? lm_strbuf_append(&t, space, 3) : lm_strbuf_append(&t, s + i, 1)) goto oom;
    ss.text = t.data;
    /* chunk by chunk (each as if it were the whole text), so that a text past the limit
     * costs about the limit */
    for (size_t lo = 0, hi; lo < t.len && *n <= max_ids; lo = hi) {
        hi = next_cut(m, t.data, lo, t.len);
        if (hi - lo > sym_cap) {
            free(ss.sym);
            sym_cap = hi - lo;
            if (!(ss.sym = malloc(sizeof(symbol) * sym_cap))) goto oom;
        }
        if (encode_chunk(&ss, lo, hi, max_ids, ids, n, cap, err)) goto done;
    }
    rc = 0;
    goto done;
oom:
    lm_errf(err, "out of memory");
done:
    free(ss.sym);
    free(ss.q.v);
    lm_strbuf_free(&t);
    return rc;
}

/* ---- decoding ---- */

int tb_spm_decode(const tb_spm *m, const lm_tokenizer *tok, const int32_t *ids, size_t n, int skip_special,
                  int at_start, lm_strbuf *out) {
    int strip = at_start && m->add_space_prefix;
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= m->n || (size_t)id >= tok->n_ids || tok->id_len[id] == UINT32_MAX) continue;
        const char *p = tok->id_text.data + tok->id_off[id];
        size_t len = tok->id_len[id];
        int type = m->type[id], lstrip = strip;
        strip = 0; /* only the text's first piece, as llama.cpp's detokenize */
        lm_strbuf piece = {0};
        int rc = 0;
        if (type == TYPE_CONTROL || type == TYPE_UNKNOWN) {
            if (!skip_special) rc = lm_strbuf_append(&piece, p, len);
        } else if (type == TYPE_USER) {
            rc = lm_strbuf_append(&piece, p, len);
        } else if (type == TYPE_BYTE) {
            unsigned v = 0;
            char c = 0;
            if (len == 6 && sscanf(p, "<0x%2X>", &v) == 1) c = (char)v;
            rc = lm_strbuf_append(&piece, &c, 1);
        } else if (type == TYPE_NORMAL) {
            for (size_t k = 0; !rc && k < len; k++) {
                if (k + 3 <= len && !memcmp(p + k, "\xE2\x96\x81", 3)) {
                    rc = lm_strbuf_append(&piece, " ", 1);
                    k += 2;
                } else {
                    rc = lm_strbuf_append(&piece, p + k, 1);
                }
            }
        } /* unused and unknown types: nothing */
        size_t skip = lstrip && piece.len && piece.data[0] == ' ' ? 1 : 0;
        if (!rc && piece.len > skip) rc = lm_strbuf_append(out, piece.data + skip, piece.len - skip);
        lm_strbuf_free(&piece);
        if (rc) return -1;
    }
    return 0;
}
