/* Python-compatible JSON emitter; see pyjson.h for what "compatible" covers. */
#include "formats/pyjson.h"

#include "common/buf.h"
#include "common/error.h"
#include "common/utf8.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void sb_indent(lm_strbuf *b, int indent, int level) {
    lm_strbuf_append(b, "\n", 1);
    for (int i = 0; i < indent * level; i++) lm_strbuf_append(b, " ", 1);
}

void pyjson_format_double(double x, char *buf, size_t cap) {
    if (isnan(x)) {
        snprintf(buf, cap, "NaN");
        return;
    }
    if (isinf(x)) {
        snprintf(buf, cap, x > 0 ? "Infinity" : "-Infinity");
        return;
    }
    if (x == 0) {
        snprintf(buf, cap, signbit(x) ? "-0.0" : "0.0");
        return;
    }
    /* Shortest correctly rounded digit string that reads back as x. */
    char sci[40];
    for (int prec = 0; prec <= 16; prec++) {
        snprintf(sci, sizeof sci, "%.*e", prec, x);
        if (strtod(sci, NULL) == x) break;
    }
    /* sci is "[-]d.ddde[+-]XX": split into sign, digits and decimal exponent. */
    const char *p = sci;
    int neg = 0;
    if (*p == '-') {
        neg = 1;
        p++;
    }
    char digits[24];
    int nd = 0;
    for (; *p && *p != 'e'; p++)
        if (*p != '.') digits[nd++] = *p;
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    digits[nd] = '\0';
    int exp10 = atoi(p + 1);
    int decpt = exp10 + 1; /* x = 0.digits * 10^decpt */
    char out[64];
    size_t o = 0;
    if (neg) out[o++] = '-';
    if (decpt <= -4 || decpt > 16) {
        out[o++] = digits[0];
        if (nd > 1) {
            out[o++] = '.';
            for (int i = 1; i < nd; i++) out[o++] = digits[i];
        }
        snprintf(out + o, sizeof out - o, "e%c%02d", exp10 < 0 ? '-' : '+', exp10 < 0 ? -exp10 : exp10);
    } else if (decpt <= 0) {
        out[o++] = '0';
        out[o++] = '.';
        for (int i = 0; i < -decpt; i++) out[o++] = '0';
        for (int i = 0; i < nd; i++) out[o++] = digits[i];
        out[o] = '\0';
    } else {
        for (int i = 0; i < decpt; i++) out[o++] = i < nd ? digits[i] : '0';
        out[o++] = '.';
        if (nd > decpt)
            for (int i = decpt; i < nd; i++) out[o++] = digits[i];
        else
            out[o++] = '0';
        out[o] = '\0';
    }
    snprintf(buf, cap, "%s", out);
}

/* Decodes one UTF-8 sequence; returns its length, or the length of the invalid subpart
 * with *cp = U+FFFD (jansson only holds valid UTF-8, so that case does not arise in
 * practice). */
static size_t utf8_decode(const unsigned char *s, size_t n, uint32_t *cp) {
    size_t len = lm_utf8_decode(s, n, cp, 0);
    if (len) return len;
    int incomplete;
    return lm_utf8_bad_run(s, n, &incomplete);
}

static void emit_string(lm_strbuf *b, const char *s, size_t n) {
    lm_strbuf_append(b, "\"", 1);
    const unsigned char *u = (const unsigned char *)s;
    char esc[16];
    for (size_t i = 0; i < n;) {
        unsigned c = u[i];
        if (c == '"') lm_strbuf_puts(b, "\\\"");
        else if (c == '\\') lm_strbuf_puts(b, "\\\\");
        else if (c == '\n') lm_strbuf_puts(b, "\\n");
        else if (c == '\r') lm_strbuf_puts(b, "\\r");
        else if (c == '\t') lm_strbuf_puts(b, "\\t");
        else if (c == '\b') lm_strbuf_puts(b, "\\b");
        else if (c == '\f') lm_strbuf_puts(b, "\\f");
        else if (c < 0x20 || c == 0x7f) {
            snprintf(esc, sizeof esc, "\\u%04x", c);
            lm_strbuf_puts(b, esc);
        } else if (c < 0x80) {
            lm_strbuf_append(b, (const char *)&u[i], 1);
        } else {
            uint32_t cp;
            size_t len = utf8_decode(u + i, n - i, &cp);
            if (cp >= 0x10000) {
                uint32_t v = cp - 0x10000;
                snprintf(esc, sizeof esc, "\\u%04x\\u%04x", 0xD800 + (v >> 10),
                         0xDC00 + (v & 0x3FF));
            } else {
                snprintf(esc, sizeof esc, "\\u%04x", cp);
            }
            lm_strbuf_puts(b, esc);
            i += len;
            continue;
        }
        i++;
    }
    lm_strbuf_append(b, "\"", 1);
}

static void emit(lm_strbuf *b, const json_t *v, int indent, int level) {
    char num[64];
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        if (json_object_size(v) == 0) {
            lm_strbuf_puts(b, "{}");
            return;
        }
        lm_strbuf_puts(b, "{");
        const char *key;
        json_t *child;
        int first = 1;
        /* json_object_foreach needs a non-const object; iteration does not modify it. */
        json_object_foreach((json_t *)v, key, child) {
            if (!first) lm_strbuf_puts(b, ",");
            first = 0;
            sb_indent(b, indent, level + 1);
            emit_string(b, key, strlen(key));
            lm_strbuf_puts(b, ": ");
            emit(b, child, indent, level + 1);
        }
        sb_indent(b, indent, level);
        lm_strbuf_puts(b, "}");
        return;
    }
    case JSON_ARRAY: {
        if (json_array_size(v) == 0) {
            lm_strbuf_puts(b, "[]");
            return;
        }
        lm_strbuf_puts(b, "[");
        for (size_t i = 0; i < json_array_size(v); i++) {
            if (i) lm_strbuf_puts(b, ",");
            sb_indent(b, indent, level + 1);
            emit(b, json_array_get(v, i), indent, level + 1);
        }
        sb_indent(b, indent, level);
        lm_strbuf_puts(b, "]");
        return;
    }
    case JSON_STRING: emit_string(b, json_string_value(v), json_string_length(v)); return;
    case JSON_INTEGER:
        snprintf(num, sizeof num, "%lld", (long long)json_integer_value(v));
        lm_strbuf_puts(b, num);
        return;
    case JSON_REAL:
        pyjson_format_double(json_real_value(v), num, sizeof num);
        lm_strbuf_puts(b, num);
        return;
    case JSON_TRUE: lm_strbuf_puts(b, "true"); return;
    case JSON_FALSE: lm_strbuf_puts(b, "false"); return;
    case JSON_NULL: lm_strbuf_puts(b, "null"); return;
    }
}

char *pyjson_dumps(const json_t *value, int indent, char *err) {
    if (!value) {
        lm_errf(err, "json: nothing to write");
        return NULL;
    }
    lm_strbuf b = {0};
    emit(&b, value, indent, 0);
    if (b.failed || !b.data) {
        free(b.data);
        lm_errf(err, "json: out of memory");
        return NULL;
    }
    return b.data;
}
