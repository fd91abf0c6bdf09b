/* activations.c - CPU tanh-GELU and residual add; the per-element formulas
 * come from elementwise.h, shared with the CUDA backend. */
#include "cpu_ops.h"
#include "elementwise.h"

static void gelu_fwd_range(float *restrict out, const float *restrict inp, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = nawal_gelu(inp[i]);
}

/* dinp may alias dout: each element reads dout[i] before writing dinp[i] */
static void gelu_bwd_range(float *dinp, const float *restrict inp, const float *dout, size_t n) {
    for (size_t i = 0; i < n; i++) dinp[i] = nawal_gelu_grad(inp[i]) * dout[i];
}

static void add_range(float *restrict out, const float *restrict a, const float *restrict b, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

void cpu_gelu_fwd(const nawal_ops *o, float *out, const float *inp, size_t n) {
    (void)o;
    #pragma omp parallel
    {
        size_t lo, hi;
        cpu_thread_range(n, &lo, &hi);
        gelu_fwd_range(out + lo, inp + lo, hi - lo);
    }
}

void cpu_gelu_bwd(const nawal_ops *o, float *dinp, const float *inp, const float *dout, size_t n) {
    (void)o;
    #pragma omp parallel
    {
        size_t lo, hi;
        cpu_thread_range(n, &lo, &hi);
        gelu_bwd_range(dinp + lo, inp + lo, dout + lo, hi - lo);
    }
}

void cpu_residual_fwd(const nawal_ops *o, float *out, const float *a, const float *b, size_t n) {
    (void)o;
    #pragma omp parallel
    {
        size_t lo, hi;
        cpu_thread_range(n, &lo, &hi);
        add_range(out + lo, a + lo, b + lo, hi - lo);
    }
}
