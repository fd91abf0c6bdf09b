/* dp.c - see dp.h. The DP backward runs in two passes over each shard of
 * the batch, with the host between them:
 *   pass 1: the usual backward chain for the input gradients only (no weight
 *           gradients), keeping every parameterised op's output gradient D
 *           in dp_store and adding each parameter tensor's per-example
 *           squared gradient norm into dp_norms (ops pe_norm_*);
 *   host:   clip factors c_b = min(1, C / (||g_b|| + margin_b + 1e-6)),
 *           margin_b 0 unless pass 2 rounds its operands (below), c_b
 *           rounded down to float;
 *   pass 2: each kept D scaled row-wise by its example's c_b, then the
 *           weight and bias gradients from it (matmul_bwd / layernorm_bwd /
 *           embedding_bwd with the input gradient skipped).
 * dp_store per layer holds, for the max batch: D of mlp.c_proj [N][C], of
 * mlp.c_fc [N][4C], of ln_2 [N][C], of attn.c_proj [N][C], of attn.c_attn
 * [N][3C], of ln_1 [N][C]; then D of ln_f [N][C]. The embedding's D is the
 * residual gradient left in scratch by pass 1; the LM head's D is dlogits.
 *
 * Precision. In tf32/bf16 modes a weight gradient formed from rounded
 * operands differs from the one whose norm pass 1 measured by up to ~1e-3
 * relative (3e-4 seen in test_dp), so a clipped example would add more
 * than C to the sum: more than the sensitivity the accountant assumes. So
 * either pass 2 runs its products in fp32 (the CPU's default): the
 * contribution is C to fp32 precision, as in an all-fp32 step; or (the
 * GPU's default, where fp32 products would leave the tensor cores) in
 * tf32/bf16 with a margin: pass 1 also adds up each example's
 * sum_t ||a_t|| ||d_t|| per linear layer (ops pe_bound_linear), which
 * bounds how far rounding the operands can move its contribution, and the
 * clip factor divides by ||g_b|| + that margin (nawal_gpt_dp_set_pass2 in
 * dp.h has the bound). The margin covers what reduced precision adds, the
 * operands' rounding; fp32 accumulation inside the GEMMs and the fp32
 * norms are treated as in the fp32 path (to fp32 precision). The forward
 * and pass 1 keep the faster precision: they only decide what g is. */
#include "dp.h"
#include "gpt_internal.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { D_FCPROJ, D_FC, D_LN2, D_ATTPROJ, D_QKV, D_LN1, D_PER_LAYER };
static const int d_width[D_PER_LAYER] = { 1, 4, 1, 1, 3, 1 }; /* in units of C */
#define STORE_WIDTH_PER_LAYER 11

/* The kept output gradients of layer l (l == n_layer: only .ln1 is used,
 * ln_f's slot) for the rows from r0, in dp_store's order. */
typedef struct { float *fcproj, *fc, *ln2, *attproj, *qkv, *ln1; } kept_grads;

static kept_grads layer_slots(const nawal_gpt *m, int l, size_t r0) {
    size_t N = (size_t)m->max_batch * m->cfg.n_ctx, C = m->cfg.n_embd;
    float *p = m->dp_store + (size_t)l * STORE_WIDTH_PER_LAYER * N * C, *s[D_PER_LAYER];
    if (l == m->cfg.n_layer) return (kept_grads){ .ln1 = p + r0 * C };
    for (int i = 0; i < D_PER_LAYER; i++) {
        s[i] = p + r0 * (size_t)d_width[i] * C;
        p += (size_t)d_width[i] * N * C;
    }
    return (kept_grads){ s[D_FCPROJ], s[D_FC], s[D_LN2], s[D_ATTPROJ], s[D_QKV], s[D_LN1] };
}

/* back to precision p, which was in force a moment ago: cannot fail, and
 * its callers must not fail after changing state, so an error is only said */
static void restore_precision(const nawal_ops *o, nawal_precision p) {
    char e[128];
    if (o->set_precision(o, p, e, sizeof e)) fprintf(stderr, "nawal: restoring the precision: %s\n", e);
}

static int ensure_buffers(nawal_gpt *m, char *err, size_t errlen) {
    const nawal_ops *o = m->ops;
    size_t N = (size_t)m->max_batch * m->cfg.n_ctx, C = m->cfg.n_embd;
    if (!m->dp_store) m->dp_store = o->alloc(o, ((size_t)m->cfg.n_layer * STORE_WIDTH_PER_LAYER + 1) * N * C * sizeof(float));
    if (!m->dp_norms) m->dp_norms = o->alloc(o, (size_t)m->max_batch * sizeof(float));
    if (!m->dp_scales) m->dp_scales = o->alloc(o, (size_t)m->max_batch * sizeof(float));
    if (!m->dp_bounds) m->dp_bounds = o->alloc(o, (size_t)m->max_batch * sizeof(float));
    if (!m->dp_store || !m->dp_norms || !m->dp_scales || !m->dp_bounds) {
        snprintf(err, errlen, "out of memory for DP-SGD book-keeping (%zu floats) on %s",
                 ((size_t)m->cfg.n_layer * STORE_WIDTH_PER_LAYER + 1) * N * C, o->name);
        return -1;
    }
    return 0;
}

static void dp_pass1(void *ctx, int k) {
    shard_job *j = ctx;
    shard_view v = gpt_shard_begin(j, k);
    nawal_gpt *m = v.m;
    const nawal_ops *o = v.o;
    int B = v.B, T = v.T, N = v.N, C = v.C, NH = v.NH, V = v.V, L = m->cfg.n_layer;
    float *P = m->params, *norms = m->dp_norms + v.b0, *bounds = j->ext ? m->dp_bounds + v.b0 : NULL;
    top_acts ta = v.ta;
    scratch_bufs s = v.s;
    float *res_last = gpt_layer_acts(m, L - 1, v.b0, T).res3;
    float *d_lnf = layer_slots(m, L, v.r0).ln1;
/* a linear layer's norm, and its rounding bound when pass 2 runs in reduced precision */
#define LINEAR(A_, D_, d_, p_)                                                  \
    do {                                                                        \
        o->pe_norm_linear(o, norms, (A_), (D_), B, T, (d_), (p_));              \
        if (bounds) o->pe_bound_linear(o, bounds, (A_), (D_), B, T, (d_), (p_)); \
    } while (0)

    o->fill(o, norms, 0.0f, (size_t)B);
    if (bounds) {
        o->fill(o, bounds, 0.0f, (size_t)B);
        o->pe_bound_linear(o, bounds, ta.lnf, ta.logits, B, T, C, V); /* the LM head's share of the tied matrix */
    }
    o->fill(o, s.dres, 0.0f, (size_t)N * C);
    o->matmul_bwd(o, d_lnf, NULL, NULL, ta.logits, ta.lnf, gpt_wte(m, P), N, C, V, NAWAL_W_OUT_IN);
    o->pe_norm_layernorm(o, norms, d_lnf, res_last, ta.lnf_mean, ta.lnf_rstd, B, T, C);
    o->layernorm_bwd(o, s.dres, NULL, NULL, d_lnf, res_last, gpt_lnf(m, P, 0), ta.lnf_mean, ta.lnf_rstd, N, C);
    for (int l = L - 1; l >= 0; l--) {
        layer_acts a = gpt_layer_acts(m, l, v.b0, T);
        float *res_in = l == 0 ? ta.encoded : gpt_layer_acts(m, l - 1, v.b0, T).res3;
        kept_grads d = layer_slots(m, l, v.r0);
        /* MLP branch */
        o->copy(o, d.fcproj, s.dres, (size_t)N * C);
        LINEAR(a.fch_gelu, d.fcproj, 4 * C, C);
        o->pe_norm_bias(o, norms, d.fcproj, B, T, C);
        o->matmul_bwd(o, d.fc, NULL, NULL, d.fcproj, a.fch_gelu, gpt_lp(m, P, l, NAWAL_P_FCPROJ_W), N, 4 * C, C, NAWAL_W_IN_OUT);
        o->gelu_bwd(o, d.fc, a.fch, d.fc, (size_t)N * 4 * C);
        LINEAR(a.ln2, d.fc, C, 4 * C);
        o->pe_norm_bias(o, norms, d.fc, B, T, 4 * C);
        o->matmul_bwd(o, d.ln2, NULL, NULL, d.fc, a.ln2, gpt_lp(m, P, l, NAWAL_P_FC_W), N, C, 4 * C, NAWAL_W_IN_OUT);
        o->pe_norm_layernorm(o, norms, d.ln2, a.res2, a.ln2_mean, a.ln2_rstd, B, T, C);
        o->layernorm_bwd(o, s.dres, NULL, NULL, d.ln2, a.res2, gpt_lp(m, P, l, NAWAL_P_LN2_W), a.ln2_mean, a.ln2_rstd, N, C);
        /* attention branch */
        o->copy(o, d.attproj, s.dres, (size_t)N * C);
        LINEAR(a.atty, d.attproj, C, C);
        o->pe_norm_bias(o, norms, d.attproj, B, T, C);
        o->matmul_bwd(o, s.dsmall, NULL, NULL, d.attproj, a.atty, gpt_lp(m, P, l, NAWAL_P_ATTPROJ_W), N, C, C, NAWAL_W_IN_OUT);
        o->attention_bwd(o, d.qkv, s.datt, s.dsmall, a.qkv, a.att, B, T, C, NH);
        LINEAR(a.ln1, d.qkv, C, 3 * C);
        o->pe_norm_bias(o, norms, d.qkv, B, T, 3 * C);
        o->matmul_bwd(o, d.ln1, NULL, NULL, d.qkv, a.ln1, gpt_lp(m, P, l, NAWAL_P_QKV_W), N, C, 3 * C, NAWAL_W_IN_OUT);
        o->pe_norm_layernorm(o, norms, d.ln1, res_in, a.ln1_mean, a.ln1_rstd, B, T, C);
        o->layernorm_bwd(o, s.dres, NULL, NULL, d.ln1, res_in, gpt_lp(m, P, l, NAWAL_P_LN1_W), a.ln1_mean, a.ln1_rstd, N, C);
    }
    o->pe_norm_rows(o, norms, s.dres, B, T, C);
    o->pe_norm_tied(o, norms, s.dres, m->d_inputs + v.r0, ta.lnf, ta.logits, B, T, C, V);
#undef LINEAR
}

static void dp_pass2(void *ctx, int k) {
    shard_job *j = ctx;
    shard_view v = gpt_shard_begin(j, k);
    nawal_gpt *m = v.m;
    const nawal_ops *o = v.o;
    int B = v.B, T = v.T, N = v.N, C = v.C, V = v.V, L = m->cfg.n_layer;
    float *P = m->params, *G = j->grads[k], *sc = m->dp_scales + v.b0;
    top_acts ta = v.ta;
    scratch_bufs s = v.s;
    float *res_last = gpt_layer_acts(m, L - 1, v.b0, T).res3;
    float *d_lnf = layer_slots(m, L, v.r0).ln1;
    size_t TC = (size_t)T * C;

    o->scale_examples(o, ta.logits, sc, B, (size_t)T * V);
    o->matmul_bwd(o, NULL, gpt_wte(m, G), NULL, ta.logits, ta.lnf, gpt_wte(m, P), N, C, V, NAWAL_W_OUT_IN);
    o->scale_examples(o, d_lnf, sc, B, TC);
    o->layernorm_bwd(o, NULL, gpt_lnf(m, G, 0), gpt_lnf(m, G, 1), d_lnf, res_last, gpt_lnf(m, P, 0), ta.lnf_mean, ta.lnf_rstd, N, C);
    for (int l = L - 1; l >= 0; l--) {
        layer_acts a = gpt_layer_acts(m, l, v.b0, T);
        float *res_in = l == 0 ? ta.encoded : gpt_layer_acts(m, l - 1, v.b0, T).res3;
        kept_grads d = layer_slots(m, l, v.r0);
        o->scale_examples(o, d.fcproj, sc, B, TC);
        o->matmul_bwd(o, NULL, gpt_lp(m, G, l, NAWAL_P_FCPROJ_W), gpt_lp(m, G, l, NAWAL_P_FCPROJ_B), d.fcproj, a.fch_gelu,
                      gpt_lp(m, P, l, NAWAL_P_FCPROJ_W), N, 4 * C, C, NAWAL_W_IN_OUT);
        o->scale_examples(o, d.fc, sc, B, 4 * TC);
        o->matmul_bwd(o, NULL, gpt_lp(m, G, l, NAWAL_P_FC_W), gpt_lp(m, G, l, NAWAL_P_FC_B), d.fc, a.ln2,
                      gpt_lp(m, P, l, NAWAL_P_FC_W), N, C, 4 * C, NAWAL_W_IN_OUT);
        o->scale_examples(o, d.ln2, sc, B, TC);
        o->layernorm_bwd(o, NULL, gpt_lp(m, G, l, NAWAL_P_LN2_W), gpt_lp(m, G, l, NAWAL_P_LN2_B), d.ln2, a.res2,
                         gpt_lp(m, P, l, NAWAL_P_LN2_W), a.ln2_mean, a.ln2_rstd, N, C);
        o->scale_examples(o, d.attproj, sc, B, TC);
        o->matmul_bwd(o, NULL, gpt_lp(m, G, l, NAWAL_P_ATTPROJ_W), gpt_lp(m, G, l, NAWAL_P_ATTPROJ_B), d.attproj, a.atty,
                      gpt_lp(m, P, l, NAWAL_P_ATTPROJ_W), N, C, C, NAWAL_W_IN_OUT);
        o->scale_examples(o, d.qkv, sc, B, 3 * TC);
        o->matmul_bwd(o, NULL, gpt_lp(m, G, l, NAWAL_P_QKV_W), gpt_lp(m, G, l, NAWAL_P_QKV_B), d.qkv, a.ln1,
                      gpt_lp(m, P, l, NAWAL_P_QKV_W), N, C, 3 * C, NAWAL_W_IN_OUT);
        o->scale_examples(o, d.ln1, sc, B, TC);
        o->layernorm_bwd(o, NULL, gpt_lp(m, G, l, NAWAL_P_LN1_W), gpt_lp(m, G, l, NAWAL_P_LN1_B), d.ln1, res_in,
                         gpt_lp(m, P, l, NAWAL_P_LN1_W), a.ln1_mean, a.ln1_rstd, N, C);
    }
    o->scale_examples(o, s.dres, sc, B, TC);
    o->embedding_bwd(o, gpt_wte(m, G), gpt_wpe(m, G), s.dres, m->d_inputs + v.r0, B, T, C);
}

int nawal_gpt_dp_accumulate(nawal_gpt *m, const int32_t *inputs, const int32_t *targets, int B, int T,
                            float max_grad_norm, float *norms_out, float *loss_out, char *err, size_t errlen) {
    const nawal_ops *o = m->ops;
    if (!o->pe_norm_linear || !o->pe_norm_tied || !o->scale_examples || !o->pe_bound_linear) {
        snprintf(err, errlen, "the %s backend has no DP-SGD ops", o->name);
        return -1;
    }
    if (!(max_grad_norm > 0.0f)) { snprintf(err, errlen, "max grad norm must be > 0, got %g", max_grad_norm); return -1; }
    if (ensure_buffers(m, err, errlen)) return -1;
    size_t valid = 0;
    float loss = nawal_gpt_forward(m, inputs, targets, B, T, 1, &valid, err, errlen);
    if (isnan(loss)) return -1;
    if (loss_out) *loss_out = loss;
    /* dlogits hold (p - onehot) / valid: rescale example b's rows to / valid_b */
    float *h = malloc((size_t)B * sizeof(float) * 3);
    if (!h) { snprintf(err, errlen, "out of memory"); return -1; }
    float *norms = h + B, *bounds = h + 2 * B;
    for (int b = 0; b < B; b++) {
        size_t vb = 0;
        for (int t = 0; t < T; t++) vb += targets[(size_t)b * T + t] >= 0;
        h[b] = vb ? (float)((double)valid / (double)vb) : 0.0f;
    }
    o->upload(o, m->dp_scales, h, (size_t)B * sizeof(float));
    top_acts ta = gpt_top_acts(m, 0, T);
    o->scale_examples(o, ta.logits, m->dp_scales, B, (size_t)T * m->cfg.vocab);

    /* pass 2 in tf32/bf16 needs the bounds */
    nawal_precision prec = o->get_precision(o), p2 = nawal_gpt_dp_pass2_in_force(m);
    int bounding = p2 != NAWAL_PREC_FP32;
    shard_job j = { .m = m, .B = B, .T = T, .S = gpt_shard_count(m, B), .ext = bounding ? &bounding : NULL };
    gpt_run_shards(m, &j, dp_pass1);
    o->download(o, norms, m->dp_norms, (size_t)B * sizeof(float));
    if (bounding) o->download(o, bounds, m->dp_bounds, (size_t)B * sizeof(float));
    double grow = nawal_gpt_dp_margin_factor(p2);
    for (int b = 0; b < B; b++) {
        float nrm = sqrtf(norms[b] > 0.0f ? norms[b] : 0.0f);
        if (norms_out) norms_out[b] = nrm;
        /* a bound that is not a number clips the example to nothing */
        double margin = !bounding ? 0.0 : bounds[b] >= 0.0f ? grow * sqrt((double)bounds[b]) : INFINITY;
        double c = fmin(1.0, (double)max_grad_norm / ((double)nrm + margin + 1e-6));
        float cf = (float)c;
        h[b] = (double)cf > c ? nextafterf(cf, 0.0f) : cf; /* never above the factor computed */
    }
    o->upload(o, m->dp_scales, h, (size_t)B * sizeof(float));
    /* the precision is the backend's (process-wide on the CPU): nothing else
     * runs ops while this call does, and it is restored before returning */
    if (p2 != prec && o->set_precision(o, p2, err, errlen)) { free(h); return -1; }
    gpt_shard_grads_begin(m, &j);
    gpt_run_shards(m, &j, dp_pass2);
    gpt_shard_grads_end(m, &j);
    if (p2 != prec) restore_precision(o, prec); /* the gradients are in: this must not fail the call */
    m->has_grad_logits = 0;
    free(h);
    return 0;
}

double nawal_gpt_dp_margin_factor(nawal_precision p) {
    /* operand rounding's unit roundoff: tf32 keeps 10 stored mantissa bits
     * (2^-10 covers truncation as well as rounding), bf16 casts round to
     * nearest even on 8 bits */
    double u = 0.0;
    switch (p) {
    case NAWAL_PREC_TF32: u = 0x1p-10; break;
    case NAWAL_PREC_BF16: u = 0x1p-8; break;
    case NAWAL_PREC_FP32: break;
    }
    return 2.0 * u + u * u;
}

int nawal_gpt_dp_set_pass2(nawal_gpt *m, nawal_precision p, char *err, size_t errlen) {
    const nawal_ops *o = m->ops;
    if (p != NAWAL_PREC_FP32) { /* can the backend run it at all? */
        nawal_precision cur = o->get_precision(o);
        if (o->set_precision(o, p, err, errlen)) return -1;
        restore_precision(o, cur);
    }
    m->dp_pass2 = p;
    return 0;
}

nawal_precision nawal_gpt_dp_pass2_in_force(const nawal_gpt *m) {
    const nawal_ops *o = m->ops;
    return o->get_precision(o) == NAWAL_PREC_FP32 ? NAWAL_PREC_FP32 : m->dp_pass2;
}

void nawal_gpt_dp_finish(nawal_gpt *m, float noise_std, double expected_batch, uint64_t key, uint64_t stream) {
    const nawal_ops *o = m->ops;
    if (noise_std > 0.0f) o->add_noise(o, m->grads, m->n_params, noise_std, key, stream);
    if (expected_batch > 0.0) o->scale(o, m->grads, (float)(1.0 / expected_batch), m->n_params);
}
