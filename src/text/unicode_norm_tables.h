/* Shapes of the generated Unicode normalization tables (unicode_norm_tables.c, made by
 * tools/gen_unicode_norm.py). Only unicode_norm.c reads them. Every table is sorted by its
 * first field so lookups are binary searches. */
#ifndef LAZYMOE_UNICODE_NORM_TABLES_H
#define LAZYMOE_UNICODE_NORM_TABLES_H

#include <stddef.h>
#include <stdint.h>

typedef struct { uint32_t cp; uint8_t ccc; } lm_unorm_ccc;            /* ccc != 0 only */
typedef struct { uint32_t cp; uint32_t off, len; } lm_unorm_decomp;    /* into *_data */
typedef struct { uint32_t first, second, composite; } lm_unorm_pair;   /* primary composites */

extern const lm_unorm_ccc lm_unorm_ccc_table[];
extern const size_t lm_unorm_ccc_count;
extern const lm_unorm_decomp lm_unorm_canon[];   /* full (recursive) NFD of one code point */
extern const size_t lm_unorm_canon_count;
extern const uint32_t lm_unorm_canon_data[];
extern const lm_unorm_decomp lm_unorm_compat[];  /* full NFKD of one code point */
extern const size_t lm_unorm_compat_count;
extern const uint32_t lm_unorm_compat_data[];
extern const lm_unorm_pair lm_unorm_pairs[];     /* sorted by (first, second) */
extern const size_t lm_unorm_pairs_count;

#endif
