/* dp.c - see dp.h. The per-example method: pass 1 below writes each
 * example's whole gradient (pe_grad_* ops) where the book-keeping method
 * measures norms, the norms are those of the stored gradients
 * (pe_norm_rows over each example's padded slot), and the clipped sum is
 * pe_sum over the same values: no pass 2, no margin.
 *
 * The book-keeping method's DP backward runs in two passes over each
 * shard of the batch, with the host between them:
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
    size_t slot = l == m->cfg.n_layer ? (size_t)m->dp_store_layers : (size_t)l; /* ln_f's after the layers held */
    float *p = m->dp_store + slot * STORE_WIDTH_PER_LAYER * N * C, *s[D_PER_LAYER];
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

/* per-example method: each example's gradient is n_params floats padded
 * to a multiple of 64 (zeros, written once), so pe_norm_rows takes it as
 * stride / 64 rows of 64 */
#define PE_ALIGN 64

nawal_dp_method nawal_gpt_dp_method_in_force(const nawal_gpt *m) {
    if (m->dp_method != NAWAL_DP_AUTO) return (nawal_dp_method)m->dp_method;
    /* per-example while its gradients take at most twice the activations'
     * memory (tiny Shakespeare config: 1.1x; GPT-2 small: 0.3x) */
    double pe = (double)m->max_batch * (double)m->n_params;
    return pe <= 2.0 * (double)m->n_act_floats ? NAWAL_DP_PER_EXAMPLE : NAWAL_DP_BOOKKEEPING;
}

int nawal_gpt_dp_set_method(nawal_gpt *m, nawal_dp_method method, char *err, size_t errlen) {
    if (method != NAWAL_DP_AUTO && method != NAWAL_DP_BOOKKEEPING && method != NAWAL_DP_PER_EXAMPLE) {
        snprintf(err, errlen, "unknown DP method %d", (int)method);
        return -1;
    }
    m->dp_method = method;
    if (method == NAWAL_DP_BOOKKEEPING && m->dp_pe) { /* its memory back */
        m->ops->free(m->ops, m->dp_pe);
        m->dp_pe = NULL;
        m->dp_pe_stride = 0;
    }
    return 0;
}

static const char *const method_names[] = { "auto", "bookkeeping", "per-example" };

int nawal_dp_method_parse(const char *s, nawal_dp_method *out) {
    for (int i = 0; i < 3; i++)
        if (s && strcmp(s, method_names[i]) == 0) { *out = (nawal_dp_method)i; return 0; }
    return -1;
}

const char *nawal_dp_method_name(nawal_dp_method method) {
    return (unsigned)method < 3 ? method_names[method] : "?";
}

/* the per-example gradients for max_batch examples: 0; -1 with a message,
 * or, when AUTO picked the method, the book-keeping method from now on */
static int ensure_pe_buffer(nawal_gpt *m, char *err, size_t errlen) {
    const nawal_ops *o = m->ops;
    if (m->dp_pe) return 0;
    size_t stride = (m->n_params + PE_ALIGN - 1) / PE_ALIGN * PE_ALIGN, n = (size_t)m->max_batch * stride;
    m->dp_pe = stride / PE_ALIGN > 0x7fffffffu ? NULL : o->alloc(o, n * sizeof(float)); /* pe_norm_rows takes int rows */
    if (!m->dp_pe) {
        double gib = (double)n * sizeof(float) / (1 << 30);
        if (m->dp_method == NAWAL_DP_AUTO) {
            fprintf(stderr, "nawal: per-example DP gradients (%.2f GiB for batch %d) do not fit on %s: "
                    "using the book-keeping method\n", gib, m->max_batch, o->name);
            m->dp_method = NAWAL_DP_BOOKKEEPING;
            return 0;
        }
        snprintf(err, errlen, "out of memory for per-example DP gradients (%.2f GiB for batch %d) on %s: "
                 "use a smaller batch or the book-keeping method", gib, m->max_batch, o->name);
        return -1;
    }
    o->fill(o, m->dp_pe, 0.0f, n); /* the padding stays zero: the ops write only the tensors */
    m->dp_pe_stride = stride;
    return 0;
}

/* The kept output gradients: every layer's for the book-keeping method's
 * pass 2; the per-example method uses them only within a layer of pass 1,
 * so one layer's slots serve all layers (a third of GPT-2 small's DP memory
 * at batch 8 saved) */
static int ensure_buffers(nawal_gpt *m, char *err, size_t errlen) {
    const nawal_ops *o = m->ops;
    size_t N = (size_t)m->max_batch * m->cfg.n_ctx, C = m->cfg.n_embd;
    if (nawal_gpt_dp_method_in_force(m) == NAWAL_DP_PER_EXAMPLE && ensure_pe_buffer(m, err, errlen)) return -1;
    int layers = nawal_gpt_dp_method_in_force(m) == NAWAL_DP_PER_EXAMPLE ? 1 : m->cfg.n_layer;
    size_t store = ((size_t)layers * STORE_WIDTH_PER_LAYER + 1) * N * C;
    if (m->dp_store && m->dp_store_layers != layers) { /* the method changed */
        o->free(o, m->dp_store);
        m->dp_store = NULL;
    }
    if (!m->dp_store) {
        m->dp_store = o->alloc(o, store * sizeof(float));
        m->dp_store_layers = layers;
    }
    if (!m->dp_norms) m->dp_norms = o->alloc(o, (size_t)m->max_batch * sizeof(float));
    if (!m->dp_scales) m->dp_scales = o->alloc(o, (size_t)m->max_batch * sizeof(float));
    if (!m->dp_bounds) m->dp_bounds = o->alloc(o, (size_t)m->max_batch * sizeof(float));
    if (!m->dp_store || !m->dp_norms || !m->dp_scales || !m->dp_bounds) {
        snprintf(err, errlen, "out of memory for DP-SGD book-keeping (%zu floats) on %s", store, o->name);
        return -1;
    }
    return 0;
}

/* what pass 1 does besides the input gradients: the book-keeping method's
 * norms (and, with bounds, the rounding margin's bounds), or the
 * per-example method's gradients into pe (this shard's first example's) */
typedef struct {
    int bounding;
    int per_example;
} pass1_opts;

static void dp_pass1(void *ctx, int k) {
    shard_job *j = ctx;
    shard_view v = gpt_shard_begin(j, k);
    nawal_gpt *m = v.m;
    const nawal_ops *o = v.o;
    int B = v.B, T = v.T, N = v.N, C = v.C, NH = v.NH, V = v.V, L = m->cfg.n_layer;
    const pass1_opts *opt = j->ext;
    float *P = m->params, *norms = m->dp_norms + v.b0, *bounds = opt->bounding ? m->dp_bounds + v.b0 : NULL;
    size_t st = m->dp_pe_stride;
    float *pe = opt->per_example ? m->dp_pe + (size_t)v.b0 * st : NULL;
    top_acts ta = v.ta;
    scratch_bufs s = v.s;
    float *res_last = gpt_layer_acts(m, L - 1, v.b0, T).res3;
    float *d_lnf = layer_slots(m, L, v.r0).ln1;
/* a linear layer of layer l_ (tensors W_, B_): per example, its gradient,
 * or its weight's and bias's norms and the weight's rounding bound */
#define LINEAR(A_, D_, d_, p_, l_, W_, B_)                                                                   \
    do {                                                                                                     \
        if (pe) {                                                                                            \
            o->pe_grad_linear(o, gpt_lp(m, pe, (l_), (W_)), gpt_lp(m, pe, (l_), (B_)), st, (D_), (A_), B, T, \
                              (d_), (p_), NAWAL_W_IN_OUT);                                                   \
            break;                                                                                           \
        }                                                                                                    \
        o->pe_norm_linear(o, norms, (A_), (D_), B, T, (d_), (p_));                                           \
        if (bounds) o->pe_bound_linear(o, bounds, (A_), (D_), B, T, (d_), (p_));                             \
        o->pe_norm_bias(o, norms, (D_), B, T, (p_));                                                         \
    } while (0)
/* a layernorm (weight w_, bias b_ inside a params-shaped buffer): per example, its gradients, or their norm */
#define LAYERNORM(D_, X_, mean_, rstd_, w_, b_)                                                          \
    do {                                                                                                 \
        if (pe) o->pe_grad_layernorm(o, (w_), (b_), st, (D_), (X_), (mean_), (rstd_), B, T, C);          \
        else o->pe_norm_layernorm(o, norms, (D_), (X_), (mean_), (rstd_), B, T, C);                      \
    } while (0)

    o->fill(o, norms, 0.0f, (size_t)B);
    if (pe) /* the LM head's share of the tied matrix; the embedding's is added at the end */
        o->pe_grad_linear(o, gpt_wte(m, pe), NULL, st, ta.logits, ta.lnf, B, T, C, V, NAWAL_W_OUT_IN);
    if (bounds) {
        o->fill(o, bounds, 0.0f, (size_t)B);
        o->pe_bound_linear(o, bounds, ta.lnf, ta.logits, B, T, C, V); /* the LM head's share of the tied matrix */
    }
    o->fill(o, s.dres, 0.0f, (size_t)N * C);
    o->matmul_bwd(o, d_lnf, NULL, NULL, ta.logits, ta.lnf, gpt_wte(m, P), N, C, V, NAWAL_W_OUT_IN);
    LAYERNORM(d_lnf, res_last, ta.lnf_mean, ta.lnf_rstd, pe ? gpt_lnf(m, pe, 0) : NULL, pe ? gpt_lnf(m, pe, 1) : NULL);
    o->layernorm_bwd(o, s.dres, NULL, NULL, d_lnf, res_last, gpt_lnf(m, P, 0), ta.lnf_mean, ta.lnf_rstd, N, C);
    for (int l = L - 1; l >= 0; l--) {
        layer_acts a = gpt_layer_acts(m, l, v.b0, T);
        float *res_in = l == 0 ? ta.encoded : gpt_layer_acts(m, l - 1, v.b0, T).res3;
        kept_grads d = layer_slots(m, pe ? 0 : l, v.r0); /* per example: consumed within the layer */
        /* MLP branch */
        o->copy(o, d.fcproj, s.dres, (size_t)N * C);
        LINEAR(a.fch_gelu, d.fcproj, 4 * C, C, l, NAWAL_P_FCPROJ_W, NAWAL_P_FCPROJ_B);
        o->matmul_bwd(o, d.fc, NULL, NULL, d.fcproj, a.fch_gelu, gpt_lp(m, P, l, NAWAL_P_FCPROJ_W), N, 4 * C, C, NAWAL_W_IN_OUT);
        o->gelu_bwd(o, d.fc, a.fch, d.fc, (size_t)N * 4 * C);
        LINEAR(a.ln2, d.fc, C, 4 * C, l, NAWAL_P_FC_W, NAWAL_P_FC_B);
        o->matmul_bwd(o, d.ln2, NULL, NULL, d.fc, a.ln2, gpt_lp(m, P, l, NAWAL_P_FC_W), N, C, 4 * C, NAWAL_W_IN_OUT);
        LAYERNORM(d.ln2, a.res2, a.ln2_mean, a.ln2_rstd, pe ? gpt_lp(m, pe, l, NAWAL_P_LN2_W) : NULL,
                  pe ? gpt_lp(m, pe, l, NAWAL_P_LN2_B) : NULL);
        o->layernorm_bwd(o, s.dres, NULL, NULL, d.ln2, a.res2, gpt_lp(m, P, l, NAWAL_P_LN2_W), a.ln2_mean, a.ln2_rstd, N, C);
        /* attention branch */
        o->copy(o, d.attproj, s.dres, (size_t)N * C);
        LINEAR(a.atty, d.attproj, C, C, l, NAWAL_P_ATTPROJ_W, NAWAL_P_ATTPROJ_B);
        o->matmul_bwd(o, s.dsmall, NULL, NULL, d.attproj, a.atty, gpt_lp(m, P, l, NAWAL_P_ATTPROJ_W), N, C, C, NAWAL_W_IN_OUT);
        o->attention_bwd(o, d.qkv, s.datt, s.dsmall, a.qkv, a.att, B, T, C, NH);
        LINEAR(a.ln1, d.qkv, C, 3 * C, l, NAWAL_P_QKV_W, NAWAL_P_QKV_B);
        o->matmul_bwd(o, d.ln1, NULL, NULL, d.qkv, a.ln1, gpt_lp(m, P, l, NAWAL_P_QKV_W), N, C, 3 * C, NAWAL_W_IN_OUT);
        LAYERNORM(d.ln1, res_in, a.ln1_mean, a.ln1_rstd, pe ? gpt_lp(m, pe, l, NAWAL_P_LN1_W) : NULL,
                  pe ? gpt_lp(m, pe, l, NAWAL_P_LN1_B) : NULL);
        o->layernorm_bwd(o, s.dres, NULL, NULL, d.ln1, res_in, gpt_lp(m, P, l, NAWAL_P_LN1_W), a.ln1_mean, a.ln1_rstd, N, C);
    }
    if (pe) {
        /* the embeddings, example by example: wte += the lookup's rows (the
         * head's share is already there), wpe = the position rows (zero past T) */
        for (int b = 0; b < B; b++) {
            float *g = pe + (size_t)b * st;
            o->fill(o, gpt_wpe(m, g), 0.0f, (size_t)m->cfg.n_ctx * C);
            o->embedding_bwd(o, gpt_wte(m, g), gpt_wpe(m, g), s.dres + (size_t)b * T * C, m->d_inputs + v.r0 + (size_t)b * T,
                             1, T, C);
        }
        o->pe_norm_rows(o, norms, pe, B, (int)(st / PE_ALIGN), PE_ALIGN);
    } else {
        o->pe_norm_rows(o, norms, s.dres, B, T, C);
        o->pe_norm_tied(o, norms, s.dres, m->d_inputs + v.r0, ta.lnf, ta.logits, B, T, C, V);
    }
#undef LINEAR
#undef LAYERNORM
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
    if (!o->pe_norm_linear || !o->pe_norm_tied || !o->scale_examples || !o->pe_bound_linear || !o->pe_grad_linear ||
        !o->pe_grad_layernorm || !o->pe_sum) {
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
    pass1_opts opt = { .bounding = p2 != NAWAL_PREC_FP32,
                       .per_example = nawal_gpt_dp_method_in_force(m) == NAWAL_DP_PER_EXAMPLE };
    shard_job j = { .m = m, .B = B, .T = T, .S = gpt_shard_count(m, B), .ext = &opt };
    gpt_run_shards(m, &j, dp_pass1);
    o->download(o, norms, m->dp_norms, (size_t)B * sizeof(float));
    if (opt.bounding) o->download(o, bounds, m->dp_bounds, (size_t)B * sizeof(float));
    double grow = nawal_gpt_dp_margin_factor(p2);
    for (int b = 0; b < B; b++) {
        if (!isfinite(norms[b])) { /* a NaN or overflowing gradient: nothing of this step may be released */
            snprintf(err, errlen, "example %d of the batch has a gradient norm of %g: the DP step is refused (training diverged?)",
                     b, (double)norms[b]);
            free(h);
            return -1;
        }
        float nrm = sqrtf(norms[b] > 0.0f ? norms[b] : 0.0f);
        if (norms_out) norms_out[b] = nrm;
        /* a bound that is not a number clips the example to nothing */
        double margin = !opt.bounding ? 0.0 : bounds[b] >= 0.0f ? grow * sqrt((double)bounds[b]) : INFINITY;
        double c = fmin(1.0, (double)max_grad_norm / ((double)nrm + margin + 1e-6));
        float cf = (float)c;
        h[b] = (double)cf > c ? nextafterf(cf, 0.0f) : cf; /* never above the factor computed */
    }
    o->upload(o, m->dp_scales, h, (size_t)B * sizeof(float));
    if (opt.per_example) { /* the clipped sum over the stored gradients: nothing to recompute */
        o->pe_sum(o, m->grads, m->dp_pe, m->dp_pe_stride, m->dp_scales, B, m->n_params);
    } else {
        /* the precision is the backend's (process-wide on the CPU): nothing
         * else runs ops while this call does, and it is restored before returning */
        if (p2 != prec && o->set_precision(o, p2, err, errlen)) { free(h); return -1; }
        gpt_shard_grads_begin(m, &j);
        gpt_run_shards(m, &j, dp_pass2);
        gpt_shard_grads_end(m, &j);
        if (p2 != prec) restore_precision(o, prec); /* the gradients are in: this must not fail the call */
    }
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
    if (o->get_precision(o) == NAWAL_PREC_FP32 || nawal_gpt_dp_method_in_force(m) == NAWAL_DP_PER_EXAMPLE)
        return NAWAL_PREC_FP32;
    return m->dp_pass2;
}

void nawal_gpt_dp_finish(nawal_gpt *m, float noise_std, double expected_batch, uint64_t key, uint64_t stream) {
    const nawal_ops *o = m->ops;
    if (noise_std > 0.0f) o->add_noise(o, m->grads, m->n_params, noise_std, key, stream);
    if (expected_batch > 0.0) o->scale(o, m->grads, (float)(1.0 / expected_batch), m->n_params);
}
