/* gpt.c - GPT-2 forward and backward, written once against ops.h.
 *
 * Layout of the flat buffers:
 *  params/grads: HF order (wte, wpe, per layer ln_1 .. mlp.c_proj, ln_f), see
 *                build_tensors();
 *  acts:         per layer ln1, ln1 mean/rstd, qkv, atty, att, res2, ln2,
 *                ln2 mean/rstd, fch, fch_gelu, res3; then encoded, lnf,
 *                lnf mean/rstd, logits, losses; each sized for max_batch x n_ctx
 *                and used as a prefix for smaller batches;
 *  scratch:      dres [N][C], dsmall [N][C], dbig [N][4C], datt [B][NH][T][T].
 * Every op is row-local except the parameter-gradient accumulations, so a
 * batch is split into shards of whole sequences run concurrently where the
 * backend has host threads (ops->run_parallel): each shard works on its rows
 * of these buffers and accumulates into its own gradient buffer. On 2 cores
 * this scales better than splitting each small GEMM across threads.
 * The residual-stream gradient dres flows backwards through the layers; the
 * LayerNorm backward accumulates into it, which adds the skip path. */
#include "gpt_internal.h"
#include "philox.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LAYERS 256

int nawal_gpt_config_check(const nawal_gpt_config *c, char *err, size_t errlen) {
    if (c->n_layer < 1 || c->n_layer > MAX_LAYERS) { snprintf(err, errlen, "layers must be in [1,%d], got %d", MAX_LAYERS, c->n_layer); return -1; }
    if (c->n_head < 1 || c->n_head > 1024) { snprintf(err, errlen, "heads must be in [1,1024], got %d", c->n_head); return -1; }
    if (c->n_embd < 1 || c->n_embd > 65536) { snprintf(err, errlen, "width must be in [1,65536], got %d", c->n_embd); return -1; }
    if (c->n_embd % c->n_head) { snprintf(err, errlen, "width %d is not divisible by heads %d", c->n_embd, c->n_head); return -1; }
    if (c->n_ctx < 1 || c->n_ctx > 65536) { snprintf(err, errlen, "context must be in [1,65536], got %d", c->n_ctx); return -1; }
    if (c->vocab < 2 || c->vocab > (1 << 24)) { snprintf(err, errlen, "vocab must be in [2,2^24], got %d", c->vocab); return -1; }
    return 0;
}

static void add_tensor(nawal_gpt *m, const char *name, int ndim, int64_t d0, int64_t d1, int decay) {
    nawal_param_tensor *t = &m->tensors[m->n_tensors++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = ndim;
    t->shape[0] = d0;
    t->shape[1] = ndim == 2 ? d1 : 1;
    t->numel = (size_t)d0 * (size_t)(ndim == 2 ? d1 : 1);
    t->offset = m->n_params;
    t->decay = decay;
    m->n_params += t->numel;
}

static void build_tensors(nawal_gpt *m) {
    const nawal_gpt_config *c = &m->cfg;
    int C = c->n_embd;
    char nm[64];
    add_tensor(m, "transformer.wte.weight", 2, c->vocab, C, 1);
    add_tensor(m, "transformer.wpe.weight", 2, c->n_ctx, C, 1);
    for (int l = 0; l < c->n_layer; l++) {
#define T1(suffix, n) snprintf(nm, sizeof nm, "transformer.h.%d.%s", l, suffix), add_tensor(m, nm, 1, n, 0, 0)
#define T2(suffix, a, b) snprintf(nm, sizeof nm, "transformer.h.%d.%s", l, suffix), add_tensor(m, nm, 2, a, b, 1)
        T1("ln_1.weight", C); T1("ln_1.bias", C);
        T2("attn.c_attn.weight", C, 3 * C); T1("attn.c_attn.bias", 3 * C);
        T2("attn.c_proj.weight", C, C); T1("attn.c_proj.bias", C);
        T1("ln_2.weight", C); T1("ln_2.bias", C);
        T2("mlp.c_fc.weight", C, 4 * C); T1("mlp.c_fc.bias", 4 * C);
        T2("mlp.c_proj.weight", 4 * C, C); T1("mlp.c_proj.bias", C);
#undef T1
#undef T2
    }
    add_tensor(m, "transformer.ln_f.weight", 1, C, 0, 0);
    add_tensor(m, "transformer.ln_f.bias", 1, C, 0, 0);
}

/* pointer to tensor i of layer l inside a params-shaped buffer */
float *gpt_lp(const nawal_gpt *m, float *base, int l, int i) {
    return base + m->tensors[2 + l * NAWAL_P_PER_LAYER + i].offset;
}
float *gpt_wte(const nawal_gpt *m, float *base) { return base + m->tensors[0].offset; }
float *gpt_wpe(const nawal_gpt *m, float *base) { return base + m->tensors[1].offset; }
float *gpt_lnf(const nawal_gpt *m, float *base, int i) { return base + m->tensors[m->n_tensors - 2 + i].offset; }


static size_t layer_act_floats(const nawal_gpt_config *c, size_t N, size_t B) {
    size_t C = c->n_embd, T = c->n_ctx;
    return N * C * 5 + N * 4 + N * 3 * C + B * c->n_head * T * T + N * 4 * C * 2;
}

/* Views of layer l's activations for the sequences from b0 on (sequence
 * length T): every buffer is row-major, so a shard's rows are an offset. */
layer_acts gpt_layer_acts(const nawal_gpt *m, int l, int b0, int T) {
    size_t N = (size_t)m->max_batch * m->cfg.n_ctx, C = m->cfg.n_embd, TM = m->cfg.n_ctx;
    size_t r0 = (size_t)b0 * T, NH = m->cfg.n_head;
    float *p = m->acts + (size_t)l * layer_act_floats(&m->cfg, N, m->max_batch);
    layer_acts a;
    a.ln1 = p + r0 * C; p += N * C;
    a.ln1_mean = p + r0; p += N;
    a.ln1_rstd = p + r0; p += N;
    a.qkv = p + r0 * 3 * C; p += N * 3 * C;
    a.atty = p + r0 * C; p += N * C;
    a.att = p + (size_t)b0 * NH * T * T; p += (size_t)m->max_batch * NH * TM * TM;
    a.res2 = p + r0 * C; p += N * C;
    a.ln2 = p + r0 * C; p += N * C;
    a.ln2_mean = p + r0; p += N;
    a.ln2_rstd = p + r0; p += N;
    a.fch = p + r0 * 4 * C; p += N * 4 * C;
    a.fch_gelu = p + r0 * 4 * C; p += N * 4 * C;
    a.res3 = p + r0 * C;
    return a;
}

top_acts gpt_top_acts(const nawal_gpt *m, int b0, int T) {
    size_t N = (size_t)m->max_batch * m->cfg.n_ctx, C = m->cfg.n_embd, r0 = (size_t)b0 * T;
    float *p = m->acts + (size_t)m->cfg.n_layer * layer_act_floats(&m->cfg, N, m->max_batch);
    top_acts a;
    a.encoded = p + r0 * C; p += N * C;
    a.lnf = p + r0 * C; p += N * C;
    a.lnf_mean = p + r0; p += N;
    a.lnf_rstd = p + r0; p += N;
    a.logits = p + r0 * m->cfg.vocab; p += N * m->cfg.vocab;
    a.losses = p + r0;
    return a;
}

scratch_bufs gpt_scratch(const nawal_gpt *m, int b0, int T) {
    size_t N = (size_t)m->max_batch * m->cfg.n_ctx, C = m->cfg.n_embd, r0 = (size_t)b0 * T;
    scratch_bufs s;
    s.dres = m->scratch + r0 * C;
    s.dsmall = m->scratch + N * C + r0 * C;
    s.dbig = m->scratch + 2 * N * C + r0 * 4 * C;
    s.datt = m->scratch + 6 * N * C + (size_t)b0 * m->cfg.n_head * T * T;
    return s;
}

int nawal_gpt_create(nawal_gpt **out, const nawal_ops *ops, const nawal_gpt_config *cfg,
                     int max_batch, char *err, size_t errlen) {
    *out = NULL;
    if (nawal_gpt_config_check(cfg, err, errlen)) return -1;
    if (max_batch < 1 || max_batch > 1 << 20) { snprintf(err, errlen, "batch must be in [1,2^20], got %d", max_batch); return -1; }
    nawal_gpt *m = calloc(1, sizeof *m);
    if (!m) { snprintf(err, errlen, "out of memory"); return -1; }
    m->cfg = *cfg;
    m->ops = ops;
    /* DP pass 2: exact fp32 on the CPU (bf16's margin would clip ~6% harder
     * at T 64 and fp32 costs the CPU little); tf32 with its margin on a GPU,
     * where fp32 products leave the tensor cores (model/dp.c) */
    m->dp_pass2 = strcmp(ops->name, "cuda") == 0 ? NAWAL_PREC_TF32 : NAWAL_PREC_FP32;
    m->max_batch = max_batch;
    m->tensors = calloc((size_t)cfg->n_layer * NAWAL_P_PER_LAYER + 4, sizeof *m->tensors);
    if (!m->tensors) { free(m); snprintf(err, errlen, "out of memory"); return -1; }
    build_tensors(m);
    size_t N = (size_t)max_batch * cfg->n_ctx, C = cfg->n_embd, T = cfg->n_ctx;
    m->n_act_floats = (size_t)cfg->n_layer * layer_act_floats(cfg, N, max_batch) + N * C * 2 + N * 2 + N * cfg->vocab + N;
    m->n_scratch_floats = N * C * 2 + N * 4 * C + (size_t)max_batch * cfg->n_head * T * T;
    m->params = ops->alloc(ops, m->n_params * sizeof(float));
    m->grads = ops->alloc(ops, m->n_params * sizeof(float));
    m->acts = ops->alloc(ops, m->n_act_floats * sizeof(float));
    m->scratch = ops->alloc(ops, m->n_scratch_floats * sizeof(float));
    m->d_inputs = ops->alloc(ops, N * sizeof(int32_t));
    m->d_targets = ops->alloc(ops, N * sizeof(int32_t));
    m->h_losses = malloc(N * sizeof(float));
    if (!m->params || !m->grads || !m->acts || !m->scratch || !m->d_inputs || !m->d_targets || !m->h_losses) {
        snprintf(err, errlen, "out of memory allocating a %d-layer model (%zu params) for batch %d on %s",
                 cfg->n_layer, m->n_params, max_batch, ops->name);
        nawal_gpt_free(m);
        return -1;
    }
    ops->fill(ops, m->grads, 0.0f, m->n_params);
    *out = m;
    return 0;
}

void nawal_gpt_free(nawal_gpt *m) {
    if (!m) return;
    const nawal_ops *o = m->ops;
    if (m->graph) o->graph_free(o, m->graph);
    void *bufs[] = { m->params, m->grads, m->opt_m, m->opt_v, m->acts, m->scratch, m->d_inputs, m->d_targets,
                     m->dp_store, m->dp_norms, m->dp_scales, m->dp_bounds, m->dp_pe };
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) if (bufs[i]) o->free(o, bufs[i]);
    for (int k = 0; k < NAWAL_GPT_MAX_SHARDS - 1; k++) if (m->shard_grads[k]) o->free(o, m->shard_grads[k]);
    free(m->h_losses);
    free(m->tensors);
    free(m);
}

const nawal_param_tensor *nawal_gpt_find_tensor(const nawal_gpt *m, const char *name) {
    for (int i = 0; i < m->n_tensors; i++) if (strcmp(m->tensors[i].name, name) == 0) return &m->tensors[i];
    return NULL;
}

void nawal_gpt_init_params(nawal_gpt *m, uint64_t seed) {
    float *h = malloc(m->n_params * sizeof(float));
    if (!h) { fprintf(stderr, "nawal: out of memory initialising parameters\n"); abort(); }
    float proj_std = 0.02f / sqrtf(2.0f * m->cfg.n_layer);
    for (int i = 0; i < m->n_tensors; i++) {
        const nawal_param_tensor *t = &m->tensors[i];
        float *p = h + t->offset;
        const char *nm = t->name;
        size_t len = strlen(nm);
        int is_ln_w = strstr(nm, ".ln_") && strcmp(nm + len - 7, ".weight") == 0;
        if (t->ndim == 1) {
            for (size_t j = 0; j < t->numel; j++) p[j] = is_ln_w ? 1.0f : 0.0f;
            continue;
        }
        float std = strstr(nm, "c_proj.weight") ? proj_std : 0.02f;
        for (size_t j = 0; j < t->numel; j += 2) {
            float z0, z1;
            nawal_philox_normal2(seed, (uint64_t)i, j / 2, &z0, &z1);
            p[j] = z0 * std;
            if (j + 1 < t->numel) p[j + 1] = z1 * std;
        }
    }
    m->ops->upload(m->ops, m->params, h, m->n_params * sizeof(float));
    free(h);
}

/* Row offsets of shard [b0, b0+nb) inside the max-size buffers. */
static void shard_rows(const shard_job *j, int k, int *b0, int *nb) {
    int base = j->B / j->S, extra = j->B % j->S;
    *b0 = k * base + (k < extra ? k : extra);
    *nb = base + (k < extra ? 1 : 0);
}

shard_view gpt_shard_begin(const shard_job *j, int k) {
    shard_view v;
    v.m = j->m;
    v.o = j->m->ops;
    v.C = v.m->cfg.n_embd;
    v.NH = v.m->cfg.n_head;
    v.V = v.m->cfg.vocab;
    v.T = j->T;
    shard_rows(j, k, &v.b0, &v.B);
    v.N = v.B * v.T;
    v.r0 = (size_t)v.b0 * v.T;
    v.ta = gpt_top_acts(v.m, v.b0, v.T);
    v.s = gpt_scratch(v.m, v.b0, v.T);
    return v;
}

static void forward_shard(void *ctx, int k) {
    shard_job *j = ctx;
    shard_view v = gpt_shard_begin(j, k);
    nawal_gpt *m = v.m;
    const nawal_ops *o = v.o;
    int B = v.B, T = v.T, N = v.N, C = v.C, NH = v.NH, V = v.V;
    float *P = m->params, *tmp = v.s.dsmall, *res = v.ta.encoded;
    o->embedding_fwd(o, res, m->d_inputs + v.r0, gpt_wte(m, P), gpt_wpe(m, P), B, T, C);
    for (int l = 0; l < m->cfg.n_layer; l++) {
        layer_acts a = gpt_layer_acts(m, l, v.b0, T);
        o->layernorm_fwd(o, a.ln1, a.ln1_mean, a.ln1_rstd, res, gpt_lp(m, P, l, NAWAL_P_LN1_W), gpt_lp(m, P, l, NAWAL_P_LN1_B), N, C);
        o->matmul_fwd(o, a.qkv, a.ln1, gpt_lp(m, P, l, NAWAL_P_QKV_W), gpt_lp(m, P, l, NAWAL_P_QKV_B), N, C, 3 * C, NAWAL_W_IN_OUT);
        o->attention_fwd(o, a.atty, a.att, a.qkv, B, T, C, NH);
        o->matmul_fwd(o, tmp, a.atty, gpt_lp(m, P, l, NAWAL_P_ATTPROJ_W), gpt_lp(m, P, l, NAWAL_P_ATTPROJ_B), N, C, C, NAWAL_W_IN_OUT);
        o->residual_fwd(o, a.res2, res, tmp, (size_t)N * C);
        o->layernorm_fwd(o, a.ln2, a.ln2_mean, a.ln2_rstd, a.res2, gpt_lp(m, P, l, NAWAL_P_LN2_W), gpt_lp(m, P, l, NAWAL_P_LN2_B), N, C);
        o->matmul_fwd(o, a.fch, a.ln2, gpt_lp(m, P, l, NAWAL_P_FC_W), gpt_lp(m, P, l, NAWAL_P_FC_B), N, C, 4 * C, NAWAL_W_IN_OUT);
        o->gelu_fwd(o, a.fch_gelu, a.fch, (size_t)N * 4 * C);
        o->matmul_fwd(o, tmp, a.fch_gelu, gpt_lp(m, P, l, NAWAL_P_FCPROJ_W), gpt_lp(m, P, l, NAWAL_P_FCPROJ_B), N, 4 * C, C, NAWAL_W_IN_OUT);
        o->residual_fwd(o, a.res3, a.res2, tmp, (size_t)N * C);
        res = a.res3;
    }
    top_acts ta = v.ta;
    o->layernorm_fwd(o, ta.lnf, ta.lnf_mean, ta.lnf_rstd, res, gpt_lnf(m, P, 0), gpt_lnf(m, P, 1), N, C);
    o->matmul_fwd(o, ta.logits, ta.lnf, gpt_wte(m, P), NULL, N, C, V, NAWAL_W_OUT_IN);
    if (j->scale >= 0.0f) o->softmax_xent(o, ta.logits, ta.losses, m->d_targets + v.r0, N, V, j->scale);
}

static void backward_shard(void *ctx, int k) {
    shard_job *j = ctx;
    shard_view v = gpt_shard_begin(j, k);
    nawal_gpt *m = v.m;
    const nawal_ops *o = v.o;
    int B = v.B, T = v.T, N = v.N, C = v.C, NH = v.NH, V = v.V, L = m->cfg.n_layer;
    float *P = m->params, *G = j->grads[k];
    top_acts ta = v.ta;
    scratch_bufs s = v.s;
    float *res_last = L ? gpt_layer_acts(m, L - 1, v.b0, T).res3 : ta.encoded;

    o->fill(o, s.dres, 0.0f, (size_t)N * C);
    o->matmul_bwd(o, s.dsmall, gpt_wte(m, G), NULL, ta.logits, ta.lnf, gpt_wte(m, P), N, C, V, NAWAL_W_OUT_IN);
    o->layernorm_bwd(o, s.dres, gpt_lnf(m, G, 0), gpt_lnf(m, G, 1), s.dsmall, res_last, gpt_lnf(m, P, 0), ta.lnf_mean, ta.lnf_rstd, N, C);
    for (int l = L - 1; l >= 0; l--) {
        layer_acts a = gpt_layer_acts(m, l, v.b0, T);
        float *res_in = l == 0 ? ta.encoded : gpt_layer_acts(m, l - 1, v.b0, T).res3;
        /* MLP branch: res3 = res2 + fcproj(gelu(fc(ln2(res2)))) */
        o->matmul_bwd(o, s.dbig, gpt_lp(m, G, l, NAWAL_P_FCPROJ_W), gpt_lp(m, G, l, NAWAL_P_FCPROJ_B), s.dres, a.fch_gelu, gpt_lp(m, P, l, NAWAL_P_FCPROJ_W), N, 4 * C, C, NAWAL_W_IN_OUT);
        o->gelu_bwd(o, s.dbig, a.fch, s.dbig, (size_t)N * 4 * C);
        o->matmul_bwd(o, s.dsmall, gpt_lp(m, G, l, NAWAL_P_FC_W), gpt_lp(m, G, l, NAWAL_P_FC_B), s.dbig, a.ln2, gpt_lp(m, P, l, NAWAL_P_FC_W), N, C, 4 * C, NAWAL_W_IN_OUT);
        o->layernorm_bwd(o, s.dres, gpt_lp(m, G, l, NAWAL_P_LN2_W), gpt_lp(m, G, l, NAWAL_P_LN2_B), s.dsmall, a.res2, gpt_lp(m, P, l, NAWAL_P_LN2_W), a.ln2_mean, a.ln2_rstd, N, C);
        /* attention branch: res2 = res_in + attproj(attn(qkv(ln1(res_in)))) */
        o->matmul_bwd(o, s.dsmall, gpt_lp(m, G, l, NAWAL_P_ATTPROJ_W), gpt_lp(m, G, l, NAWAL_P_ATTPROJ_B), s.dres, a.atty, gpt_lp(m, P, l, NAWAL_P_ATTPROJ_W), N, C, C, NAWAL_W_IN_OUT);
        o->attention_bwd(o, s.dbig, s.datt, s.dsmall, a.qkv, a.att, B, T, C, NH);
        o->matmul_bwd(o, s.dsmall, gpt_lp(m, G, l, NAWAL_P_QKV_W), gpt_lp(m, G, l, NAWAL_P_QKV_B), s.dbig, a.ln1, gpt_lp(m, P, l, NAWAL_P_QKV_W), N, C, 3 * C, NAWAL_W_IN_OUT);
        o->layernorm_bwd(o, s.dres, gpt_lp(m, G, l, NAWAL_P_LN1_W), gpt_lp(m, G, l, NAWAL_P_LN1_B), s.dsmall, res_in, gpt_lp(m, P, l, NAWAL_P_LN1_W), a.ln1_mean, a.ln1_rstd, N, C);
    }
    o->embedding_bwd(o, gpt_wte(m, G), gpt_wpe(m, G), s.dres, m->d_inputs + v.r0, B, T, C);
}

/* Shards a batch of B sequences is split into: one per backend thread (at
 * most NAWAL_GPT_MAX_SHARDS, at most B); 1 on backends without host threads. */
int gpt_shard_count(const nawal_gpt *m, int B) {
    int w = m->ops->parallel_width ? m->ops->parallel_width(m->ops) : 1;
    if (w > NAWAL_GPT_MAX_SHARDS) w = NAWAL_GPT_MAX_SHARDS;
    return w < 1 ? 1 : (w > B ? B : w);
}

void gpt_run_shards(nawal_gpt *m, shard_job *j, void (*fn)(void *, int)) {
    if (j->S == 1) fn(j, 0);
    else m->ops->run_parallel(m->ops, j->S, fn, j);
}

/* A forward's host side: checks the batch and its tokens, uploads them and
 * gives the loss scale (< 0: no loss; 0: loss only; > 0: loss and dlogits
 * scaled by it) and the count of non-ignored targets; 0 or -1 with err. */
static int forward_prepare(nawal_gpt *m, const int32_t *inputs, const int32_t *targets, int B, int T, int want_grad,
                           size_t *valid_out, float *scale_out, char *err, size_t errlen) {
    const nawal_ops *o = m->ops;
    const nawal_gpt_config *c = &m->cfg;
    int V = c->vocab;
    if (B < 1 || B > m->max_batch || T < 1 || T > c->n_ctx) {
        snprintf(err, errlen, "batch %dx%d outside the model's %dx%d", B, T, m->max_batch, c->n_ctx);
        return -1;
    }
    int N = B * T;
    size_t valid = 0;
    for (int i = 0; i < N; i++) {
        if (inputs[i] < 0 || inputs[i] >= V) { snprintf(err, errlen, "input token %d at position %d outside vocab %d", inputs[i], i, V); return -1; }
        if (targets) {
            if (targets[i] >= V || targets[i] < -1) { snprintf(err, errlen, "target token %d at position %d outside vocab %d", targets[i], i, V); return -1; }
            valid += targets[i] >= 0;
        }
    }
    m->cur_B = B;
    m->cur_T = T;
    m->has_grad_logits = 0;
    o->upload(o, m->d_inputs, inputs, (size_t)N * sizeof(int32_t));
    if (targets) o->upload(o, m->d_targets, targets, (size_t)N * sizeof(int32_t));
    *valid_out = valid;
    *scale_out = !targets ? -1.0f : ((want_grad && valid) ? 1.0f / (float)valid : 0.0f);
    return 0;
}

/* the mean of the last forward's per-position losses over valid targets */
static float forward_loss(nawal_gpt *m, int N, size_t valid) {
    const nawal_ops *o = m->ops;
    o->download(o, m->h_losses, gpt_top_acts(m, 0, 0).losses, (size_t)N * sizeof(float));
    double sum = 0.0;
    for (int i = 0; i < N; i++) sum += m->h_losses[i];
    return valid ? (float)(sum / (double)valid) : 0.0f;
}

static void forward_run(nawal_gpt *m, int B, int T, float scale) {
    shard_job j = { .m = m, .B = B, .T = T, .S = gpt_shard_count(m, B), .scale = scale };
    gpt_run_shards(m, &j, forward_shard);
}

static void backward_run(nawal_gpt *m, int B, int T) {
    shard_job j = { .m = m, .B = B, .T = T, .S = gpt_shard_count(m, B) };
    gpt_shard_grads_begin(m, &j);
    gpt_run_shards(m, &j, backward_shard);
    gpt_shard_grads_end(m, &j);
}

float nawal_gpt_forward(nawal_gpt *m, const int32_t *inputs, const int32_t *targets, int B, int T,
                        int want_grad, size_t *n_valid, char *err, size_t errlen) {
    size_t valid;
    float scale;
    if (forward_prepare(m, inputs, targets, B, T, want_grad, &valid, &scale, err, errlen)) return NAN;
    forward_run(m, B, T, scale);
    if (n_valid) *n_valid = valid;
    if (!targets) return 0.0f;
    if (want_grad && !valid) /* all ignored: zero gradient */
        m->ops->fill(m->ops, gpt_top_acts(m, 0, T).logits, 0.0f, (size_t)B * T * m->cfg.vocab);
    m->has_grad_logits = want_grad;
    return forward_loss(m, B * T, valid);
}

void nawal_gpt_backward(nawal_gpt *m) {
    if (!m->has_grad_logits) { fprintf(stderr, "nawal: backward without a forward that kept gradients\n"); abort(); }
    backward_run(m, m->cur_B, m->cur_T);
    m->has_grad_logits = 0;
}

void nawal_gpt_set_graphs(nawal_gpt *m, int on) {
    m->use_graphs = on != 0;
    if (!on && m->graph) {
        m->ops->graph_free(m->ops, m->graph);
        m->graph = NULL;
    }
}

static int same_key(const nawal_graph_key *a, const nawal_graph_key *b) {
    return a->B == b->B && a->T == b->T && a->prec == b->prec && a->scale == b->scale;
}

/* Graphs: a step's ops are captured once the same (B, T, loss scale,
 * precision) ran uncaptured (plans, scratch and pointer arrays exist),
 * replayed while they stay the same; any other step runs op by op. A
 * capture that fails turns graphs off for the model (the backend said
 * why). Sharded backends (the CPU) have no graphs. */
float nawal_gpt_forward_backward(nawal_gpt *m, const int32_t *inputs, const int32_t *targets, int B, int T,
                                 size_t *n_valid, char *err, size_t errlen) {
    const nawal_ops *o = m->ops;
    size_t valid;
    float scale;
    if (!targets) { snprintf(err, errlen, "a training step needs targets"); return NAN; }
    if (forward_prepare(m, inputs, targets, B, T, 1, &valid, &scale, err, errlen)) return NAN;
    if (n_valid) *n_valid = valid;
    if (!valid) { /* nothing to learn from: a zero gradient, no kernels worth a graph */
        forward_run(m, B, T, 0.0f);
        return 0.0f;
    }
    int graphs = m->use_graphs && !m->graph_failed && o->capture_begin && gpt_shard_count(m, B) == 1, done = 0;
    nawal_graph_key key = { B, T, (int)o->get_precision(o), scale };
    if (graphs && m->graph && same_key(&m->graph_key, &key)) done = o->graph_launch(o, m->graph) == 0;
    if (!done && graphs && same_key(&m->graph_seen, &key)) {
        if (m->graph) o->graph_free(o, m->graph);
        m->graph = NULL;
        if (o->capture_begin(o) == 0) {
            forward_run(m, B, T, scale);
            backward_run(m, B, T);
            m->graph = o->capture_end(o);
        }
        if (m->graph) {
            m->graph_key = key;
            done = o->graph_launch(o, m->graph) == 0;
        } else {
            m->graph_failed = 1;
        }
    }
    if (!done) {
        forward_run(m, B, T, scale);
        backward_run(m, B, T);
        if (graphs) m->graph_seen = key;
    }
    m->has_grad_logits = 0;
    return forward_loss(m, B * T, valid);
}

/* shard 0 accumulates into m->grads; the others into zeroed buffers
 * added in afterwards, in shard order (deterministic for a thread count) */
void gpt_shard_grads_begin(nawal_gpt *m, shard_job *j) {
    const nawal_ops *o = m->ops;
    j->grads[0] = m->grads;
    for (int k = 1; k < j->S; k++) {
        if (!m->shard_grads[k - 1]) {
            m->shard_grads[k - 1] = o->alloc(o, m->n_params * sizeof(float));
            if (!m->shard_grads[k - 1]) { fprintf(stderr, "nawal: out of memory for per-thread gradients\n"); abort(); }
        }
        j->grads[k] = m->shard_grads[k - 1];
        o->fill(o, j->grads[k], 0.0f, m->n_params);
    }
}

void gpt_shard_grads_end(nawal_gpt *m, shard_job *j) {
    for (int k = 1; k < j->S; k++) m->ops->axpy(m->ops, m->grads, 1.0f, j->grads[k], m->n_params);
}

void nawal_gpt_zero_grad(nawal_gpt *m) { m->ops->fill(m->ops, m->grads, 0.0f, m->n_params); }

const float *nawal_gpt_logits(const nawal_gpt *m) { return gpt_top_acts(m, 0, 0).logits; }

double nawal_gpt_train_flops_per_token(const nawal_gpt_config *c, int T) {
    double C = c->n_embd, L = c->n_layer;
    double n = (double)c->vocab * C + L * (12.0 * C * C + 13.0 * C) + 2.0 * C; /* all but wpe */
    return 6.0 * n + 6.0 * L * C * T;
}
