/* Decoders (ids -> text) and the streaming detokenizer.
 *
 * Decoding turns ids into token strings, then runs the tokenizer.json decoder chain over
 * the list of strings as the reference does: ByteLevel (printable code points back to raw
 * bytes; added tokens pass through verbatim, as in transformers.js), ByteFallback
 * ("<0xNN>" -> byte), Metaspace ("▁" -> " ", leading space of the text dropped), Fuse,
 * Strip, Replace, Sequence. Strings are carried as raw bytes, so a character split over
 * several tokens is reassembled before anything checks UTF-8; invalid bytes are replaced
 * by U+FFFD only at the end (lm_text_to_valid_utf8), with the same result as the
 * reference's per-step TextDecoder calls.
 *
 * The streaming detokenizer decodes one id at a time with the same chain; "at_start" tells
 * the chain whether this id begins the text, which is the only context the supported
 * decoders use (Metaspace and Strip remove a leading space only there).
 */
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/str.h"
#include "text/tokenizer_internal.h"
#include "text/unicode.h"

enum { D_SEQ, D_BYTELEVEL, D_BYTEFALLBACK, D_METASPACE, D_FUSE, D_STRIP, D_REPLACE };

struct tb_decoder {
    int type;
    tb_decoder **kids;      /* D_SEQ */
    size_t n_kids;
    char *text;             /* D_METASPACE replacement; D_STRIP content; D_REPLACE content */
    size_t text_len;
    int start, stop;        /* D_STRIP */
    pcre2_code *re;         /* D_REPLACE */
};

static char *dup_str(const char *s, size_t n) {
    char *p = malloc(n + 1);
    if (p) { memcpy(p, s, n); p[n] = 0; }
    return p;
}

int tb_decoder_parse(json_t *j, tb_decoder **out, char *err) {
    *out = NULL;
    if (!j || json_is_null(j)) return 0;
    const char *type = json_string_value(json_object_get(j, "type"));
    if (!type) return lm_errf(err, "decoder: missing \"type\"");
    tb_decoder *d = calloc(1, sizeof *d);
    if (!d) return lm_errf(err, "out of memory");
    if (!strcmp(type, "Sequence")) {
        d->type = D_SEQ;
        json_t *arr = json_object_get(j, "decoders");
        if (!json_is_array(arr)) { lm_errf(err, "decoder Sequence: \"decoders\" must be an array"); goto fail; }
        d->kids = calloc(json_array_size(arr) + 1, sizeof *d->kids);
        if (!d->kids) { lm_errf(err, "out of memory"); goto fail; }
        for (size_t i = 0; i < json_array_size(arr); i++) {
            if (tb_decoder_parse(json_array_get(arr, i), &d->kids[d->n_kids], err)) goto fail;
            if (d->kids[d->n_kids]) d->n_kids++;
        }
    } else if (!strcmp(type, "ByteLevel")) {
        d->type = D_BYTELEVEL;
    } else if (!strcmp(type, "ByteFallback")) {
        d->type = D_BYTEFALLBACK;
    } else if (!strcmp(type, "Fuse")) {
        d->type = D_FUSE;
    } else if (!strcmp(type, "Metaspace")) {
        d->type = D_METASPACE;
        json_t *r = json_object_get(j, "replacement");
        const char *rs = json_is_string(r) && json_string_length(r) ? json_string_value(r) : "\xE2\x96\x81";
        d->text_len = strlen(rs);
        if (!(d->text = dup_str(rs, d->text_len))) { lm_errf(err, "out of memory"); goto fail; }
    } else if (!strcmp(type, "Strip")) {
        d->type = D_STRIP;
        json_t *c = json_object_get(j, "content");
        const char *cs = json_is_string(c) ? json_string_value(c) : " ";
        d->text_len = strlen(cs);
        if (!(d->text = dup_str(cs, d->text_len))) { lm_errf(err, "out of memory"); goto fail; }
        json_t *st = json_object_get(j, "start"), *sp = json_object_get(j, "stop");
        d->start = json_is_integer(st) ? (int)json_integer_value(st) : 0;
        d->stop = json_is_integer(sp) ? (int)json_integer_value(sp) : 0;
        if (d->start < 0 || d->stop < 0 || !d->text_len) { lm_errf(err, "decoder Strip: bad start/stop/content"); goto fail; }
    } else if (!strcmp(type, "Replace")) {
        d->type = D_REPLACE;
        json_t *c = json_object_get(j, "content"), *pat = json_object_get(j, "pattern");
        if (!json_is_string(c)) { lm_errf(err, "decoder Replace: \"content\" must be a string"); goto fail; }
        d->text_len = json_string_length(c);
        if (!(d->text = dup_str(json_string_value(c), d->text_len))) { lm_errf(err, "out of memory"); goto fail; }
        json_t *ps = json_object_get(pat, "String"), *pr = json_object_get(pat, "Regex");
        if (json_is_string(ps)) d->re = tb_regex_compile(json_string_value(ps), json_string_length(ps), 1, err);
        else if (json_is_string(pr)) d->re = tb_regex_compile(json_string_value(pr), json_string_length(pr), 0, err);
        else lm_errf(err, "decoder Replace: \"pattern\" must be {\"String\"|\"Regex\": ...}");
        if (!d->re) goto fail;
    } else {
        lm_errf(err, "unsupported decoder type \"%.40s\"", type);
        goto fail;
    }
    *out = d;
    return 0;
fail:
    tb_decoder_free(d);
    return -1;
}

void tb_decoder_free(tb_decoder *d) {
    if (!d) return;
    for (size_t i = 0; i < d->n_kids; i++) tb_decoder_free(d->kids[i]);
    free(d->kids);
    free(d->text);
    if (d->re) pcre2_code_free(d->re);
    free(d);
}

/* Chain state passed along the decoders. */
typedef struct { int at_start; int fused; } chain_ctx;

static int is_byte_token(const char *t, size_t n, unsigned char *byte) {
    if (n != 6 || memcmp(t, "<0x", 3) != 0 || t[5] != '>') return 0;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        int h = lm_hex_digit(t[i]);
        if (h < 0) return 0;
        v = v * 16 + h;
    }
    *byte = (unsigned char)v;
    return 1;
}

static int replace_all(const pcre2_code *re, const char *s, size_t len, const char *rep,
                       size_t rep_len, lm_strbuf *out) {
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    if (!md) return -1;
    size_t pos = 0, from = 0;
    int rc = 0;
    while (from <= len) {
        int m = pcre2_match(re, (PCRE2_SPTR)s, len, from, PCRE2_NO_UTF_CHECK, md, NULL);
        if (m < 0) break;  /* no match (or a match error: keep the rest as is) */
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        if (ov[1] == ov[0]) { from = ov[0] + 1; continue; }
        if (lm_strbuf_append(out, s + pos, ov[0] - pos) || lm_strbuf_append(out, rep, rep_len)) { rc = -1; break; }
        pos = from = ov[1];
    }
    if (!rc && lm_strbuf_append(out, s + pos, len - pos)) rc = -1;
    pcre2_match_data_free(md);
    return rc;
}

/* Runs decoder d over in, producing out. */
static int run_decoder(const tb_decoder *d, tb_pieces *in, tb_pieces *out, chain_ctx *ctx) {
    lm_strbuf b = {0};
    int rc = 0;
    switch (d->type) {
    case D_SEQ: {
        tb_pieces cur = *in, tmp = {0};
        memset(in, 0, sizeof *in);  /* cur now owns in's storage */
        for (size_t k = 0; !rc && k < d->n_kids; k++) {
            tb_pieces_clear(&tmp);
            rc = run_decoder(d->kids[k], &cur, &tmp, ctx);
            tb_pieces t = cur; cur = tmp; tmp = t;
        }
        for (size_t i = 0; !rc && i < cur.n; i++) rc = tb_pieces_add(out, TB_PIECE(&cur, i), cur.len[i], cur.flag[i]);
        *in = cur;  /* hand storage back so the caller frees it */
        tb_pieces_free(&tmp);
        return rc;
    }
    case D_BYTELEVEL:
        for (size_t i = 0; !rc && i < in->n; i++) {
            const unsigned char *t = (const unsigned char *)TB_PIECE(in, i);
            size_t n = in->len[i];
            if (in->flag[i] > 0) { rc = tb_pieces_add(out, (const char *)t, n, in->flag[i]); continue; }
            b.len = 0;
            for (size_t j = 0; !rc && j < n;) {
                uint32_t cp;
                size_t k = lm_utf8_next(t + j, n - j, &cp);
                if (!k) { rc = lm_strbuf_append(&b, t + j, 1); j++; continue; }
                int byte = tb_cp_to_byte(cp);
                if (byte >= 0) { char c = (char)byte; rc = lm_strbuf_append(&b, &c, 1); }
                else rc = lm_strbuf_append(&b, t + j, k);
                j += k;
            }
            if (!rc) rc = tb_pieces_add(out, b.data ? b.data : "", b.len, 0);
        }
        break;
    case D_BYTEFALLBACK: {
        int in_bytes = 0;
        for (size_t i = 0; !rc && i < in->n; i++) {
            unsigned char byte;
            if (is_byte_token(TB_PIECE(in, i), in->len[i], &byte)) {
                rc = lm_strbuf_append(&b, &byte, 1);
                in_bytes = 1;
                continue;
            }
            if (in_bytes) { rc = tb_pieces_add(out, b.data, b.len, 0); b.len = 0; in_bytes = 0; }
            if (!rc) rc = tb_pieces_add(out, TB_PIECE(in, i), in->len[i], in->flag[i]);
        }
        if (!rc && in_bytes) rc = tb_pieces_add(out, b.data, b.len, 0);
        break;
    }
    case D_METASPACE:
        for (size_t i = 0; !rc && i < in->n; i++) {
            const char *t = TB_PIECE(in, i);
            size_t n = in->len[i];
            b.len = 0;
            for (size_t j = 0; !rc && j < n;) {
                if (j + d->text_len <= n && !memcmp(t + j, d->text, d->text_len)) { rc = lm_strbuf_append(&b, " ", 1); j += d->text_len; }
                else { rc = lm_strbuf_append(&b, t + j, 1); j++; }
            }
            size_t skip = i == 0 && ctx->at_start && b.len && b.data[0] == ' ' ? 1 : 0;
            if (!rc) rc = tb_pieces_add(out, b.data ? b.data + skip : "", b.len - skip, in->flag[i]);
        }
        break;
    case D_FUSE:
        for (size_t i = 0; !rc && i < in->n; i++) rc = lm_strbuf_append(&b, TB_PIECE(in, i), in->len[i]);
        if (!rc) rc = tb_pieces_add(out, b.data ? b.data : "", b.len, 0);
        ctx->fused = 1;
        break;
    case D_STRIP:
        for (size_t i = 0; !rc && i < in->n; i++) {
            const char *t = TB_PIECE(in, i);
            size_t s = 0, e = in->len[i];
            /* After Fuse the single piece is the whole text: its start is only the text's
             * start when this call began the text. */
            int strip_start = !ctx->fused || ctx->at_start;
            for (int k = 0; strip_start && k < d->start && s + d->text_len <= e && !memcmp(t + s, d->text, d->text_len); k++)
                s += d->text_len;
            for (int k = 0; k < d->stop && e >= s + d->text_len && !memcmp(t + e - d->text_len, d->text, d->text_len); k++)
                e -= d->text_len;
            rc = tb_pieces_add(out, t + s, e - s, in->flag[i]);
        }
        break;
    case D_REPLACE:
        for (size_t i = 0; !rc && i < in->n; i++) {
            b.len = 0;
            rc = replace_all(d->re, TB_PIECE(in, i), in->len[i], d->text, d->text_len, &b);
            if (!rc) rc = tb_pieces_add(out, b.data ? b.data : "", b.len, in->flag[i]);
        }
        break;
    }
    lm_strbuf_free(&b);
    return rc;
}

int tb_decode_ids(const lm_tokenizer *tok, const int32_t *ids, size_t n, int flags,
                  int at_start, lm_strbuf *out, char *err) {
    if (tok->spm)
        return tb_spm_decode(tok->spm, tok, ids, n, (flags & LM_DECODE_SKIP_SPECIAL) != 0, at_start, out)
                   ? lm_errf(err, "out of memory")
                   : 0;
    tb_pieces list = {0}, res = {0};
    int rc = 0;
    for (size_t i = 0; !rc && i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || (size_t)id >= tok->n_ids || tok->id_len[id] == UINT32_MAX) continue;
        if ((flags & LM_DECODE_SKIP_SPECIAL) && tok->id_is_special[id]) continue;
        rc = tb_pieces_add(&list, tok->id_text.data + tok->id_off[id], tok->id_len[id], tok->id_is_added[id] ? 1 : 0);
    }
    if (!rc && list.n) {
        if (tok->decoder) {
            chain_ctx ctx = {at_start, 0};
            rc = run_decoder(tok->decoder, &list, &res, &ctx);
            for (size_t i = 0; !rc && i < res.n; i++) rc = lm_strbuf_append(out, TB_PIECE(&res, i), res.len[i]);
        } else {
            for (size_t i = 0; !rc && i < list.n; i++)
                rc = (i && lm_strbuf_append(out, " ", 1)) || lm_strbuf_append(out, TB_PIECE(&list, i), list.len[i]);
        }
    }
    tb_pieces_free(&list);
    tb_pieces_free(&res);
    return rc ? lm_errf(err, "out of memory") : 0;
}

/* transformers' clean_up_tokenization: drop the space before . ? ! , and English
 * contractions, in this order. */
static void cleanup_spaces(lm_strbuf *b) {
    static const char *const from[] = {" .", " ?", " !", " ,", " ' ", " n't", " 'm", " 's", " 've", " 're"};
    static const char *const to[] = {".", "?", "!", ",", "'", "n't", "'m", "'s", "'ve", "'re"};
    for (size_t r = 0; r < sizeof from / sizeof *from; r++) {
        size_t fl = strlen(from[r]), tl = strlen(to[r]), w = 0;
        for (size_t i = 0; i < b->len;) {
            if (i + fl <= b->len && !memcmp(b->data + i, from[r], fl)) {
                memmove(b->data + w, to[r], tl);  /* tl < fl, so w + tl <= i */
                w += tl;
                i += fl;
            } else b->data[w++] = b->data[i++];
        }
        b->len = w;
        if (b->data) b->data[w] = 0;
    }
}

int lm_tokenizer_decode(const lm_tokenizer *tok, const int32_t *ids, size_t n_ids, int flags,
                        char **out, size_t *out_len, char err[LM_ERR_LEN]) {
    lm_strbuf b = {0};
    if (tb_decode_ids(tok, ids, n_ids, flags, 1, &b, err)) { lm_strbuf_free(&b); return -1; }
    if (flags & LM_DECODE_CLEANUP) cleanup_spaces(&b);
    if (!b.data && lm_strbuf_append(&b, "", 0)) return lm_errf(err, "out of memory");
    *out = b.data;
    *out_len = b.len;
    return 0;
}

int lm_text_to_valid_utf8(const char *bytes, size_t len, char **out, size_t *out_len,
                          char err[LM_ERR_LEN]) {
    if (lm_utf8_sanitize(bytes, len, out, out_len)) return lm_errf(err, "out of memory");
    return 0;
}

/* ---- streaming ---------------------------------------------------------------------- */

struct lm_detok {
    const lm_tokenizer *tok;
    int flags;
    int started;     /* a token has gone through the decoder chain */
    lm_strbuf pending;  /* decoded bytes not yet returned (an unfinished character) */
    lm_strbuf out;      /* text returned by the last call */
};

int lm_detok_new(const lm_tokenizer *tok, int flags, lm_detok **out, char err[LM_ERR_LEN]) {
    lm_detok *d = calloc(1, sizeof *d);
    if (!d) return lm_errf(err, "out of memory");
    d->tok = tok;
    d->flags = flags & LM_DECODE_SKIP_SPECIAL;
    *out = d;
    return 0;
}

void lm_detok_free(lm_detok *d) {
    if (!d) return;
    lm_strbuf_free(&d->pending);
    lm_strbuf_free(&d->out);
    free(d);
}

/* Moves the complete part of pending into out; with final, the rest too (as U+FFFD). */
static int drain(lm_detok *d, int final) {
    const unsigned char *p = (const unsigned char *)d->pending.data;
    size_t n = d->pending.len, i = 0;
    d->out.len = 0;
    while (i < n) {
        uint32_t cp;
        size_t k = lm_utf8_next(p + i, n - i, &cp);
        if (k) { if (lm_strbuf_append(&d->out, p + i, k)) return -1; i += k; continue; }
        int incomplete;
        size_t run = lm_utf8_bad_run(p + i, n - i, &incomplete);
        if (incomplete && !final) break;  /* wait for the rest of the character */
        if (lm_strbuf_append(&d->out, "\xEF\xBF\xBD", 3)) return -1;
        i += run;
    }
    if (n > i) memmove(d->pending.data, p + i, n - i);
    d->pending.len = n - i;
    if (!d->out.data && lm_strbuf_append(&d->out, "", 0)) return -1;
    d->out.data[d->out.len] = 0;
    return 0;
}

int lm_detok_push(lm_detok *d, int32_t id, const char **text, size_t *len, char err[LM_ERR_LEN]) {
    const lm_tokenizer *tok = d->tok;
    int used = id >= 0 && (size_t)id < tok->n_ids && tok->id_len[id] != UINT32_MAX &&
               !((d->flags & LM_DECODE_SKIP_SPECIAL) && tok->id_is_special[id]);
    if (used) {
        if (tb_decode_ids(tok, &id, 1, d->flags, !d->started, &d->pending, err)) return -1;
        d->started = 1;
    }
    if (drain(d, 0)) return lm_errf(err, "out of memory");
    *text = d->out.data;
    *len = d->out.len;
    return 0;
}

int lm_detok_flush(lm_detok *d, const char **text, size_t *len, char err[LM_ERR_LEN]) {
    if (drain(d, 1)) return lm_errf(err, "out of memory");
    d->started = 0;
    *text = d->out.data;
    *len = d->out.len;
    return 0;
}
