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
 * default: written without a GPU at hand (checked on the CPU by
 * tests/emu/test_flash_emu.cpp), it waits for tests/gpu/run.sh's verdict and
 * timing. Pair p = b * NH + h; scores s_tj = (q_t . k_j) / sqrt(hs), j <= t.
 *
 * One thread owns one row (a query row in the forward and the dQ kernel, a
 * key row in the dK/dV kernel), keeps its accumulators in registers and its
 * own q / do / k / v rows in shared memory (row stride HS + 4, read as
 * float4 without bank conflicts); the other operand streams
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
 * p_tj = exp(s_tj - lse_t) with the shared nawal_expf (the CPU's formula).
 * The kernels live in attention_flash.cuh; this file launches them.
 *
 * Expected speed (a review's estimate, not measured): these run on the fp32
 * units and are bound by shared-memory loads, so on GPT-2 small (T 1024,
 * hs 64) they are likely slower than the batched-GEMM path's tensor cores
 * (~5.5 + 9.9 ms per step on an H200), the backward most. The way to the
 * goal is a tensor-core version (mma.sync on 16-row warp tiles, cp.async
 * double buffering, P in registers) keeping this book-keeping and these
 * tests; D_t = dO_t . O_t from the forward's output would drop the dq
 * kernel's first pass. */
#include "cuda_common.h"
#include "attention_flash.cuh"
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* the switch is read at the first attention call and kept for the
 * process: a forward and its backward must agree on what att holds */
int cuda_flash_attention_on(int hs) {
    static int on = -1;
    if (on < 0) {
        const char *e = getenv("NAWAL_CUDA_ATTENTION");
        on = e && !strcmp(e, "flash");
    }
    return on && hs >= 1 && hs <= 64;
}

/* launches the HS instance of the three kernels, with the dynamic shared
 * memory each needs (opted in above 48 KiB once per kernel) */
template <int HS>
static void launch(const nawal_ops *o, const char *op, int which, float *a, float *b2, const float *c1, const float *c2,
                   const float *c3, int B, int T, int C, int NH) {
    cuda_state *s = CUDA_STATE(o);
    int hs = C / NH;
    float scale = 1.0f / sqrtf((float)hs);
    dim3 grid(fa_grid_x(T), (unsigned)(B * NH));
    if (grid.y > 65535u) cuda_fatal(op, "launch", "B * NH above 65535", __FILE__, __LINE__);
    static int opted[3]; /* per instance; the backend drives one device from one host thread */
    size_t bytes = fa_smem_bytes(which, HS);
    if (which == 0) {
        if (!opted[0]) CUDA_CHECK(op, cudaFuncSetAttribute(flash_fwd_kernel<HS>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
        opted[0] = 1;
        flash_fwd_kernel<HS><<<grid, FA_ROWS, bytes, s->stream>>>(a, b2, c1, T, C, NH, hs, scale);
        LAUNCH_CHECK(op, "flash_fwd_kernel");
    } else if (which == 1) {
        if (!opted[1]) CUDA_CHECK(op, cudaFuncSetAttribute(flash_dq_kernel<HS>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
        opted[1] = 1;
        flash_dq_kernel<HS><<<grid, FA_ROWS, bytes, s->stream>>>(a, b2, c1, c2, c3, T, C, NH, hs, scale);
        LAUNCH_CHECK(op, "flash_dq_kernel");
    } else {
        if (!opted[2]) CUDA_CHECK(op, cudaFuncSetAttribute(flash_dkv_kernel<HS>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
        opted[2] = 1;
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
