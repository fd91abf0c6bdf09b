/* optim.c - CPU AdamW and SGD(+momentum) parameter updates over a flat
 * range, using the shared per-element formulas of elementwise.h. */
#include "cpu_ops.h"
#include "elementwise.h"
#include <math.h>

void cpu_adamw(const nawal_ops *o, float *p, const float *g, float *m, float *v, size_t n,
               float lr, float beta1, float beta2, float eps, float wd, int t) {
    (void)o;
    float b1c = 1.0f - powf(beta1, (float)t), b2c = 1.0f - powf(beta2, (float)t);
    #pragma omp parallel for simd
    for (size_t i = 0; i < n; i++)
        nawal_adamw_elem(&p[i], g[i], &m[i], &v[i], lr, beta1, beta2, b1c, b2c, eps, wd);
}

void cpu_sgd(const nawal_ops *o, float *p, const float *g, float *buf, size_t n,
             float lr, float momentum, float wd) {
    (void)o;
    #pragma omp parallel for simd
    for (size_t i = 0; i < n; i++) nawal_sgd_elem(&p[i], g[i], &buf[i], lr, momentum, wd);
}
