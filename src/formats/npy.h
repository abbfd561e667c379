/* NumPy .npy files (version 1.0, little-endian float32, C order): the exchange
 * format for logits with the Python reference tooling. */
#ifndef LAZYMOE_NPY_H
#define LAZYMOE_NPY_H

#include <stddef.h>

/* Writes a float32 array of the given shape atomically. */
int lm_npy_write_f32(const char *path, const float *data, const size_t *shape, int ndim, char *err);
/* Reads a float32 (<f4) C-order array; *data is malloc'd; shape up to 4 dims. */
int lm_npy_read_f32(const char *path, float **data, size_t *shape, int *ndim, char *err);

#endif
