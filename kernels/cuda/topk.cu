/* topk.cu - the CUDA backend's topk_select (ops.h): a radix select on the
 * magnitude bits, then a stable compaction; no sort. The order and the
 * digits are kernels/topk.h's, shared with the CPU backend (cpu/topk.c), so
 * both select exactly the same elements (tests/gpu/test_gpu_topk.c).
 *
 *   1. Three histogram passes over x (11, 10 and 10 bits of the 31-bit
 *      key), each counting the digit of the elements whose higher digits
 *      equal the prefix found so far: block-private histograms in shared
 *      memory, added into global bins (integer counts, so exact whatever the
 *      scheduling). After each pass one thread scans the bins
 *      (nawal_topk_pick) and extends the prefix in device memory.
 *   2. The prefix is then T, the k-th largest key, and `need` of the
 *      elements equal to T win: the first `need` in index order. A counting
 *      pass gives each tile of TOPK_TILE elements its number of keys above T
 *      and equal to T; one block scans those counts into tile offsets.
 *   3. A writing pass: each tile keeps its keys above T and the ties whose
 *      rank among all ties (tile offset + rank in the tile) is below `need`,
 *      and writes them at its offset in index order.
 * Everything stays on the device and on the backend's stream (no host
 * round trip); scratch (state, bins, tile counts) is carved from the
 * backend's grow-only scratch buffer. Counts are 32-bit: n <= UINT32_MAX. */
#include "cuda_map.cuh"
#include "topk.h"
#include <cub/block/block_scan.cuh>

#define TOPK_THREADS 256
#define TOPK_ITEMS 8                            /* consecutive elements per thread in a tile */
#define TOPK_TILE (TOPK_THREADS * TOPK_ITEMS)   /* elements per tile of the compaction */

typedef struct {
    unsigned long long need; /* k, then how many of T's ties win */
    uint32_t prefix;         /* the digits found so far; T after the last level */
} topk_state;

/* bins of each level inside one array of 2048 + 1024 + 1024 */
__host__ __device__ static inline size_t topk_bin_offset(int level) { return level == 0 ? 0 : level == 1 ? 2048 : 3072; }
#define TOPK_BINS_TOTAL 4096

__global__ static void topk_init_kernel(topk_state *st, unsigned long long k) {
    st->need = k;
    st->prefix = 0;
}

__global__ static void topk_hist_kernel(unsigned long long *bins, const float *x, size_t n, const topk_state *st,
                                        int level) {
    __shared__ unsigned int h[NAWAL_TOPK_MAX_BINS];
    const int bits = nawal_topk_bits(level), shift = nawal_topk_shift(level);
    const uint32_t nb = 1u << bits, prefix = st->prefix;
    for (uint32_t b = threadIdx.x; b < nb; b += blockDim.x) h[b] = 0;
    __syncthreads();
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t key = nawal_topk_key(x[i]);
        if ((key >> (shift + bits)) == prefix) atomicAdd(&h[(key >> shift) & (nb - 1)], 1u);
    }
    __syncthreads();
    for (uint32_t b = threadIdx.x; b < nb; b += blockDim.x)
        if (h[b]) atomicAdd(&bins[b], (unsigned long long)h[b]);
}

__global__ static void topk_pick_kernel(topk_state *st, const unsigned long long *bins, int level) {
    unsigned long long above;
    uint32_t d = nawal_topk_pick(bins, 1u << nawal_topk_bits(level), st->need, &above);
    st->need -= above;
    st->prefix = st->prefix << nawal_topk_bits(level) | d;
}

typedef cub::BlockScan<uint32_t, TOPK_THREADS> topk_scan;

/* gt[tile], eq[tile] = how many keys of the tile are above T, equal to T */
__global__ static void topk_count_kernel(uint32_t *gt, uint32_t *eq, const float *x, size_t n, const topk_state *st) {
    __shared__ uint32_t sg, se;
    const uint32_t T = st->prefix;
    if (threadIdx.x == 0) sg = se = 0;
    __syncthreads();
    size_t i0 = (size_t)blockIdx.x * TOPK_TILE + (size_t)threadIdx.x * TOPK_ITEMS;
    uint32_t g = 0, e = 0;
    for (int j = 0; j < TOPK_ITEMS; j++) {
        if (i0 + j >= n) break;
        uint32_t key = nawal_topk_key(x[i0 + j]);
        g += key > T;
        e += key == T;
    }
    if (g) atomicAdd(&sg, g);
    if (e) atomicAdd(&se, e);
    __syncthreads();
    if (threadIdx.x == 0) {
        gt[blockIdx.x] = sg;
        eq[blockIdx.x] = se;
    }
}

/* In place: gt[t], eq[t] become the counts of the tiles before t (one block;
 * each thread scans a contiguous run of tiles). */
__global__ static void topk_offsets_kernel(uint32_t *gt, uint32_t *eq, uint32_t ntiles) {
    __shared__ typename topk_scan::TempStorage tmp;
    uint32_t per = (ntiles + TOPK_THREADS - 1) / TOPK_THREADS;
    uint32_t a = threadIdx.x * per, b = a + per < ntiles ? a + per : ntiles;
    if (a > ntiles) a = ntiles;
    uint32_t sg = 0, se = 0;
    for (uint32_t t = a; t < b; t++) {
        sg += gt[t];
        se += eq[t];
    }
    topk_scan(tmp).ExclusiveSum(sg, sg);
    __syncthreads();
    topk_scan(tmp).ExclusiveSum(se, se);
    for (uint32_t t = a; t < b; t++) {
        uint32_t g = gt[t], e = eq[t];
        gt[t] = sg;
        eq[t] = se;
        sg += g;
        se += e;
    }
}

/* Writes the tile's winners at its offset: keys above T, and ties whose rank
 * among all ties is below need. */
__global__ static void topk_write_kernel(uint32_t *idx_out, const uint32_t *gt_before, const uint32_t *eq_before,
                                         const float *x, size_t n, const topk_state *st) {
    __shared__ typename topk_scan::TempStorage tmp;
    const uint32_t T = st->prefix;
    const unsigned long long need = st->need;
    size_t i0 = (size_t)blockIdx.x * TOPK_TILE + (size_t)threadIdx.x * TOPK_ITEMS;
    uint32_t key[TOPK_ITEMS], e = 0;
    for (int j = 0; j < TOPK_ITEMS; j++) {
        key[j] = i0 + j < n ? nawal_topk_key(x[i0 + j]) : 0u;
        e += i0 + j < n && key[j] == T;
    }
    uint32_t tie_rank; /* rank among all ties of this thread's first tie */
    topk_scan(tmp).ExclusiveSum(e, tie_rank);
    tie_rank += eq_before[blockIdx.x];
    uint32_t keep = 0, r = tie_rank;
    for (int j = 0; j < TOPK_ITEMS; j++) {
        if (i0 + j >= n) break;
        if (key[j] > T) keep++;
        else if (key[j] == T) keep += r++ < need;
    }
    uint32_t pos;
    __syncthreads();
    topk_scan(tmp).ExclusiveSum(keep, pos);
    unsigned long long ties_before = eq_before[blockIdx.x] < need ? eq_before[blockIdx.x] : need;
    uint32_t *out = idx_out + gt_before[blockIdx.x] + ties_before + pos;
    r = tie_rank;
    for (int j = 0; j < TOPK_ITEMS; j++) {
        if (i0 + j >= n) break;
        if (key[j] > T || (key[j] == T && r++ < need)) *out++ = (uint32_t)(i0 + j);
    }
}

static size_t align_up(size_t v) { return (v + 255) / 256 * 256; }

size_t cuda_topk_select(const nawal_ops *o, uint32_t *idx_out, const float *x, size_t n, size_t k) {
    cuda_state *s = CUDA_STATE(o);
    if (k > n) k = n;
    if (k == 0) return 0;
    if (k == n) {
        cuda_map(o, "topk_select", n, [=] __device__(size_t i) { idx_out[i] = (uint32_t)i; });
        return n;
    }
    size_t ntiles = (n + TOPK_TILE - 1) / TOPK_TILE;
    /* scratch: [state][bins][gt per tile][eq per tile] */
    size_t off_bins = align_up(sizeof(topk_state)), off_gt = off_bins + align_up(TOPK_BINS_TOTAL * sizeof(unsigned long long));
    size_t off_eq = off_gt + align_up(ntiles * sizeof(uint32_t)), total = off_eq + align_up(ntiles * sizeof(uint32_t));
    char *base = (char *)cuda_scratch(o, total);
    topk_state *st = (topk_state *)base;
    unsigned long long *bins = (unsigned long long *)(base + off_bins);
    uint32_t *gt = (uint32_t *)(base + off_gt), *eq = (uint32_t *)(base + off_eq);

    CUDA_CHECK("topk_select", cudaMemsetAsync(bins, 0, TOPK_BINS_TOTAL * sizeof(unsigned long long), s->stream));
    topk_init_kernel<<<1, 1, 0, s->stream>>>(st, k);
    LAUNCH_CHECK("topk_select", "topk_init_kernel");
    unsigned grid = cuda_blocks(n, TOPK_THREADS);
    unsigned max_grid = (unsigned)s->prop.multiProcessorCount * 8; /* fills the GPU with few bin flushes */
    if (grid > max_grid) grid = max_grid;
    for (int l = 0; l < NAWAL_TOPK_LEVELS; l++) {
        topk_hist_kernel<<<grid, TOPK_THREADS, 0, s->stream>>>(bins + topk_bin_offset(l), x, n, st, l);
        LAUNCH_CHECK("topk_select", "topk_hist_kernel");
        topk_pick_kernel<<<1, 1, 0, s->stream>>>(st, bins + topk_bin_offset(l), l);
        LAUNCH_CHECK("topk_select", "topk_pick_kernel");
    }
    topk_count_kernel<<<(unsigned)ntiles, TOPK_THREADS, 0, s->stream>>>(gt, eq, x, n, st);
    LAUNCH_CHECK("topk_select", "topk_count_kernel");
    topk_offsets_kernel<<<1, TOPK_THREADS, 0, s->stream>>>(gt, eq, (uint32_t)ntiles);
    LAUNCH_CHECK("topk_select", "topk_offsets_kernel");
    topk_write_kernel<<<(unsigned)ntiles, TOPK_THREADS, 0, s->stream>>>(idx_out, gt, eq, x, n, st);
    LAUNCH_CHECK("topk_select", "topk_write_kernel");
    return k;
}
