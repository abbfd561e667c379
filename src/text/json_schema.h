/* JSON Schema -> grammar (text/grammar.h) whose sentences are JSON texts that validate.
 *
 * Supported: type (a name or a list; "integer", "number", "string", "boolean", "null",
 * "object", "array"), enum, const (any JSON values), anyOf / oneOf (alternatives:
 * overlapping oneOf branches are not made exclusive), allOf of one schema, $ref to
 * "#", "#/$defs/..." or "#/definitions/..." (recursion allowed), nullable (OpenAPI),
 * properties + required + additionalProperties, items, minItems / maxItems,
 * minLength / maxLength, boolean schemas true / false.
 * Annotations are ignored: title, description, default, examples, format (an
 * annotation by default in JSON Schema 2020-12), $schema, $id, $comment, deprecated,
 * readOnly, writeOnly, and keywords JSON Schema does not define.
 * Refused, naming the keyword and its place: pattern, patternProperties, propertyNames,
 * min/maxProperties, minimum / maximum / exclusive* / multipleOf, uniqueItems,
 * contains, prefixItems / items as an array, not, if / then / else, allOf of several,
 * dependent*, unevaluated*, $dynamicRef, other $ref targets, required names without a
 * declared property.
 *
 * What the grammar generates (a subset of what validates, chosen so that generation
 * ends):
 *  - objects with declared properties: those properties only, in declared order; the
 *    required ones always, the others optionally (additionalProperties is not used to
 *    add keys; outputs stay valid either way). Without properties: any keys (string of
 *    at most 64 characters) with values of additionalProperties (any JSON when absent
 *    or true), at most LM_SCHEMA_MAX_ITEMS members.
 *  - whitespace: at most one space after "{", "[", ",", ":"; none elsewhere.
 *  - strings: minLength..maxLength characters when given; otherwise up to
 *    LM_SCHEMA_MAX_ESCAPES escapes with at most LM_SCHEMA_MAX_STRING characters between
 *    them; escapes \" \\ \/ \b \f \n \r \t (no \u: raw UTF-8 instead, so no lone
 *    surrogates or NUL). Keys of free-form objects: 1-64 characters, no escapes.
 *  - numbers: up to 16 integer and 16 fraction digits, exponents of 1-2 digits.
 *  - arrays: at most maxItems, else LM_SCHEMA_MAX_ITEMS, items.
 *  - "any value" (no type): JSON nested at most LM_SCHEMA_ANY_DEPTH levels.
 */
#ifndef LAZYMOE_TEXT_JSON_SCHEMA_H
#define LAZYMOE_TEXT_JSON_SCHEMA_H

#include "common/error.h"
#include "text/grammar.h"

#include <jansson.h>

#define LM_SCHEMA_MAX_STRING 256 /* characters between two escapes */
#define LM_SCHEMA_MAX_ESCAPES 32
#define LM_SCHEMA_MAX_ITEMS 32
#define LM_SCHEMA_ANY_DEPTH 4
#define LM_SCHEMA_NAME 32 /* bytes of a rule name */

/* Accumulates grammar rules for one or more schemas (e.g. one per tool). */
typedef struct lm_schema_gen lm_schema_gen;

int lm_schema_gen_new(lm_schema_gen **out, char err[LM_ERR_LEN]);
void lm_schema_gen_free(lm_schema_gen *g);

/* Adds the rules for values of `schema` and writes the name of the rule that matches
 * them into name. $refs resolve in `doc` (the whole schema document; NULL = schema).
 * `path` names the schema in errors ("response_format.json_schema.schema"). */
int lm_schema_gen_value(lm_schema_gen *g, const json_t *schema, const json_t *doc, const char *path,
                        char name[LM_SCHEMA_NAME], char err[LM_ERR_LEN]);
/* The rule for any JSON object (json_object mode). */
int lm_schema_gen_any_object(lm_schema_gen *g, char name[LM_SCHEMA_NAME], char err[LM_ERR_LEN]);
/* Adds "name ::= body" verbatim (body in grammar syntax). */
int lm_schema_gen_rule(lm_schema_gen *g, const char *name, const char *body, char err[LM_ERR_LEN]);
/* A fresh rule name. */
void lm_schema_gen_name(lm_schema_gen *g, char name[LM_SCHEMA_NAME]);
/* Appends to *body (malloc'd, grown as needed) a grammar literal matching exactly the
 * n bytes of s. Returns 0 or -1 (out of memory). */
int lm_grammar_literal_append(char **body, size_t *len, size_t *cap, const char *s, size_t n);
/* The grammar so far, with a rule "root ::= <root_rule>" added. */
int lm_schema_gen_grammar(lm_schema_gen *g, const char *root_rule, lm_grammar **out, char err[LM_ERR_LEN]);
/* The text of the rules so far (for tests and the fuzz target). */
const char *lm_schema_gen_text(const lm_schema_gen *g);

/* One call: the grammar of a schema (json_object_only: any JSON object, schema ignored). */
int lm_json_schema_grammar(const json_t *schema, const char *path, lm_grammar **out, char err[LM_ERR_LEN]);
int lm_json_object_grammar(lm_grammar **out, char err[LM_ERR_LEN]);

#endif
