/* attention_flash.cuh - the kernels of attention_flash.cu (see there for
 * what they compute), in a header of their own so that
 * tests/unit/test_flash_emu.cpp can run the very same code on the CPU under
 * a small SIMT emulation (one host thread per CUDA thread, a barrier for
 * __syncthreads). Device code only: plain CUDA C++ without warp intrinsics,
 * atomics or anything else the emulation lacks. */
#ifndef NAWAL_ATTENTION_FLASH_CUH
#define NAWAL_ATTENTION_FLASH_CUH

#include "elementwise.h"
#include <math.h>

#ifdef __CUDACC__
#define FA_SHARED(name) extern __shared__ float name[]
#endif /* else the emulation defines FA_SHARED and the CUDA keywords */

#define FA_ROWS 64 /* threads per block, one owned row each */
#define FA_TILE 32 /* rows of the streamed operand per shared-memory tile */
/* owned rows are padded to HS + 4 floats: 16-byte aligned for float4 reads,
 * and the 8 threads of a quarter warp then cover all 32 banks once */
#define FA_STRIDE(HS) ((HS) + 4)

/* Launch geometry shared by the launcher and the emulation: every kernel
 * runs FA_ROWS threads per block on a grid of ceil(T / FA_ROWS) x (B*NH)
 * blocks; fa_smem_bytes is the dynamic shared memory of kernel `which`
 * (0 forward, 1 dq, 2 dk/dv) for the instance HS. */
static inline unsigned fa_grid_x(int T) { return (unsigned)((T + FA_ROWS - 1) / FA_ROWS); }
static inline size_t fa_smem_bytes(int which, int HS) {
    size_t own = (size_t)FA_ROWS * FA_STRIDE(HS) * sizeof(float), tile = (size_t)FA_TILE * HS * sizeof(float);
    return which == 0 ? own + 2 * tile : which == 1 ? 2 * own + 2 * tile : 2 * own + 2 * tile + 2 * FA_TILE * sizeof(float);
}

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

/* the block's owned rows (FA_ROWS x FA_STRIDE(HS) in sm) out to [T][ld], coalesced */
template <int HS>
__device__ static void store_rows(float *dst, size_t ld, const float *sm, int r0, int T, int hs) {
    for (int e = threadIdx.x; e < FA_ROWS * HS; e += blockDim.x) {
        int r = e / HS, d = e % HS, t = r0 + r;
        if (t < T && d < hs) dst[(size_t)t * ld + d] = sm[r * FA_STRIDE(HS) + d];
    }
}

/* the k and v rows [k0, k0 + FA_TILE) of a head (base: its q columns in
 * qkv[T][3C]) into two FA_TILE x HS tiles */
template <int HS>
__device__ static void load_kv_tile(float *ks, float *vs, const float *base, int C, int k0, int T, int hs) {
    load_rows<HS>(ks, HS, base + C, 3 * (size_t)C, k0, FA_TILE, T, hs, 1.0f);
    load_rows<HS>(vs, HS, base + 2 * C, 3 * (size_t)C, k0, FA_TILE, T, hs, 1.0f);
}

/* own . tile_row over HS floats, both 16-byte aligned, read as float4 (one
 * shared load per 4 FMAs on each side; the tile row is a broadcast) */
template <int HS>
__device__ static float dot_own(const float *own, const float *tile_row) {
    const float4 *a = reinterpret_cast<const float4 *>(own), *b = reinterpret_cast<const float4 *>(tile_row);
    float acc = 0.0f;
#pragma unroll 4 /* partial: a full unroll hoists HS loads into registers next to the accumulators */
    for (int i = 0; i < HS / 4; i++) {
        float4 x = a[i], y = b[i];
        acc += x.x * y.x;
        acc += x.y * y.y;
        acc += x.z * y.z;
        acc += x.w * y.w;
    }
    return acc;
}

/* shared memory: own q (FA_ROWS x (HS+1)), then k and v tiles (FA_TILE x HS each) */
template <int HS>
__global__ __launch_bounds__(FA_ROWS) static void flash_fwd_kernel(float *out, float *lse, const float *qkv, int T,
                                                                   int C, int NH, int hs, float scale) {
    FA_SHARED(sm);
    float *qs = sm, *ks = qs + FA_ROWS * FA_STRIDE(HS), *vs = ks + FA_TILE * HS;
    int pair = blockIdx.y, b = pair / NH, h = pair % NH;
    int q0 = (gridDim.x - 1 - blockIdx.x) * FA_ROWS, t = q0 + threadIdx.x; /* longest rows first */
    size_t C3 = 3 * (size_t)C;
    const float *base = qkv + (size_t)b * T * C3 + (size_t)h * hs;
    load_rows<HS>(qs, FA_STRIDE(HS), base, C3, q0, FA_ROWS, T, hs, scale);
    const float *qr = qs + threadIdx.x * FA_STRIDE(HS);
    float o[HS];
#pragma unroll
    for (int d = 0; d < HS; d++) o[d] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    int kend = min(T, q0 + FA_ROWS);
    for (int k0 = 0; k0 < kend; k0 += FA_TILE) {
        __syncthreads();
        load_kv_tile<HS>(ks, vs, base, C, k0, T, hs);
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
        float *orow = qs + threadIdx.x * FA_STRIDE(HS);
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
    FA_SHARED(sm);
    float *qs = sm, *dos = qs + FA_ROWS * FA_STRIDE(HS), *ks = dos + FA_ROWS * FA_STRIDE(HS), *vs = ks + FA_TILE * HS;
    int pair = blockIdx.y, b = pair / NH, h = pair % NH;
    int q0 = (gridDim.x - 1 - blockIdx.x) * FA_ROWS, t = q0 + threadIdx.x; /* longest rows first */
    size_t C3 = 3 * (size_t)C;
    const float *base = qkv + (size_t)b * T * C3 + (size_t)h * hs;
    load_rows<HS>(qs, FA_STRIDE(HS), base, C3, q0, FA_ROWS, T, hs, scale);
    load_rows<HS>(dos, FA_STRIDE(HS), dout + (size_t)b * T * C + (size_t)h * hs, C, q0, FA_ROWS, T, hs, 1.0f);
    const float *qr = qs + threadIdx.x * FA_STRIDE(HS), *dor = dos + threadIdx.x * FA_STRIDE(HS);
    float L = t < T ? lse[(size_t)pair * T + t] : 0.0f, D = 0.0f;
    int kend = min(T, q0 + FA_ROWS);
    for (int k0 = 0; k0 < kend; k0 += FA_TILE) { /* pass 1: D */
        __syncthreads();
        load_kv_tile<HS>(ks, vs, base, C, k0, T, hs);
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
        load_kv_tile<HS>(ks, vs, base, C, k0, T, hs);
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
        float *row = qs + threadIdx.x * FA_STRIDE(HS);
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
    FA_SHARED(sm);
    float *kso = sm, *vso = kso + FA_ROWS * FA_STRIDE(HS), *qt = vso + FA_ROWS * FA_STRIDE(HS), *dot = qt + FA_TILE * HS;
    float *lt = dot + FA_TILE * HS, *Dt = lt + FA_TILE;
    int pair = blockIdx.y, b = pair / NH, h = pair % NH;
    int j0 = blockIdx.x * FA_ROWS, j = j0 + threadIdx.x;
    size_t C3 = 3 * (size_t)C;
    const float *base = qkv + (size_t)b * T * C3 + (size_t)h * hs, *dbase = dout + (size_t)b * T * C + (size_t)h * hs;
    load_rows<HS>(kso, FA_STRIDE(HS), base + C, C3, j0, FA_ROWS, T, hs, 1.0f);
    load_rows<HS>(vso, FA_STRIDE(HS), base + 2 * C, C3, j0, FA_ROWS, T, hs, 1.0f);
    const float *kr = kso + threadIdx.x * FA_STRIDE(HS), *vr = vso + threadIdx.x * FA_STRIDE(HS);
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
        float *kw = kso + threadIdx.x * FA_STRIDE(HS), *vw = vso + threadIdx.x * FA_STRIDE(HS);
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

#endif
