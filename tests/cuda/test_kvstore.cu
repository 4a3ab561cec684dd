/* CUDA paged KV cache writes: a host cache with storage and a bookkeeping
   cache fed the same operations (prompt stores, forks sharing blocks,
   copy-on-write stores into shared blocks, one call storing rows of two
   sequences, truncation and reuse, compaction with and without copies,
   frees); the bookkeeping cache's rows live in a device pool written by
   mlk_cuda_kv_store / mlk_cuda_kv_compact, and after every step each live
   sequence's rows in the device pool must be the host pool's bytes
   (F32/F16/Q8/Q4, GQA head counts, head_dim around the 32-value
   quantisation blocks, tiny, zero, half-step, huge, NaN and inf values,
   bf16 and fp16 input). Bad arguments: the status, no launch, nothing
   written. */
#include "mlkct.h"

#include <string>

static const char *type_name(mlk_kv_type t)
{
    static const char *names[] = {"F32", "F16", "Q8", "Q4"};
    return names[t];
}

/* Rows of one layer, [n, kv_heads, head_dim]: per 32-value block normal
   values of a random scale, or a tiny block (quantised in double on the
   CPU), zeros, exact half steps of the Q8/Q4 grid, values past F16's
   range or in its subnormals; `special` adds NaN, +-inf and -0. */
static void fill_rows(float *x, int n, int hkv, int d, bool special)
{
    for (int r = 0; r < n * hkv; r++)
        for (int b0 = 0; b0 < d; b0 += 32) {
            int kind = mlkt_int(7), qmax = mlkt_int(2) ? 127 : 7;
            double scale = exp(mlkt_uniform(-3.0, 3.0));
            for (int j = b0; j < d && j < b0 + 32; j++) {
                double v = scale * mlkt_normal();
                if (kind == 1) v = 1e-33 * mlkt_normal();
                if (kind == 2) v = 0.0;
                if (kind == 3) v = j == b0 ? qmax : (double)(mlkt_int(2 * qmax) - qmax) + 0.5;
                if (kind == 4) v = 1e5 * mlkt_normal();
                if (kind == 5) v = 1e-6 * mlkt_normal();
                x[(size_t)r * d + j] = (float)v;
            }
        }
    if (special) {
        const float odd[] = {NAN, INFINITY, -INFINITY, -0.0f, -NAN};
        for (int i = 0; i < 5; i++) x[(size_t)mlkt_int(n * hkv * d)] = odd[i];
    }
}

#define MAX_BLOCKS 256 /* the most blocks of a pool here */

/* The two caches, the device pool and the buffers of the calls. */
struct kv_env {
    mlk_kv_config cfg;
    mlk_kv_cache *host, *book;
    mlk_kv_layout lay;
    dbuf<unsigned char> pool;
    dbuf<int> status;
};

static kv_env env_new(mlk_kv_type type, int layers, int hkv, int d, int bs, int n_blocks)
{
    kv_env E;
    memset(&E.cfg, 0, sizeof E.cfg);
    E.cfg.layers = layers;
    E.cfg.kv_heads = hkv;
    E.cfg.head_dim = d;
    E.cfg.block_size = bs;
    E.cfg.num_blocks = n_blocks;
    E.cfg.max_seqs = 6;
    E.cfg.type = type;
    CHECK_INT(mlk_kv_create(&E.cfg, &E.host), MLK_OK);
    CHECK_INT(mlk_kv_create_bookkeeping(&E.cfg, &E.book), MLK_OK);
    CHECK_INT(mlk_kv_get_layout(E.book, &E.lay), MLK_OK);
    E.pool = dbuf_new<unsigned char>((size_t)E.lay.num_blocks * E.lay.block_bytes);
    mlkct_cuda(cudaMemset(E.pool.p, 0, E.pool.n), "cudaMemset"); /* zeroed once, as the manual asks */
    E.status = dbuf_new<int>(1);
    return E;
}

static void env_free(kv_env &E)
{
    mlk_kv_destroy(E.host);
    mlk_kv_destroy(E.book);
    dbuf_free(E.pool);
    dbuf_free(E.status);
}

static const unsigned char *row_at(const unsigned char *pool, const mlk_kv_layout &l, int block, int off, int layer,
                                   int kv, int h)
{
    return pool + (size_t)block * l.block_bytes + (size_t)layer * l.layer_stride + (size_t)kv * l.kv_stride +
           (size_t)h * l.head_stride + (size_t)off * l.row_bytes;
}

/* Every live sequence: the same length, and the device rows are the host's bytes. */
static void env_compare(kv_env &E, const char *step)
{
    std::vector<unsigned char> dev = dbuf_get(E.pool);
    mlk_kv_layout hl;
    memset(&hl, 0, sizeof hl);
    CHECK_INT(mlk_kv_get_layout(E.host, &hl), MLK_OK);
    int rows = 0, differ = 0;
    for (int s = 0; s < E.cfg.max_seqs; s++) {
        int len = mlk_kv_seq_len(E.host, s);
        CHECKF(len == mlk_kv_seq_len(E.book, s), "%s: seq %d has length %d on the host, %d in the bookkeeping", step, s,
               len, mlk_kv_seq_len(E.book, s));
        if (len <= 0) continue;
        std::vector<int> hb(MAX_BLOCKS), bb(MAX_BLOCKS);
        CHECK(mlk_kv_seq_blocks(E.host, s, hb.data(), MAX_BLOCKS) <= MAX_BLOCKS &&
              mlk_kv_seq_blocks(E.book, s, bb.data(), MAX_BLOCKS) <= MAX_BLOCKS);
        for (int p = 0; p < len; p++)
            for (int l = 0; l < E.cfg.layers; l++)
                for (int kv = 0; kv < 2; kv++)
                    for (int h = 0; h < E.cfg.kv_heads; h++) {
                        int bs = E.cfg.block_size;
                        rows++;
                        differ += memcmp(row_at(hl.pool, hl, hb[(size_t)(p / bs)], p % bs, l, kv, h),
                                         row_at(dev.data(), E.lay, bb[(size_t)(p / bs)], p % bs, l, kv, h),
                                         E.lay.row_bytes) != 0;
                    }
    }
    CHECKF(differ == 0, "%s %s L%d Hkv%d D%d: %d of %d rows differ from the host cache's bytes", step,
           type_name(E.cfg.type), E.cfg.layers, E.cfg.kv_heads, E.cfg.head_dim, differ, rows);
    mlkt_digest(dev.data(), dev.size());
}

/* Runs the device calls of one step in every thread order from the same
   pool; leaves the pool as they wrote it and returns the status. */
template <typename F> static int device_step(kv_env &E, const char *what, F launch)
{
    std::vector<unsigned char> before = dbuf_get(E.pool);
    std::vector<unsigned char> out = mlkct_orders(what, [&]() {
        dbuf_put(E.pool, before.data());
        dbuf_poison(E.status);
        launch();
        std::vector<unsigned char> b;
        mlkct_append(b, E.pool);
        mlkct_append(b, E.status);
        return b;
    });
    dbuf_put(E.pool, out.data());
    int st;
    memcpy(&st, out.data() + E.pool.n, sizeof st);
    return st;
}

/* One device store of every layer: rows of several (seq, pos, n) runs at
   once, after mlk_kv_prepare_write of each run; the host cache stores the
   same values run by run. */
template <typename T>
static void store_runs(kv_env &E, const char *what, std::vector<int> seqs, std::vector<int> pos, std::vector<int> ns,
                       bool special)
{
    const int hkv = E.cfg.kv_heads, d = E.cfg.head_dim, bs = E.cfg.block_size;
    int total = 0, n_copies = 0;
    std::vector<int> copies(2 * MAX_BLOCKS);
    std::vector<int64_t> slots;
    for (size_t r = 0; r < seqs.size(); r++) {
        int made = -1;
        CHECK_INT(mlk_kv_prepare_write(E.book, seqs[r], pos[r], ns[r], copies.data() + 2 * n_copies, MAX_BLOCKS - n_copies,
                                       &made),
                  MLK_OK);
        n_copies += made;
        std::vector<int> blocks(MAX_BLOCKS);
        CHECK(mlk_kv_seq_blocks(E.book, seqs[r], blocks.data(), MAX_BLOCKS) <= MAX_BLOCKS);
        for (int i = 0; i < ns[r]; i++) slots.push_back((int64_t)blocks[(size_t)((pos[r] + i) / bs)] * bs + (pos[r] + i) % bs);
        total += ns[r];
    }
    size_t count = (size_t)total * hkv * d;
    std::vector<std::vector<T>> k_dev(E.cfg.layers), v_dev(E.cfg.layers);
    int host_status = MLK_OK;
    for (int l = 0; l < E.cfg.layers; l++) {
        std::vector<float> k(count), v(count), kf, vf;
        fill_rows(k.data(), total, hkv, d, special);
        fill_rows(v.data(), total, hkv, d, special && l == 0);
        k_dev[(size_t)l] = mlkct_round<T>(k.data(), count, &kf);
        v_dev[(size_t)l] = mlkct_round<T>(v.data(), count, &vf);
        size_t at = 0;
        for (size_t r = 0; r < seqs.size(); r++) {
            mlk_status st = mlk_kv_store(E.host, seqs[r], l, pos[r], ns[r], kf.data() + at, vf.data() + at);
            if (st != MLK_OK) host_status = st;
            at += (size_t)ns[r] * hkv * d;
        }
    }
    dbuf<int64_t> dslots = dbuf_from(slots.data(), slots.size());
    std::vector<dbuf<T>> dk, dv;
    for (int l = 0; l < E.cfg.layers; l++) {
        dk.push_back(dbuf_from(k_dev[(size_t)l].data(), count));
        dv.push_back(dbuf_from(v_dev[(size_t)l].data(), count));
    }
    size_t ws_bytes = mlk_cuda_kv_store_workspace_size(&E.lay);
    CHECK(ws_bytes > 0);
    dbuf<unsigned char> ws = dbuf_new<unsigned char>(ws_bytes + 256);
    void *wsp = (void *)(((uintptr_t)ws.p + 255) / 256 * 256);
    int dev_status = device_step(E, what, [&]() {
        for (int l = 0; l < E.cfg.layers; l++) {
            mlk_status st = mlk_cuda_kv_store<T>(&E.lay, E.pool.p, l == 0 ? n_copies : 0, copies.data(), l, total,
                                                 dslots.p, dk[(size_t)l].p, dv[(size_t)l].p, E.status.p,
                                                 l % 2 ? NULL : wsp, l % 2 ? 0 : ws_bytes, 0);
            CHECK_INT(st, MLK_OK);
        }
    });
    CHECKF(dev_status == host_status, "%s %s: device status %d, the CPU's %d", what, type_name(E.cfg.type), dev_status,
           host_status);
    env_compare(E, what);
    dbuf_free(dslots);
    for (auto &b : dk) dbuf_free(b);
    for (auto &b : dv) dbuf_free(b);
    dbuf_free(ws);
}

static void compact_both(kv_env &E, const char *what, int seq, int start, std::vector<int> keep, int want_copies)
{
    int n_copies = -1, n_moves = -1, copies[2 * MAX_BLOCKS];
    std::vector<int64_t> moves(2 * keep.size() + 2);
    CHECK_INT(mlk_kv_compact(E.host, seq, start, (int)keep.size(), keep.data()), MLK_OK);
    CHECK_INT(mlk_kv_prepare_compact(E.book, seq, start, (int)keep.size(), keep.data(), copies, MAX_BLOCKS, &n_copies,
                                     moves.data(), &n_moves),
              MLK_OK);
    if (want_copies >= 0) CHECKF(n_copies == want_copies, "%s: %d block copies, %d expected", what, n_copies, want_copies);
    device_step(E, what, [&]() {
        CHECK_INT(mlk_cuda_kv_compact(&E.lay, E.pool.p, n_copies, copies, n_moves, moves.data(), 0), MLK_OK);
    });
    env_compare(E, what);
}

template <typename T> static void run_scenario(mlk_kv_type type, int layers, int hkv, int d)
{
    kv_env E = env_new(type, layers, hkv, d, 4, 24);
    int s0 = -1, f1 = -1, f2 = -1;
    bool quant = type == MLK_KV_Q8 || type == MLK_KV_Q4;
    CHECK_INT(mlk_kv_seq_new(E.host, &s0), MLK_OK);
    CHECK_INT(mlk_kv_seq_new(E.book, &s0), MLK_OK);
    CHECK_INT(mlk_kv_append(E.host, s0, 11), MLK_OK);
    CHECK_INT(mlk_kv_append(E.book, s0, 11), MLK_OK);
    store_runs<T>(E, "prompt", {s0}, {0}, {11}, false);
    /* two forks share the prompt's blocks */
    CHECK_INT(mlk_kv_seq_fork(E.host, s0, &f1), MLK_OK);
    CHECK_INT(mlk_kv_seq_fork(E.book, s0, &f1), MLK_OK);
    CHECK_INT(mlk_kv_seq_fork(E.host, s0, &f2), MLK_OK);
    CHECK_INT(mlk_kv_seq_fork(E.book, s0, &f2), MLK_OK);
    CHECK_INT(mlk_kv_append(E.host, f1, 3), MLK_OK);
    CHECK_INT(mlk_kv_append(E.book, f1, 3), MLK_OK);
    store_runs<T>(E, "fork decode (copy of a shared block)", {f1}, {10}, {4}, false);
    /* one call: s0 rewrites its last position, f2 two positions of a block all three share */
    store_runs<T>(E, "two sequences, copies", {s0, f2}, {10, 3}, {1, 2}, false);
    CHECK_INT(mlk_kv_truncate(E.host, f1, 6), MLK_OK);
    CHECK_INT(mlk_kv_truncate(E.book, f1, 6), MLK_OK);
    CHECK_INT(mlk_kv_append(E.host, f1, 5), MLK_OK);
    CHECK_INT(mlk_kv_append(E.book, f1, 5), MLK_OK);
    store_runs<T>(E, "after truncate", {f1}, {6}, {5}, false);
    /* one run: a device call is refused as a whole, the CPU's store by store */
    store_runs<T>(E, quant ? "NaN and inf (refused)" : "NaN and inf", {s0}, {1}, {3}, true);
    /* accepted tree nodes: positions 4 + keep[i] -> 4 + i; s0's blocks 1 and 2 are still shared with f2 */
    compact_both(E, "compact", s0, 4, {0, 2, 5, 6}, -1);
    compact_both(E, "compact, nothing kept", f1, 2, {}, 0);
    CHECK_INT(mlk_kv_seq_free(E.host, f2), MLK_OK);
    CHECK_INT(mlk_kv_seq_free(E.book, f2), MLK_OK);
    CHECK_INT(mlk_kv_append(E.host, s0, 6), MLK_OK);
    CHECK_INT(mlk_kv_append(E.book, s0, 6), MLK_OK);
    store_runs<T>(E, "decode after free", {s0}, {8}, {6}, false);
    compact_both(E, "compact, private blocks", s0, 2, {1, 3, 4, 9}, 0);
    env_free(E);
}

static void test_types_shapes(void)
{
    const mlk_kv_type types[] = {MLK_KV_F32, MLK_KV_F16, MLK_KV_Q8, MLK_KV_Q4};
    struct { int layers, hkv, d; } shapes[] = {{1, 1, 1}, {2, 2, 33}, {1, 3, 64}, {2, 1, 31}, {1, 2, 97}, {1, 8, 128}};
    for (mlk_kv_type t : types)
        for (const auto &s : shapes) run_scenario<float>(t, s.layers, s.hkv, s.d);
    run_scenario<__nv_bfloat16>(MLK_KV_Q4, 2, 2, 40);
    run_scenario<__half>(MLK_KV_F16, 1, 2, 33);
    run_scenario<__nv_bfloat16>(MLK_KV_F32, 1, 1, 8);
}

/* More copies and moves than one launch takes, with block size 1: a
   fork compacted over its 75 shared blocks (72 copies, and each move
   reads the row the next one overwrites: order across launches), a fork
   rewriting 70 shared positions (70 copies). */
static void test_many_pairs(void)
{
    kv_env E = env_new(MLK_KV_F16, 1, 2, 6, 1, 240);
    int s = -1, f = -1, g = -1;
    std::vector<int> keep(72);
    for (int i = 0; i < 72; i++) keep[(size_t)i] = i + 1;
    CHECK_INT(mlk_kv_seq_new(E.host, &s), MLK_OK);
    CHECK_INT(mlk_kv_seq_new(E.book, &s), MLK_OK);
    CHECK_INT(mlk_kv_append(E.host, s, 75), MLK_OK);
    CHECK_INT(mlk_kv_append(E.book, s, 75), MLK_OK);
    store_runs<float>(E, "long prompt", {s}, {0}, {75}, false);
    CHECK_INT(mlk_kv_seq_fork(E.host, s, &f), MLK_OK);
    CHECK_INT(mlk_kv_seq_fork(E.book, s, &f), MLK_OK);
    compact_both(E, "72 chained moves over shared blocks", f, 1, keep, 72);
    CHECK_INT(mlk_kv_seq_fork(E.host, s, &g), MLK_OK);
    CHECK_INT(mlk_kv_seq_fork(E.book, s, &g), MLK_OK);
    store_runs<float>(E, "70 copies", {g}, {2}, {70}, false);
    compact_both(E, "72 chained moves", s, 1, keep, 2);
    env_free(E);
}

/* ---- bad arguments: the status, nothing launched, the pool untouched ---- */

static void test_bad_arguments(void)
{
    kv_env E = env_new(MLK_KV_Q8, 2, 2, 16, 4, 8);
    const int n = 3;
    std::vector<float> hk((size_t)n * 2 * 16, 0.25f);
    std::vector<int64_t> hs = {0, 1, 5};
    dbuf<float> k = dbuf_from(hk.data(), hk.size()), v = dbuf_from(hk.data(), hk.size());
    dbuf<int64_t> slots = dbuf_from(hs.data(), hs.size());
    dbuf<unsigned char> ws = dbuf_new<unsigned char>(512);
    int copies[4] = {0, 1, 2, 3}, bad_copies[2] = {0, 8};
    int64_t moves[2] = {0, 1}, bad_moves[2] = {0, 32};
    std::vector<unsigned char> before = dbuf_get(E.pool);
    long launches = mlkct_launches();
    mlk_kv_layout bad_row = E.lay, bad_type = E.lay, bad_stride = E.lay;
    bad_row.row_bytes += 4;
    bad_type.type = (mlk_kv_type)7;
    bad_stride.kv_stride += 4;
    const mlk_kv_layout *bad_layouts[] = {&bad_row, &bad_type, &bad_stride};
    int *st = E.status.p;
    CHECK_INT(mlk_cuda_kv_store<float>(NULL, E.pool.p, 0, NULL, 0, n, slots.p, k.p, v.p, st, NULL, 0, 0), MLK_ERR_NULL);
    CHECK_INT(mlk_cuda_kv_store<float>(&E.lay, NULL, 0, NULL, 0, n, slots.p, k.p, v.p, st, NULL, 0, 0), MLK_ERR_NULL);
    CHECK_INT(mlk_cuda_kv_store<float>(&E.lay, E.pool.p, 2, NULL, 0, n, slots.p, k.p, v.p, st, NULL, 0, 0), MLK_ERR_NULL);
    CHECK_INT(mlk_cuda_kv_store<float>(&E.lay, E.pool.p, 0, NULL, 0, n, NULL, k.p, v.p, st, NULL, 0, 0), MLK_ERR_NULL);
    CHECK_INT(mlk_cuda_kv_store<float>(&E.lay, E.pool.p, 0, NULL, 0, n, slots.p, NULL, v.p, st, NULL, 0, 0), MLK_ERR_NULL);
    CHECK_INT(mlk_cuda_kv_store<float>(&E.lay, E.pool.p, 0, NULL, 0, n, slots.p, k.p, NULL, st, NULL, 0, 0), MLK_ERR_NULL);
    for (const mlk_kv_layout *l : bad_layouts) {
        CHECK_INT(mlk_cuda_kv_store<float>(l, E.pool.p, 0, NULL, 0, n, slots.p, k.p, v.p, st, NULL, 0, 0), MLK_ERR_ARG);
        CHECK_INT(mlk_cuda_kv_compact(l, E.pool.p, 0, NULL, 1, moves, 0), MLK_ERR_ARG);
        CHECK(mlk_cuda_kv_store_workspace_size(l) == 0);
    }
    CHECK_INT(mlk_cuda_kv_store<float>(&E.lay, E.pool.p, 0, NULL, -1, n, slots.p, k.p, v.p, st, NULL, 0, 0), MLK_ERR_ARG);
    CHECK_INT(mlk_cuda_kv_store<float>(&E.lay, E.pool.p, 0, NULL, 2, n, slots.p, k.p, v.p, st, NULL, 0, 0), MLK_ERR_ARG);
    CHECK_INT(mlk_cuda_kv_store<float>(&E.lay, E.pool.p, 0, NULL, 0, 0, slots.p, k.p, v.p, st, NULL, 0, 0), MLK_ERR_SHAPE);
    CHECK_INT(mlk_cuda_kv_store<float>(&E.lay, E.pool.p, -1, copies, 0, n, slots.p, k.p, v.p, st, NULL, 0, 0), MLK_ERR_ARG);
    CHECK_INT(mlk_cuda_kv_store<float>(&E.lay, E.pool.p, 1, bad_copies, 0, n, slots.p, k.p, v.p, st, NULL, 0, 0),
              MLK_ERR_ARG);
    CHECK_INT(mlk_cuda_kv_store<float>(&E.lay, E.pool.p, 0, NULL, 0, n, slots.p, k.p, v.p, st, ws.p, 16, 0), MLK_ERR_ARG);
    CHECK_INT(mlk_cuda_kv_store<float>(&E.lay, E.pool.p, 0, NULL, 0, n, slots.p, k.p, v.p, st, ws.p + 8, 256, 0),
              MLK_ERR_ARG);
    CHECK_INT(mlk_cuda_kv_compact(NULL, E.pool.p, 0, NULL, 1, moves, 0), MLK_ERR_NULL);
    CHECK_INT(mlk_cuda_kv_compact(&E.lay, NULL, 0, NULL, 1, moves, 0), MLK_ERR_NULL);
    CHECK_INT(mlk_cuda_kv_compact(&E.lay, E.pool.p, 1, NULL, 1, moves, 0), MLK_ERR_NULL);
    CHECK_INT(mlk_cuda_kv_compact(&E.lay, E.pool.p, 0, NULL, 1, NULL, 0), MLK_ERR_NULL);
    CHECK_INT(mlk_cuda_kv_compact(&E.lay, E.pool.p, 1, bad_copies, 1, moves, 0), MLK_ERR_ARG);
    CHECK_INT(mlk_cuda_kv_compact(&E.lay, E.pool.p, 0, NULL, 1, bad_moves, 0), MLK_ERR_ARG);
    CHECK_INT(mlk_cuda_kv_compact(&E.lay, E.pool.p, -1, copies, 0, NULL, 0), MLK_ERR_ARG);
    CHECK_INT(mlk_cuda_kv_compact(&E.lay, E.pool.p, 0, NULL, -1, moves, 0), MLK_ERR_ARG);
    CHECK_INT(mlk_cuda_kv_compact(&E.lay, E.pool.p + 4, 0, NULL, 1, moves, 0), MLK_ERR_ARG);
    CHECK_INT(mlk_cuda_kv_store<float>(&E.lay, E.pool.p + 4, 0, NULL, 0, n, slots.p, k.p, v.p, st, NULL, 0, 0),
              MLK_ERR_ARG);
    if (launches >= 0) CHECKF(mlkct_launches() == launches, "rejected calls launched %ld kernels", mlkct_launches() - launches);
    CHECK(dbuf_get(E.pool) == before);
    /* found on the device: a slot past the pool, then the status and no row written */
    std::vector<int64_t> far = {0, 32, 1};
    dbuf_put(slots, far.data());
    int status = device_step(E, "slot outside the pool", [&]() {
        CHECK_INT(mlk_cuda_kv_store<float>(&E.lay, E.pool.p, 0, NULL, 0, n, slots.p, k.p, v.p, st, NULL, 0, 0), MLK_OK);
    });
    CHECK_INT(status, MLK_ERR_ARG);
    CHECK(dbuf_get(E.pool) == before);
    dbuf_free(k);
    dbuf_free(v);
    dbuf_free(slots);
    dbuf_free(ws);
    env_free(E);
}

int main(void)
{
    MLKT_RUN(test_types_shapes, 1);
    MLKT_RUN(test_many_pairs, 3);
    MLKT_RUN(test_bad_arguments, 2);
    return mlkct_finish("test_kvstore");
}
