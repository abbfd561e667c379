/* Small string helpers shared by the subsystems. */
#ifndef LAZYMOE_STR_H
#define LAZYMOE_STR_H

/* printf into a new malloc'd string; NULL if out of memory. The caller frees. */
char *lm_strdup_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The value of a hexadecimal digit (0-9, a-f, A-F), -1 for any other character. */
int lm_hex_digit(char c);

#endif
