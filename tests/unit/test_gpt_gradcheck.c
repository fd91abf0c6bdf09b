/* test_gpt_gradcheck.c - the full GPT-2 model's gradient against central
 * finite differences, on a tiny config with fresh random parameters and data.
 *
 * For every parameter tensor t we draw a random direction v_t (N(0,1) per
 * element plus twice the normalised analytic gradient) and compare the analytic directional derivative g_t . v_t (v_t unit length) with
 * the fourth-order central difference
 * (-L(+2h) + 8 L(+h) - 8 L(-h) + L(-2h)) / 12h.
 * Tolerance argument (fp32): the loss is ~log(V) ~ 2.4 and is evaluated with
 * ~1e-7 relative rounding per op, so each L carries ~1e-6 absolute noise;
 * the stencil's weights (18 in all) over 12h with h = 5e-3 give <= ~3e-4
 * absolute error. The truncation error is O(h^4 * fifth derivative): with
 * h = 1e-2 it left 1.2% on some draws (seed 17573139525992657: 4.0569 vs
 * 4.1068; h = 5e-3 and 2.5e-3 agree), since random O(0.3) weights make the
 * loss sharply curved (a second-order stencil left 2%). Directional
 * derivatives are O(0.1..1), so |fd - g.v| <= 5e-4 + 1e-2 |g.v| is tight enough to catch any
 * missing term (a wrong sign, a dropped branch or a transposed weight changes
 * the result by O(1) relative), and we also require |g.v| to be well above
 * the noise so the check is never vacuous. */
#include <criterion/criterion.h>
#include <string.h>
#include "gpt.h"
#include "test_util.h"

static float loss_at(nawal_gpt *m, const int32_t *in, const int32_t *tg, int B, int T) {
    char err[256];
    float l = nawal_gpt_forward(m, in, tg, B, T, 0, NULL, err, sizeof err);
    cr_assert(!isnan(l), "%s", err);
    return l;
}

Test(gpt, gradient_matches_finite_differences) {
    uint64_t seed = test_seed("gradcheck"), seed0 = seed;
    nawal_gpt_config cfg = { .n_layer = 2, .n_head = 2, .n_embd = 8, .n_ctx = 7, .vocab = 11 };
    const nawal_ops *ops = nawal_ops_cpu(0);
    nawal_gpt *m;
    char err[256];
    int B = 2, T = 6;
    cr_assert_eq(nawal_gpt_create(&m, ops, &cfg, B, err, sizeof err), 0, "%s", err);
    /* params of scale 0.3 (LN gains around 1) so every path carries signal */
    float *p = m->params;
    for (size_t i = 0; i < m->n_params; i++) p[i] = 0.3f * test_rand_normal(&seed);
    for (int i = 0; i < m->n_tensors; i++)
        if (strstr(m->tensors[i].name, "ln_") && strstr(m->tensors[i].name, ".weight"))
            for (size_t j = 0; j < m->tensors[i].numel; j++) p[m->tensors[i].offset + j] += 1.0f;
    int32_t in[12], tg[12];
    for (int i = 0; i < B * T; i++) { in[i] = test_rand_int(&seed, cfg.vocab); tg[i] = test_rand_int(&seed, cfg.vocab); }
    tg[3] = -1; /* an ignored position must contribute nothing */

    nawal_gpt_zero_grad(m);
    size_t nv;
    float l0 = nawal_gpt_forward(m, in, tg, B, T, 1, &nv, err, sizeof err);
    cr_assert(!isnan(l0), "%s", err);
    cr_assert_eq(nv, (size_t)(B * T - 1));
    nawal_gpt_backward(m);

    const float h = 5e-3f;
    float *v = malloc(m->n_params * sizeof(float)), *saved = malloc(m->n_params * sizeof(float));
    memcpy(saved, p, m->n_params * sizeof(float));
    for (int ti = 0; ti < m->n_tensors; ti++) {
        const nawal_param_tensor *t = &m->tensors[ti];
        /* random direction tilted towards the analytic gradient so g.v is
         * large; a wrong analytic gradient still disagrees with the FD */
        const float *g = m->grads + t->offset;
        double rms = 0.0, an = 0.0;
        for (size_t j = 0; j < t->numel; j++) rms += (double)g[j] * g[j];
        rms = sqrt(rms / t->numel) + 1e-12;
        double vn = 0.0;
        for (size_t j = 0; j < t->numel; j++) { v[j] = test_rand_normal(&seed) + 2.0f * (float)(g[j] / rms); vn += (double)v[j] * v[j]; }
        vn = sqrt(vn);
        for (size_t j = 0; j < t->numel; j++) { v[j] = (float)(v[j] / vn); an += (double)v[j] * g[j]; }
        double fd = 0.0;
        static const float steps[4] = { 2.0f, 1.0f, -1.0f, -2.0f }, wts[4] = { -1.0f, 8.0f, -8.0f, 1.0f };
        for (int k = 0; k < 4; k++) {
            for (size_t j = 0; j < t->numel; j++) p[t->offset + j] = saved[t->offset + j] + steps[k] * h * v[j];
            fd += wts[k] * (double)loss_at(m, in, tg, B, T);
        }
        memcpy(p + t->offset, saved + t->offset, t->numel * sizeof(float));
        fd /= 12.0 * h;
        cr_expect(fabs(an) > 5e-3, "%s: directional derivative %g too small for a meaningful check", t->name, an);
        cr_expect(fabs(fd - an) <= 5e-4 + 1e-2 * fabs(an), "%s: analytic %.6f vs finite difference %.6f (seed %llu)", t->name, an, fd,
                  (unsigned long long)seed0);
    }
    free(v);
    free(saved);
    nawal_gpt_free(m);
}
