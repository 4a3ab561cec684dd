/* Second translation unit of the MLKERN_STATIC configuration: the whole
   implementation again, private to this file. Returns 1 when a small sgemm
   here agrees with the hand-computed product. */
#define MLKERN_IMPLEMENTATION
#include "../mlkern.h"

int mlkt_second_tu_probe(void);

int mlkt_second_tu_probe(void)
{
    const float a[4] = {1, 2, 3, 4}, b[4] = {5, 6, 7, 8};
    float c[4] = {0, 0, 0, 0};
    if (mlk_sgemm(0, 0, 2, 2, 2, 1.0f, a, 2, b, 2, 0.0f, c, 2) != MLK_OK) return 0;
    return c[0] == 19 && c[1] == 22 && c[2] == 43 && c[3] == 50;
}
