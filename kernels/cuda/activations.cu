/* activations.cu - CUDA tanh-GELU forward/backward and the residual add,
 * per element, with the formulas of the shared elementwise.h. */
#include "cuda_map.cuh"
#include "elementwise.h"

void cuda_gelu_fwd(const nawal_ops *o, float *out, const float *inp, size_t n) {
    cuda_map(o, "gelu_fwd", n, [=] __device__(size_t i) { out[i] = nawal_gelu(inp[i]); });
}

/* dinp may alias dout: each element is read then written by one thread */
void cuda_gelu_bwd(const nawal_ops *o, float *dinp, const float *inp, const float *dout, size_t n) {
    cuda_map(o, "gelu_bwd", n, [=] __device__(size_t i) { dinp[i] = nawal_gelu_grad(inp[i]) * dout[i]; });
}

void cuda_residual_fwd(const nawal_ops *o, float *out, const float *a, const float *b, size_t n) {
    cuda_map(o, "residual_fwd", n, [=] __device__(size_t i) { out[i] = a[i] + b[i]; });
}
