/* test_gpu_model.c - a whole training step of the GPT (forward, backward,
 * AdamW) on the CUDA backend against the same step on the CPU backend, from
 * the same initial parameters and the same random batch (a small config
 * with awkward sizes: 3 heads of 16, context 37, vocabulary 101, some
 * ignored targets). Gradients must agree per tensor, parameters after the
 * AdamW step over the whole vector (norm-wise relative error; per tensor
 * it would be ill-conditioned: a zero-initialised bias moves by
 * lr * g / (|g| + eps), a ratio of two small numbers): fp32 to 1e-4, tf32 to
 * 5e-3, bf16 matmuls to 2e-2; two GPU runs from the same state must be
 * bitwise identical (every CUDA op is deterministic by construction).
 * Skips with one line when no GPU is present. */
#include "gpu_test_util.h"
#include "gpt.h"
#include "optim.h"
#include "dp.h"

static const nawal_gpt_config CFG = { 2, 3, 48, 37, 101 };
#define TB 3

typedef struct {
    float loss;
    float *grads, *params; /* host copies after backward / after the AdamW step */
    size_t n;
} step_result;

static step_result run_step(const nawal_ops *o, const int32_t *in, const int32_t *tg, nawal_precision prec) {
    char err[256];
    nawal_gpt *m;
    cr_assert(o->set_precision(o, prec, err, sizeof err) == 0, "%s", err);
    cr_assert(nawal_gpt_create(&m, o, &CFG, TB, err, sizeof err) == 0, "%s", err);
    nawal_gpt_init_params(m, 1234);
    step_result r = { 0 };
    r.n = m->n_params;
    r.grads = hf(r.n);
    r.params = hf(r.n);
    nawal_gpt_zero_grad(m);
    r.loss = nawal_gpt_forward(m, in, tg, TB, CFG.n_ctx, 1, NULL, err, sizeof err);
    cr_assert(!isnan(r.loss), "%s", err);
    nawal_gpt_backward(m);
    o->download(o, r.grads, m->grads, r.n * sizeof(float));
    /* eps 1e-5: Adam's first step is lr * g / (|g| + eps), which for eps -> 0
     * is sign(g) and would amplify a rounding-level difference of a tiny
     * gradient into a full step */
    nawal_adamw_config ac = { 0.9f, 0.99f, 1e-5f, 0.1f };
    cr_assert(nawal_gpt_adamw_step(m, &ac, 1e-3f) == 0);
    o->download(o, r.params, m->params, r.n * sizeof(float));
    nawal_gpt_free(m);
    o->set_precision(o, NAWAL_PREC_FP32, err, sizeof err);
    return r;
}

static void make_batch(int32_t *in, int32_t *tg) {
    for (int i = 0; i < TB * CFG.n_ctx; i++) {
        in[i] = test_rand_int(&g_rng, CFG.vocab);
        tg[i] = test_rand_int(&g_rng, 7) == 0 ? -1 : test_rand_int(&g_rng, CFG.vocab);
    }
}

/* norm-wise relative error of each parameter tensor's slice (whole: of the
 * whole vector) */
static void compare(const char *what, const float *gpu, const float *cpu, double tol, int whole) {
    char err[256];
    nawal_gpt *m; /* for the tensor table only */
    cr_assert(nawal_gpt_create(&m, CPU, &CFG, 1, err, sizeof err) == 0, "%s", err);
    double worst = 0.0, all_num = 0.0, all_den = 0.0;
    const char *worst_name = "";
    for (int t = 0; t < m->n_tensors; t++) {
        const nawal_param_tensor *pt = &m->tensors[t];
        double num = 0.0, den = 0.0;
        for (size_t i = pt->offset; i < pt->offset + pt->numel; i++) {
            cr_assert(isfinite(gpu[i]), "%s: %s[%zu] not finite on the GPU (seed %llu)", what, pt->name, i - pt->offset, SEED);
            double d = (double)gpu[i] - cpu[i];
            num += d * d;
            den += (double)cpu[i] * cpu[i];
        }
        double rel = den > 0 ? sqrt(num / den) : sqrt(num);
        if (rel > worst) { worst = rel; worst_name = pt->name; }
        all_num += num;
        all_den += den;
        if (!whole) cr_expect(rel <= tol, "%s: %s relative error %.3g > %.1g (seed %llu)", what, pt->name, rel, tol, SEED);
    }
    double all = sqrt(all_num / all_den);
    if (whole) cr_expect(all <= tol, "%s: relative error %.3g > %.1g (seed %llu)", what, all, tol, SEED);
    fprintf(stderr, "[gpu_model] %s: %s relative error %.3g (limit %.1g); worst tensor %s %.3g\n", what,
            whole ? "whole-vector" : "per-tensor", whole ? all : worst, tol, worst_name, worst);
    nawal_gpt_free(m);
}

static void free_result(step_result *r) { free(r->grads); free(r->params); }

static void parity(nawal_precision prec, double tol, const char *tag) {
    int32_t in[TB * 37], tg[TB * 37];
    make_batch(in, tg);
    step_result c = run_step(CPU, in, tg, NAWAL_PREC_FP32), g = run_step(GPU, in, tg, prec);
    char what[64];
    cr_expect(fabs(g.loss - c.loss) <= tol * fabs(c.loss), "%s loss gpu %.9g cpu %.9g (seed %llu)", tag, g.loss, c.loss, SEED);
    snprintf(what, sizeof what, "%s gradients", tag);
    compare(what, g.grads, c.grads, tol, 0);
    snprintf(what, sizeof what, "%s parameters after AdamW", tag);
    compare(what, g.params, c.params, tol, 1);
    free_result(&c);
    free_result(&g);
}

Test(gpu_model, step_matches_cpu_fp32) {
    gpu_start("gpu_model.fp32");
    parity(NAWAL_PREC_FP32, 1e-4, "fp32");
}

Test(gpu_model, step_matches_cpu_bf16) {
    gpu_start("gpu_model.bf16");
    parity(NAWAL_PREC_BF16, 2e-2, "bf16");
}

Test(gpu_model, step_matches_cpu_tf32) {
    gpu_start("gpu_model.tf32");
    parity(NAWAL_PREC_TF32, 5e-3, "tf32");
}

Test(gpu_model, reruns_are_bitwise_identical) {
    gpu_start("gpu_model.determinism");
    int32_t in[TB * 37], tg[TB * 37];
    make_batch(in, tg);
    for (int p = 0; p < 2; p++) {
        nawal_precision prec = p ? NAWAL_PREC_BF16 : NAWAL_PREC_FP32;
        step_result a = run_step(GPU, in, tg, prec), b = run_step(GPU, in, tg, prec);
        cr_expect(memcmp(&a.loss, &b.loss, sizeof a.loss) == 0, "loss differs between reruns (%s)", p ? "bf16" : "fp32");
        cr_expect(memcmp(a.grads, b.grads, a.n * sizeof(float)) == 0, "gradients differ between reruns (%s)", p ? "bf16" : "fp32");
        cr_expect(memcmp(a.params, b.params, a.n * sizeof(float)) == 0, "parameters differ between reruns (%s)", p ? "bf16" : "fp32");
        free_result(&a);
        free_result(&b);
    }
}

/* DP-SGD (model/dp.c) on the GPU: per-example norms and the clipped sum
 * against the CPU's DP step (fp32: 1e-4; bf16: against the CPU in bf16 where
 * it has bf16 units, else in fp32, 2e-2), with the clipped sums in fp32 a
 * clipped example adds exactly C (to 1e-5), and with the GPU's default tf32
 * clipped sums (and their rounding margin) at most C. */
typedef struct {
    float norms[TB];
    float *grads;
    size_t n;
} dp_result;

/* method: nawal_gpt_dp_set_method; pass2: the book-keeping method's
 * clipped-sum precision (nawal_gpt_dp_set_pass2); below fp32 (with prec
 * below fp32) a clipped example adds at most C, not exactly C. The
 * per-example method adds exactly C in every precision. */
static dp_result run_dp(const nawal_ops *o, const int32_t *in, const int32_t *tg, nawal_precision prec,
                        nawal_dp_method method, nawal_precision pass2, float C, int check_each) {
    char err[256];
    nawal_gpt *m;
    cr_assert(o->set_precision(o, prec, err, sizeof err) == 0, "%s", err);
    cr_assert(nawal_gpt_create(&m, o, &CFG, TB, err, sizeof err) == 0, "%s", err);
    cr_assert(nawal_gpt_dp_set_pass2(m, pass2, err, sizeof err) == 0, "%s", err);
    cr_assert(nawal_gpt_dp_set_method(m, method, err, sizeof err) == 0, "%s", err);
    cr_assert(nawal_gpt_dp_method_in_force(m) == method, "DP method %s not in force", nawal_dp_method_name(method));
    int margin = prec != NAWAL_PREC_FP32 && pass2 != NAWAL_PREC_FP32 && method != NAWAL_DP_PER_EXAMPLE;
    nawal_gpt_init_params(m, 1234);
    dp_result r = { .n = m->n_params };
    r.grads = hf(r.n);
    nawal_gpt_zero_grad(m);
    cr_assert(nawal_gpt_dp_accumulate(m, in, tg, TB, CFG.n_ctx, C, r.norms, NULL, err, sizeof err) == 0, "%s", err);
    o->download(o, r.grads, m->grads, r.n * sizeof(float));
    for (int b = 0; check_each && b < TB; b++) {
        float nb;
        nawal_gpt_zero_grad(m);
        cr_assert(nawal_gpt_dp_accumulate(m, in + b * CFG.n_ctx, tg + b * CFG.n_ctx, 1, CFG.n_ctx, C, &nb, NULL, err,
                                          sizeof err) == 0, "%s", err);
        double s = sqrt(o->sumsq(o, m->grads, r.n));
        if (nb > C && !margin)
            cr_expect(fabs(s - C) <= 1e-5 * C, "%s, %s: example %d (norm %.7g) adds %.7g, not C = %.7g (seed %llu)",
                      nawal_precision_name(prec), nawal_dp_method_name(method), b, nb, s, C, SEED);
        if (nb > C && margin)
            cr_expect(s <= C * (1.0 + 1e-6) && s >= 0.8 * C, "%s, pass 2 %s: example %d (norm %.7g) adds %.7g, want (0.8 C, C] (seed %llu)",
                      nawal_precision_name(prec), nawal_precision_name(pass2), b, nb, s, SEED);
    }
    cr_expect(o->get_precision(o) == prec, "the DP step did not restore the precision");
    nawal_gpt_free(m);
    o->set_precision(o, NAWAL_PREC_FP32, err, sizeof err);
    return r;
}

static void dp_parity(nawal_precision prec, double tol) {
    int32_t in[TB * 37], tg[TB * 37];
    make_batch(in, tg);
    char err[256];
    /* the CPU in the same precision where it can, for the reference norms */
    nawal_precision cprec = CPU->set_precision(CPU, prec, err, sizeof err) == 0 ? prec : NAWAL_PREC_FP32;
    CPU->set_precision(CPU, NAWAL_PREC_FP32, err, sizeof err);
    const nawal_dp_method BK = NAWAL_DP_BOOKKEEPING, PE = NAWAL_DP_PER_EXAMPLE;
    dp_result probe = run_dp(CPU, in, tg, cprec, BK, NAWAL_PREC_FP32, 1e9f, 0);
    float lo = probe.norms[0];
    for (int b = 1; b < TB; b++) lo = fminf(lo, probe.norms[b]);
    float C = 0.7f * lo; /* every example with targets gets clipped */
    free(probe.grads);
    /* the CPU's book-keeping step with fp32 clipped sums is the reference;
     * the GPU's two methods must match it (book-keeping with fp32 clipped
     * sums, and per-example, the default), each clipped example adding
     * exactly C; the book-keeping method's tf32 clipped sums with their
     * margin must still keep every clipped example within C */
    dp_result c = run_dp(CPU, in, tg, cprec, BK, NAWAL_PREC_FP32, C, 0);
    if (prec != NAWAL_PREC_FP32) {
        dp_result gm = run_dp(GPU, in, tg, prec, BK, NAWAL_PREC_TF32, C, 1);
        free(gm.grads);
    }
    for (int k = 0; k < 2; k++) {
        nawal_dp_method method = k ? PE : BK;
        dp_result g = run_dp(GPU, in, tg, prec, method, NAWAL_PREC_FP32, C, 1);
        for (int b = 0; b < TB; b++)
            cr_expect(fabsf(g.norms[b] - c.norms[b]) <= tol * fmaxf(c.norms[b], 1e-3f),
                      "%s, %s: example %d norm gpu %.7g cpu %.7g (seed %llu)", nawal_precision_name(prec),
                      nawal_dp_method_name(method), b, g.norms[b], c.norms[b], SEED);
        char what[64];
        snprintf(what, sizeof what, "DP clipped sum %s, %s", nawal_precision_name(prec), nawal_dp_method_name(method));
        compare(what, g.grads, c.grads, tol, 1);
        free(g.grads);
    }
    free(c.grads);
}

Test(gpu_model, dp_step_matches_cpu_fp32) {
    gpu_start("gpu_model.dp_fp32");
    dp_parity(NAWAL_PREC_FP32, 1e-4);
}

Test(gpu_model, dp_step_bf16_clips_exactly) {
    gpu_start("gpu_model.dp_bf16");
    dp_parity(NAWAL_PREC_BF16, 2e-2);
}

/* tf32 matmuls: the margin path without a precision switch (pass 2 already
 * runs in the backend's tf32), and exact fp32 clipped sums from tf32 */
Test(gpu_model, dp_step_tf32) {
    gpu_start("gpu_model.dp_tf32");
    dp_parity(NAWAL_PREC_TF32, 5e-3);
}

/* CUDA graphs (nawal_gpt_forward_backward with graphs on): the captured and
 * replayed steps give the same bits as the same steps run op by op, over
 * steps with fresh batches (the graph reads the uploaded tokens), a step
 * whose loss scale differs (fewer valid targets: run op by op, then
 * captured again) and AdamW in between, in fp32 and bf16; the model with
 * graphs on must hold a graph after its second step. */
static void graph_case(nawal_precision prec) {
    char err[256];
    nawal_gpt *m[2];
    cr_assert(GPU->set_precision(GPU, prec, err, sizeof err) == 0, "%s", err);
    for (int k = 0; k < 2; k++) {
        cr_assert(nawal_gpt_create(&m[k], GPU, &CFG, TB, err, sizeof err) == 0, "%s", err);
        nawal_gpt_init_params(m[k], 99);
        nawal_gpt_set_graphs(m[k], k);
    }
    nawal_adamw_config ac = { 0.9f, 0.99f, 1e-5f, 0.1f };
    size_t n = m[0]->n_params;
    float *g0 = hf(n), *g1 = hf(n);
    int32_t in[TB * 37], tg[TB * 37];
    for (int step = 0; step < 7; step++) {
        make_batch(in, tg);
        for (int i = 0; i < TB * CFG.n_ctx; i++)
            if (tg[i] < 0) tg[i] = 0; /* every target valid: the same loss scale each step... */
        if (step == 4) tg[5] = -1;  /* ...but this one (op by op, then captured again at step 5) */
        if (step == 5) tg[5] = -1;
        float loss[2];
        for (int k = 0; k < 2; k++) {
            nawal_gpt_zero_grad(m[k]);
            loss[k] = nawal_gpt_forward_backward(m[k], in, tg, TB, CFG.n_ctx, NULL, err, sizeof err);
            cr_assert(!isnan(loss[k]), "%s", err);
        }
        GPU->download(GPU, g0, m[0]->grads, n * sizeof(float));
        GPU->download(GPU, g1, m[1]->grads, n * sizeof(float));
        cr_expect(memcmp(&loss[0], &loss[1], sizeof loss[0]) == 0, "%s step %d: loss %.9g with graphs, %.9g without",
                  nawal_precision_name(prec), step, loss[1], loss[0]);
        cr_expect(memcmp(g0, g1, n * sizeof(float)) == 0, "%s step %d: gradients with graphs differ from op by op",
                  nawal_precision_name(prec), step);
        if (step >= 1 && step != 4) cr_expect(m[1]->graph != NULL, "%s step %d: no graph captured", nawal_precision_name(prec), step);
        for (int k = 0; k < 2; k++) cr_assert(nawal_gpt_adamw_step(m[k], &ac, 1e-3f) == 0);
    }
    free(g0);
    free(g1);
    for (int k = 0; k < 2; k++) nawal_gpt_free(m[k]);
    GPU->set_precision(GPU, NAWAL_PREC_FP32, err, sizeof err);
}

Test(gpu_model, graph_replay_is_bitwise_op_by_op) {
    gpu_start("gpu_model.graphs");
    cr_assert(GPU->capture_begin && GPU->graph_launch, "the CUDA backend has no graphs");
    graph_case(NAWAL_PREC_FP32);
    graph_case(NAWAL_PREC_BF16);
}
