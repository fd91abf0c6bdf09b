/* activations.c - CPU tanh-GELU and residual add; the per-element formulas
 * come from elementwise.h, shared with the CUDA backend. */
#include "cpu_ops.h"
#include "elementwise.h"

void cpu_gelu_fwd(const nawal_ops *o, float *out, const float *inp, size_t n) {
    (void)o;
    #pragma omp parallel for simd
    for (size_t i = 0; i < n; i++) out[i] = nawal_gelu(inp[i]);
}

void cpu_gelu_bwd(const nawal_ops *o, float *dinp, const float *inp, const float *dout, size_t n) {
    (void)o;
    #pragma omp parallel for simd
    for (size_t i = 0; i < n; i++) dinp[i] = nawal_gelu_grad(inp[i]) * dout[i];
}

void cpu_residual_fwd(const nawal_ops *o, float *out, const float *a, const float *b, size_t n) {
    (void)o;
    #pragma omp parallel for simd
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}
