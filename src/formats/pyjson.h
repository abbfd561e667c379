/* JSON text byte-identical to Python's json.dump(obj, f, indent=N).
 *
 * mlx-lm writes config.json and model.safetensors.index.json with json.dump(indent=4),
 * so files written through this emitter match the ones mlx-lm writes: ", " never
 * appears at line ends, ": " between key and value, keys in the object's order
 * (jansson keeps insertion order), ASCII only (other characters as \uXXXX, with
 * surrogate pairs), floats as Python's repr (shortest round-trip digits, "1e-06",
 * "10000.0"), NaN/Infinity as Python spells them, empty containers as {} and [].
 * No trailing newline, as json.dump writes none.
 */
#ifndef LAZYMOE_PYJSON_H
#define LAZYMOE_PYJSON_H

#include <jansson.h>

/* Returns a malloc'd NUL-terminated string (free with free()), or NULL with err set. */
char *pyjson_dumps(const json_t *value, int indent, char *err);

/* Formats a double as Python's repr(float) into buf (at least 32 bytes). */
void pyjson_format_double(double x, char *buf, size_t cap);

#endif
