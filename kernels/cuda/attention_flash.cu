/* attention_flash.cu - fused causal attention (flash-style), forward and
 * backward, never writing the T x T probabilities.
 *
 * The op's contract is attention.cu's (same out and dqkv); only the
 * book-keeping differs: the forward leaves each query row's log-sum-exp
 * lse = max + log(sum exp(s - max)) in att[pair][t] (the first B*NH*T
 * floats of att), the backward leaves D_t = sum_j P_tj dP_tj in the first
 * B*NH*T floats of datt. Selected by NAWAL_CUDA_ATTENTION=flash for head
 * sizes up to 64 (the variable is checked at open and read at every call);
 * everything else takes attention.cu's batched-GEMM path. Not yet the
 * default: written without a GPU at hand, it waits for tests/gpu/run.sh. Pair p = b * NH + h; scores s_tj = (q_t . k_j) / sqrt(hs), j <= t.
 *
 * One thread owns one row (a query row in the forward and the dQ kernel, a
 * key row in the dK/dV kernel), keeps its accumulators in registers and its
 * own q / do / k / v rows in shared memory (row stride HS + 1, so the 64
 * threads of a block read 64 different banks); the other operand streams
 * through shared memory in tiles of FA_TILE rows that every thread reads at
 * the same address (broadcast). Head dimensions above hs up to HS are zero.
 * Each output element is written by one thread and summed in a fixed order:
 * reruns are bitwise identical.
 *
 *   forward    grid (ceil(T / FA_ROWS), B*NH): out, lse; keys 0 .. t, tile by
 *              tile with one online-softmax rescale per tile.
 *   dq kernel  same grid: pass 1 D_t = sum_j p_tj (do_t . v_j), pass 2
 *              dq_t = scale sum_j p_tj (do_t . v_j - D_t) k_j; writes D.
 *   dkv kernel grid over key rows: for every query i >= j,
 *              dv_j += p_ij do_i, dk_j += p_ij (do_i . v_j - D_i) scale q_i.
 * p_tj = exp(s_tj - lse_t) with the shared nawal_expf (the CPU's formula). */
#include "cuda_common.h"
#include "elementwise.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define FA_ROWS 64 /* threads per block, one owned row each */
#define FA_TILE 32 /* rows of the streamed operand per shared-memory tile */

/* rows [r0, r0 + n) of the head slice (columns col .. col + hs) of a [T][ld]
 * matrix into dst (n x stride), times mul, zero past T and past hs */
template <int HS>
__device__ static void load_rows(float *dst, int stride, const float *src, size_t ld, int r0, int n, int T, int hs,
                                 float mul) {
    for (int e = threadIdx.x; e < n * HS; e += blockDim.x) {
        int r = e / HS, d = e % HS, t = r0 + r;
        dst[r * stride + d] = (t < T && d < hs) ? src[(size_t)t * ld + d] * mul : 0.0f;
    }
}

/* the block's owned rows (FA_ROWS x (HS + 1) in sm) out to [T][ld], coalesced */
template <int HS>
__device__ static void store_rows(float *dst, size_t ld, const float *sm, int r0, int T, int hs) {
    for (int e = threadIdx.x; e < FA_ROWS * HS; e += blockDim.x) {
        int r = e / HS, d = e % HS, t = r0 + r;
        if (t < T && d < hs) dst[(size_t)t * ld + d] = sm[r * (HS + 1) + d];
    }
}

template <int HS>
__device__ static float dot_own(const float *own, const float *tile_row) {
    float acc = 0.0f;
#pragma unroll 16 /* partial: a full unroll hoists HS loads into registers next to the accumulators */
    for (int d = 0; d < HS; d++) acc += own[d] * tile_row[d];
    return acc;
}

/* shared memory: own q (FA_ROWS x (HS+1)), then k and v tiles (FA_TILE x HS each) */
template <int HS>
__global__ __launch_bounds__(FA_ROWS) static void flash_fwd_kernel(float *out, float *lse, const float *qkv, int T,
                                                                   int C, int NH, int hs, float scale) {
    extern __shared__ float sm[];
    float *qs = sm, *ks = qs + FA_ROWS * (HS + 1), *vs = ks + FA_TILE * HS;
    int pair = blockIdx.y, b = pair / NH, h = pair % NH;
    int q0 = blockIdx.x * FA_ROWS, t = q0 + threadIdx.x;
    size_t C3 = 3 * (size_t)C;
    const float *base = qkv + (size_t)b * T * C3 + (size_t)h * hs;
    load_rows<HS>(qs, HS + 1, base, C3, q0, FA_ROWS, T, hs, scale);
    const float *qr = qs + threadIdx.x * (HS + 1);
    float o[HS];
#pragma unroll
    for (int d = 0; d < HS; d++) o[d] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    int kend = min(T, q0 + FA_ROWS);
    for (int k0 = 0; k0 < kend; k0 += FA_TILE) {
        __syncthreads();
        load_rows<HS>(ks, HS, base + C, C3, k0, FA_TILE, T, hs, 1.0f);
        load_rows<HS>(vs, HS, base + 2 * C, C3, k0, FA_TILE, T, hs, 1.0f);
        __syncthreads();
        if (t >= T || k0 > t) continue; /* nothing of this tile for this row (no barrier below) */
        float s[FA_TILE], tmax = -INFINITY;
#pragma unroll
        for (int j = 0; j < FA_TILE; j++) {
            s[j] = dot_own<HS>(qr, ks + j * HS);
            if (k0 + j <= t) tmax = fmaxf(tmax, s[j]);
        }
        float mnew = fmaxf(m, tmax); /* key k0 <= t is in: finite */
        float corr = m == -INFINITY ? 0.0f : nawal_expf(m - mnew);
        l *= corr;
#pragma unroll
        for (int d = 0; d < HS; d++) o[d] *= corr;
#pragma unroll
        for (int j = 0; j < FA_TILE; j++) {
            float p = k0 + j <= t ? nawal_expf(s[j] - mnew) : 0.0f;
            l += p;
#pragma unroll
            for (int d = 0; d < HS; d++) o[d] += p * vs[j * HS + d];
        }
        m = mnew;
    }
    __syncthreads(); /* qs is reused for the output rows */
    if (t < T) {
        float inv = 1.0f / l;
        float *orow = qs + threadIdx.x * (HS + 1);
#pragma unroll
        for (int d = 0; d < HS; d++) orow[d] = o[d] * inv;
        lse[(size_t)pair * T + t] = m + logf(l);
    }
    __syncthreads();
    store_rows<HS>(out + (size_t)b * T * C + (size_t)h * hs, C, qs, q0, T, hs);
}

/* shared memory: own q, own do (FA_ROWS x (HS+1) each), k and v tiles */
template <int HS>
__global__ __launch_bounds__(FA_ROWS) static void flash_dq_kernel(float *dqkv, float *Dsum, const float *dout,
                                                                  const float *qkv, const float *lse, int T, int C,
                                                                  int NH, int hs, float scale) {
    extern __shared__ float sm[];
    float *qs = sm, *dos = qs + FA_ROWS * (HS + 1), *ks = dos + FA_ROWS * (HS + 1), *vs = ks + FA_TILE * HS;
    int pair = blockIdx.y, b = pair / NH, h = pair % NH;
    int q0 = blockIdx.x * FA_ROWS, t = q0 + threadIdx.x;
    size_t C3 = 3 * (size_t)C;
    const float *base = qkv + (size_t)b * T * C3 + (size_t)h * hs;
    load_rows<HS>(qs, HS + 1, base, C3, q0, FA_ROWS, T, hs, scale);
    load_rows<HS>(dos, HS + 1, dout + (size_t)b * T * C + (size_t)h * hs, C, q0, FA_ROWS, T, hs, 1.0f);
    const float *qr = qs + threadIdx.x * (HS + 1), *dor = dos + threadIdx.x * (HS + 1);
    float L = t < T ? lse[(size_t)pair * T + t] : 0.0f, D = 0.0f;
    int kend = min(T, q0 + FA_ROWS);
    for (int k0 = 0; k0 < kend; k0 += FA_TILE) { /* pass 1: D */
        __syncthreads();
        load_rows<HS>(ks, HS, base + C, C3, k0, FA_TILE, T, hs, 1.0f);
        load_rows<HS>(vs, HS, base + 2 * C, C3, k0, FA_TILE, T, hs, 1.0f);
        __syncthreads();
        if (t >= T || k0 > t) continue;
        for (int j = 0; j < FA_TILE && k0 + j <= t; j++)
            D += nawal_expf(dot_own<HS>(qr, ks + j * HS) - L) * dot_own<HS>(dor, vs + j * HS);
    }
    float dq[HS];
#pragma unroll
    for (int d = 0; d < HS; d++) dq[d] = 0.0f;
    for (int k0 = 0; k0 < kend; k0 += FA_TILE) { /* pass 2: dq */
        __syncthreads();
        load_rows<HS>(ks, HS, base + C, C3, k0, FA_TILE, T, hs, 1.0f);
        load_rows<HS>(vs, HS, base + 2 * C, C3, k0, FA_TILE, T, hs, 1.0f);
        __syncthreads();
        if (t >= T || k0 > t) continue;
        for (int j = 0; j < FA_TILE && k0 + j <= t; j++) {
            float p = nawal_expf(dot_own<HS>(qr, ks + j * HS) - L);
            float ds = p * (dot_own<HS>(dor, vs + j * HS) - D);
#pragma unroll
            for (int d = 0; d < HS; d++) dq[d] += ds * ks[j * HS + d];
        }
    }
    __syncthreads(); /* qs is reused for the output rows */
    if (t < T) {
        Dsum[(size_t)pair * T + t] = D;
        float *row = qs + threadIdx.x * (HS + 1);
#pragma unroll
        for (int d = 0; d < HS; d++) row[d] = dq[d] * scale;
    }
    __syncthreads();
    store_rows<HS>(dqkv + (size_t)b * T * C3 + (size_t)h * hs, C3, qs, q0, T, hs);
}

/* shared memory: own k, own v (FA_ROWS x (HS+1) each), q (scaled) and do
 * tiles (FA_TILE x HS each), then the tile's lse and D (FA_TILE each) */
template <int HS>
__global__ __launch_bounds__(FA_ROWS) static void flash_dkv_kernel(float *dqkv, const float *dout, const float *qkv,
                                                                   const float *lse, const float *Dsum, int T, int C,
                                                                   int NH, int hs, float scale) {
    extern __shared__ float sm[];
    float *kso = sm, *vso = kso + FA_ROWS * (HS + 1), *qt = vso + FA_ROWS * (HS + 1), *dot = qt + FA_TILE * HS;
    float *lt = dot + FA_TILE * HS, *Dt = lt + FA_TILE;
    int pair = blockIdx.y, b = pair / NH, h = pair % NH;
    int j0 = blockIdx.x * FA_ROWS, j = j0 + threadIdx.x;
    size_t C3 = 3 * (size_t)C;
    const float *base = qkv + (size_t)b * T * C3 + (size_t)h * hs, *dbase = dout + (size_t)b * T * C + (size_t)h * hs;
    load_rows<HS>(kso, HS + 1, base + C, C3, j0, FA_ROWS, T, hs, 1.0f);
    load_rows<HS>(vso, HS + 1, base + 2 * C, C3, j0, FA_ROWS, T, hs, 1.0f);
    const float *kr = kso + threadIdx.x * (HS + 1), *vr = vso + threadIdx.x * (HS + 1);
    float dk[HS], dv[HS];
#pragma unroll
    for (int d = 0; d < HS; d++) dk[d] = dv[d] = 0.0f;
    for (int i0 = j0; i0 < T; i0 += FA_TILE) { /* queries before j0 see none of these keys */
        __syncthreads();
        load_rows<HS>(qt, HS, base, C3, i0, FA_TILE, T, hs, scale);
        load_rows<HS>(dot, HS, dbase, C, i0, FA_TILE, T, hs, 1.0f);
        for (int e = threadIdx.x; e < FA_TILE; e += blockDim.x) {
            int i = i0 + e;
            lt[e] = i < T ? lse[(size_t)pair * T + i] : 0.0f;
            Dt[e] = i < T ? Dsum[(size_t)pair * T + i] : 0.0f;
        }
        __syncthreads();
        if (j >= T) continue;
        for (int e = 0; e < FA_TILE; e++) {
            int i = i0 + e;
            if (i < j || i >= T) continue;
            float p = nawal_expf(dot_own<HS>(kr, qt + e * HS) - lt[e]);
            float dp = dot_own<HS>(vr, dot + e * HS);
            float ds = p * (dp - Dt[e]);
#pragma unroll
            for (int d = 0; d < HS; d++) {
                dv[d] += p * dot[e * HS + d];
                dk[d] += ds * qt[e * HS + d];
            }
        }
    }
    __syncthreads(); /* kso / vso are reused for the output rows */
    if (j < T) {
        float *kw = kso + threadIdx.x * (HS + 1), *vw = vso + threadIdx.x * (HS + 1);
#pragma unroll
        for (int d = 0; d < HS; d++) {
            kw[d] = dk[d];
            vw[d] = dv[d];
        }
    }
    __syncthreads();
    float *dbq = dqkv + (size_t)b * T * C3 + (size_t)h * hs;
    store_rows<HS>(dbq + C, C3, kso, j0, T, hs);
    store_rows<HS>(dbq + 2 * C, C3, vso, j0, T, hs);
}

static size_t own_bytes(int hs_pad, int owned) { return (size_t)owned * FA_ROWS * (hs_pad + 1) * sizeof(float); }
static size_t tile_bytes(int hs_pad, int tiles) { return (size_t)tiles * FA_TILE * hs_pad * sizeof(float); }

int cuda_flash_attention_on(int hs) {
    const char *e = getenv("NAWAL_CUDA_ATTENTION");
    return e && !strcmp(e, "flash") && hs >= 1 && hs <= 64;
}

/* launches the HS instance of the three kernels, with the dynamic shared
 * memory each needs (opted in above 48 KiB once per kernel) */
template <int HS>
static void launch(const nawal_ops *o, const char *op, int which, float *a, float *b2, const float *c1, const float *c2,
                   const float *c3, int B, int T, int C, int NH) {
    cuda_state *s = CUDA_STATE(o);
    int hs = C / NH;
    float scale = 1.0f / sqrtf((float)hs);
    dim3 grid((unsigned)((T + FA_ROWS - 1) / FA_ROWS), (unsigned)(B * NH));
    if (grid.y > 65535u) cuda_fatal(op, "launch", "B * NH above 65535", __FILE__, __LINE__);
    static int opted[3];
    size_t bytes;
    if (which == 0) {
        bytes = own_bytes(HS, 1) + tile_bytes(HS, 2);
        if (!opted[0]++) CUDA_CHECK(op, cudaFuncSetAttribute(flash_fwd_kernel<HS>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
        flash_fwd_kernel<HS><<<grid, FA_ROWS, bytes, s->stream>>>(a, b2, c1, T, C, NH, hs, scale);
        LAUNCH_CHECK(op, "flash_fwd_kernel");
    } else if (which == 1) {
        bytes = own_bytes(HS, 2) + tile_bytes(HS, 2);
        if (!opted[1]++) CUDA_CHECK(op, cudaFuncSetAttribute(flash_dq_kernel<HS>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
        flash_dq_kernel<HS><<<grid, FA_ROWS, bytes, s->stream>>>(a, b2, c1, c2, c3, T, C, NH, hs, scale);
        LAUNCH_CHECK(op, "flash_dq_kernel");
    } else {
        bytes = own_bytes(HS, 2) + tile_bytes(HS, 2) + 2 * FA_TILE * sizeof(float);
        if (!opted[2]++) CUDA_CHECK(op, cudaFuncSetAttribute(flash_dkv_kernel<HS>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
        flash_dkv_kernel<HS><<<grid, FA_ROWS, bytes, s->stream>>>(a, c1, c2, c3, b2, T, C, NH, hs, scale);
        LAUNCH_CHECK(op, "flash_dkv_kernel");
    }
}

static void dispatch(const nawal_ops *o, const char *op, int which, float *a, float *b2, const float *c1,
                     const float *c2, const float *c3, int B, int T, int C, int NH) {
    int hs = C / NH;
    if (hs <= 32) launch<32>(o, op, which, a, b2, c1, c2, c3, B, T, C, NH);
    else if (hs <= 64) launch<64>(o, op, which, a, b2, c1, c2, c3, B, T, C, NH);
    else cuda_fatal(op, "flash attention", "head size above 64 (caller must check cuda_flash_attention_on)",
                    __FILE__, __LINE__);
}

/* out[B][T][C], lse in att[0 .. B*NH*T) */
void cuda_flash_attention_fwd(const nawal_ops *o, float *out, float *att, const float *qkv, int B, int T, int C,
                              int NH) {
    if (B <= 0 || T <= 0) return;
    dispatch(o, "attention_fwd", 0, out, att, qkv, NULL, NULL, B, T, C, NH);
}

/* dqkv[B][T][3C]; D in datt[0 .. B*NH*T) (scratch), lse from the forward's att */
void cuda_flash_attention_bwd(const nawal_ops *o, float *dqkv, float *datt, const float *dout, const float *qkv,
                              const float *att, int B, int T, int C, int NH) {
    if (B <= 0 || T <= 0) return;
    /* dq kernel: dqkv's q part and D; then the dk/dv kernel reads D */
    dispatch(o, "attention_bwd", 1, dqkv, datt, dout, qkv, att, B, T, C, NH);
    /* launch(which 2) maps (a, b2, c1, c2, c3) to (dqkv, Dsum, dout, qkv, lse) */
    dispatch(o, "attention_bwd", 2, dqkv, datt, dout, qkv, att, B, T, C, NH);
}
