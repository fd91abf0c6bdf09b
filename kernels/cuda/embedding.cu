/* embedding.cu - CUDA token + position embedding forward/backward.
 *
 * The token-embedding gradient is a scatter-add by token id. To stay
 * deterministic without atomics, positions are stably sorted by token
 * (CUB radix sort, so equal tokens keep position order), then one block per
 * run of equal tokens adds that run's gradient rows in position order, the
 * same order the CPU backend uses. */
#include "cuda_map.cuh"
#include <cub/device/device_radix_sort.cuh>

void cuda_embedding_fwd(const nawal_ops *o, float *out, const int32_t *tok,
                        const float *wte, const float *wpe, int B, int T, int C) {
    size_t n = (size_t)B * T * C;
    cuda_map(o, "embedding_fwd", n, [=] __device__(size_t i) {
        size_t row = i / C, c = i % C;
        int t = (int)(row % T);
        out[i] = wte[(size_t)tok[row] * C + c] + wpe[(size_t)t * C + c];
    });
}

/* block k: if sorted position k starts a run of equal tokens, add the run's
 * dout rows (in position order) into dwte[token] */
__global__ static void embedding_run_kernel(float *dwte, const float *dout, const int32_t *keys,
                                            const int32_t *pos, int N, int C) {
    int k = blockIdx.x;
    int tokv = keys[k];
    if (k > 0 && keys[k - 1] == tokv) return;
    int end = k + 1;
    while (end < N && keys[end] == tokv) end++;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float acc = dwte[(size_t)tokv * C + c];
        for (int j = k; j < end; j++) acc += dout[(size_t)pos[j] * C + c];
        dwte[(size_t)tokv * C + c] = acc;
    }
}

void cuda_embedding_bwd(const nawal_ops *o, float *dwte, float *dwpe, const float *dout,
                        const int32_t *tok, int B, int T, int C) {
    cuda_state *s = CUDA_STATE(o);
    int N = B * T;
    if (N <= 0) return;
    /* dwpe[t][c] += sum over b of dout[b][t][c], b in order */
    cuda_map(o, "embedding_bwd", (size_t)T * C, [=] __device__(size_t i) {
        float acc = dwpe[i];
        for (int b = 0; b < B; b++) acc += dout[(size_t)b * T * C + i];
        dwpe[i] = acc;
    });
    /* scratch: keys_out[N], pos_in[N], pos_out[N], CUB temp */
    size_t temp_bytes = 0;
    CUDA_CHECK("embedding_bwd", cub::DeviceRadixSort::SortPairs(NULL, temp_bytes, (const int32_t *)NULL, (int32_t *)NULL,
                                                                (const int32_t *)NULL, (int32_t *)NULL, N, 0, 32, s->stream));
    size_t ints = ((size_t)3 * N + 63) / 64 * 64;
    char *base = (char *)cuda_scratch(o, ints * sizeof(int32_t) + temp_bytes);
    int32_t *keys_out = (int32_t *)base, *pos_in = keys_out + N, *pos_out = pos_in + N;
    void *temp = base + ints * sizeof(int32_t);
    cuda_map(o, "embedding_bwd", (size_t)N, [=] __device__(size_t i) { pos_in[i] = (int32_t)i; });
    /* stable: equal tokens keep their position order */
    CUDA_CHECK("embedding_bwd", cub::DeviceRadixSort::SortPairs(temp, temp_bytes, tok, keys_out, pos_in, pos_out, N,
                                                                0, 32, s->stream));
    int threads = C < 256 ? ((C + 31) / 32) * 32 : 256;
    embedding_run_kernel<<<N, threads, 0, s->stream>>>(dwte, dout, keys_out, pos_out, N, C);
    LAUNCH_CHECK("embedding_bwd", "embedding_run_kernel");
}
