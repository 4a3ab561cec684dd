/* A program that uses an installed or vendored mlkern the way a user would:
   declarations here, the implementation in impl.c. Compiled as C and as C++
   by tests/extra/consumers.sh. Prints one line and exits 0 when a small
   sgemm matches a naive product and a bad shape is reported as such. */
#include <stdio.h>
#include <string.h>
#include "mlkern.h"

int main(void)
{
    enum { M = 3, N = 5, K = 7 };
    float a[M * K], b[K * N], c[M * N];
    int i, j, p, bad = 0;
    mlk_status st;
#ifdef _OPENMP
    const char *openmp = "on";
#else
    const char *openmp = "off";
#endif
    for (i = 0; i < M * K; i++) a[i] = (float)(i % 5) - 2.0f;
    for (i = 0; i < K * N; i++) b[i] = 0.25f * (float)(i % 3);
    st = mlk_sgemm(0, 0, M, N, K, 1.0f, a, K, b, N, 0.0f, c, N);
    if (st != MLK_OK) {
        printf("consumer: mlk_sgemm failed: %s\n", mlk_status_str(st));
        return 1;
    }
    for (i = 0; i < M; i++)
        for (j = 0; j < N; j++) {
            double ref = 0; /* small integers and quarters: exact in float */
            for (p = 0; p < K; p++) ref += (double)a[i * K + p] * b[p * N + j];
            bad += (double)c[i * N + j] != ref;
        }
    st = mlk_sgemm(0, 0, -1, N, K, 1.0f, a, K, b, N, 0.0f, c, N);
    if (bad || st != MLK_ERR_SHAPE || strcmp(mlk_status_str(st), mlk_status_str(MLK_OK)) == 0) {
        printf("consumer: FAILED (%d wrong elements, bad shape gave \"%s\")\n", bad, mlk_status_str(st));
        return 1;
    }
    printf("consumer: mlkern %d.%d.%d ok (sgemm %dx%dx%d exact, bad shape -> \"%s\", OpenMP %s)\n",
           MLKERN_VERSION_MAJOR, MLKERN_VERSION_MINOR, MLKERN_VERSION_PATCH, M, N, K,
           mlk_status_str(st), openmp);
    return 0;
}
