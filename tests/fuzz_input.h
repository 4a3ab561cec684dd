/* fuzz_input.h - the byte reader every libFuzzer target (tests/fuzz_*.c)
   draws its choices from: one byte at a time, zeros once the input runs out,
   so every input, however short, is a complete case. */
#ifndef FUZZ_INPUT_H
#define FUZZ_INPUT_H

#include <stddef.h>
#include <stdint.h>

typedef struct fz_bytes { const uint8_t *p; size_t n; } fz_bytes;

static int fz_next(fz_bytes *b)
{
    if (b->n == 0) return 0;
    b->n--;
    return *b->p++;
}

#endif
