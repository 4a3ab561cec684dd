/* libFuzzer target for mlk_tree_mask, mlk_tree_depth and mlk_tree_accept on
   arbitrary parent arrays (make build/fuzz/fuzz_tree; tests/extra/fuzz_tree.sh
   runs it for a bounded time). Input bytes: n, then per node a parent byte
   (value - 3, so -3 .. 252), a draft token and a target token (mod 4, so
   matches are common), then target[0]. Checks: invalid trees give
   MLK_ERR_TREE with outputs untouched; valid ones give a mask equal to the
   ancestor walk, depths equal to path lengths, and an accepted path that is
   a chain from a root whose every node matches its parent's prediction and
   that no matching child extends. */
#define MLKERN_IMPLEMENTATION
#include "mlkern.h"
#include <stdio.h>
#include <stdlib.h>

#define MAX_N 48

static void fail(const char *what)
{
    fprintf(stderr, "fuzz_tree: %s\n", what);
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int n, parent[MAX_N], depth[MAX_N], path[MAX_N], n_path = -7, valid = 1;
    int32_t draft[MAX_N], target[MAX_N + 1], bonus = -7;
    uint8_t mask[MAX_N * MAX_N];
    mlk_status st_mask, st_depth, st_accept;
    if (size < 2) return 0;
    n = data[0] % (MAX_N + 2) - 1; /* -1 .. MAX_N */
    if (size < 2 + 3 * (size_t)(n > 0 ? n : 0)) return 0;
    for (int i = 0; i < n; i++) {
        parent[i] = (int)data[1 + 3 * i] - 3;
        draft[i] = data[2 + 3 * i] % 4;
        target[i + 1] = data[3 + 3 * i] % 4;
        valid &= parent[i] >= -1 && parent[i] < i;
    }
    target[0] = data[size - 1] % 4;
    memset(mask, 0xCD, sizeof mask);
    memset(depth, 0xCD, sizeof depth);
    memset(path, 0xCD, sizeof path);
    st_mask = mlk_tree_mask(n, parent, mask);
    st_depth = mlk_tree_depth(n, parent, depth);
    st_accept = mlk_tree_accept(n, parent, draft, target, path, &n_path, &bonus);
    if (n < 1) {
        if (st_mask != MLK_ERR_SHAPE || st_depth != MLK_ERR_SHAPE || st_accept != MLK_ERR_SHAPE) fail("n < 1 not SHAPE");
        return 0;
    }
    if (!valid) {
        if (st_mask != MLK_ERR_TREE || st_depth != MLK_ERR_TREE || st_accept != MLK_ERR_TREE) fail("bad tree accepted");
        for (size_t i = 0; i < sizeof mask; i++) if (mask[i] != 0xCD) fail("mask written on error");
        if (depth[0] != (int)0xCDCDCDCD || path[0] != (int)0xCDCDCDCD || n_path != -7 || bonus != -7)
            fail("output written on error");
        return 0;
    }
    if (st_mask != MLK_OK || st_depth != MLK_OK || st_accept != MLK_OK) fail("valid tree rejected");
    for (int i = 0; i < n; i++) {
        int steps = 0;
        uint8_t anc[MAX_N] = {0};
        for (int j = i; j >= 0; j = parent[j]) { anc[j] = 1; steps++; }
        if (depth[i] != steps - 1) fail("depth");
        for (int j = 0; j < n; j++) if (mask[i * n + j] != anc[j]) fail("mask");
    }
    if (n_path < 0 || n_path > n) fail("n_path range");
    for (int j = 0; j < n_path; j++) {
        int node = path[j], want_parent = j ? path[j - 1] : -1;
        if (node < 0 || node >= n || parent[node] != want_parent) fail("path is not a chain from a root");
        if (draft[node] != target[want_parent + 1]) fail("accepted a mismatch");
    }
    {
        int last = n_path ? path[n_path - 1] : -1;
        for (int i = last + 1; i < n; i++)
            if (parent[i] == last && draft[i] == target[last + 1]) fail("a matching child was left");
        if (bonus != target[last + 1]) fail("bonus");
    }
    return 0;
}
