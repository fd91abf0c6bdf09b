/* optim.c - CPU AdamW and SGD(+momentum) parameter updates over a flat
 * range, using the shared per-element formulas of elementwise.h. */
#include "cpu_ops.h"
#include "elementwise.h"
#include <math.h>

static void adamw_range(float *restrict p, const float *restrict g, float *restrict m, float *restrict v, size_t n,
                        float lr, float beta1, float beta2, float b1c, float b2c, float eps, float wd) {
    for (size_t i = 0; i < n; i++) nawal_adamw_elem(&p[i], g[i], &m[i], &v[i], lr, beta1, beta2, b1c, b2c, eps, wd);
}

static void sgd_range(float *restrict p, const float *restrict g, float *restrict buf, size_t n,
                      float lr, float momentum, float wd) {
    for (size_t i = 0; i < n; i++) nawal_sgd_elem(&p[i], g[i], &buf[i], lr, momentum, wd);
}

void cpu_adamw(const nawal_ops *o, float *p, const float *g, float *m, float *v, size_t n,
               float lr, float beta1, float beta2, float eps, float wd, int t) {
    (void)o;
    float b1c = 1.0f - powf(beta1, (float)t), b2c = 1.0f - powf(beta2, (float)t);
    #pragma omp parallel
    {
        size_t lo, hi;
        cpu_thread_range(n, &lo, &hi);
        adamw_range(p + lo, g + lo, m + lo, v + lo, hi - lo, lr, beta1, beta2, b1c, b2c, eps, wd);
    }
}

void cpu_sgd(const nawal_ops *o, float *p, const float *g, float *buf, size_t n,
             float lr, float momentum, float wd) {
    (void)o;
    #pragma omp parallel
    {
        size_t lo, hi;
        cpu_thread_range(n, &lo, &hi);
        sgd_range(p + lo, g + lo, buf + lo, hi - lo, lr, momentum, wd);
    }
}
