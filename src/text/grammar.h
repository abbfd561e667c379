/* Grammars for constrained decoding: the text a model generates must be a sentence
 * of a context-free grammar (JSON that follows a schema, a forced tool call).
 *
 * Grammar text (one rule per "name ::=", newlines are plain whitespace, # comments):
 *   root  ::= "{" ws pair ("," ws pair)* "}"       the rule named root is the start
 *   pair  ::= "\"k\"" ":" ws [0-9]+ | "null"        alternatives with |
 *   ws    ::= " "?
 * Elements: "literal" (escapes \" \\ \n \r \t \xHH \uHHHH; UTF-8 text as is),
 * [a-z_] / [^"\\] character classes of code points (same escapes), . any code point,
 * a rule name, ( group ). Postfix repetition: * + ? {m} {m,} {m,n}.
 * Refused at parse time, with the rule named: undefined rules, left recursion, and a
 * repetition (other than ?) of something that can match the empty string -- the two
 * shapes that would make matching loop without consuming input.
 *
 * Matching runs over Unicode code points; bytes are decoded as UTF-8 on the way in, so a
 * token may end inside a character (the rest must come with the next token) and only
 * well-formed UTF-8 is ever accepted.
 *
 * Matcher: the set of parse stacks alive after the bytes accepted so far (a pushdown
 * automaton's configurations; the frames are immutable and shared between stacks).
 * A stack whose top is a character class waits for a code point; the empty stack means
 * the input so far is a whole sentence.
 *
 * Token mask: the byte strings of a vocabulary in a trie; one depth-first walk of the
 * trie carries the matcher's stacks along, cutting every subtree whose prefix no stack
 * accepts, so a step costs the size of the accepted part of the trie, not the vocabulary
 * times the token length.
 *
 * Ownership: a grammar is immutable after parsing and can be shared by any number of
 * matchers (it must outlive them). A matcher and a trie belong to one thread at a time.
 */
#ifndef LAZYMOE_TEXT_GRAMMAR_H
#define LAZYMOE_TEXT_GRAMMAR_H

#include "common/error.h"

#include <stddef.h>
#include <stdint.h>

typedef struct lazymoe_grammar lm_grammar; /* public name: include/lazymoe.h */
typedef struct lm_gmatch lm_gmatch;
typedef struct lm_token_trie lm_token_trie;

/* Parses grammar text (len bytes). Sizes are bounded (LM_GRAMMAR_MAX_* below). */
int lm_grammar_parse(const char *text, size_t len, lm_grammar **out, char err[LM_ERR_LEN]);
void lm_grammar_free(lm_grammar *g);

#define LM_GRAMMAR_MAX_TEXT (4u << 20) /* bytes of grammar text */
#define LM_GRAMMAR_MAX_RULES 65536

/* A matcher at the start of g. */
int lm_gmatch_new(const lm_grammar *g, lm_gmatch **out, char err[LM_ERR_LEN]);
void lm_gmatch_free(lm_gmatch *m);
/* Back to the start. */
int lm_gmatch_reset(lm_gmatch *m, char err[LM_ERR_LEN]);
/* Feeds n bytes: 1 = accepted (the state moves past them), 0 = some prefix of them
 * cannot continue any sentence (the state is unchanged), -1 = out of memory or a
 * grammar too ambiguous to track (err says which). */
int lm_gmatch_accept(lm_gmatch *m, const char *bytes, size_t n, char err[LM_ERR_LEN]);
/* Work allowed for one accept or mask (frames compared), beyond which they fail as "too
 * ambiguous"; 0 = the default (about 20 ms). The fuzz target lowers it to stay fast. */
void lm_gmatch_set_work_limit(lm_gmatch *m, uint32_t limit);
/* 1 when the bytes accepted so far form a whole sentence (the output may end here). */
int lm_gmatch_complete(const lm_gmatch *m);

/* Trie over n token byte strings (token id = index; empty strings are never allowed by
 * a mask: special tokens such as end-of-sequence are the caller's to decide). */
int lm_token_trie_new(const char *const *bytes, const size_t *lens, int n, lm_token_trie **out,
                      char err[LM_ERR_LEN]);
void lm_token_trie_free(lm_token_trie *t);
int lm_token_trie_size(const lm_token_trie *t); /* n */
/* The bytes of token id (a copy the trie owns; "" for ids out of range). */
const char *lm_token_trie_bytes(const lm_token_trie *t, int id, size_t *len);

/* allowed[0..n) = 1 for every token whose bytes the matcher can accept next, else 0.
 * budget >= 0 also drops tokens after which a whole sentence needs more than budget
 * more bytes: with one token per byte still to come, generation can always finish in
 * time (the caller passes the tokens left after this one). Returns the number of
 * allowed tokens, or -1 (as lm_gmatch_accept). */
int lm_gmatch_mask(lm_gmatch *m, const lm_token_trie *t, long budget, uint8_t *allowed, char err[LM_ERR_LEN]);
/* Fewest bytes that still complete a sentence from the current state (0 if complete). */
long lm_gmatch_min_bytes(const lm_gmatch *m);

#endif
