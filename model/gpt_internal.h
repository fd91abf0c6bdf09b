/* gpt_internal.h - the GPT's buffer views and batch sharding, shared by
 * gpt.c (forward/backward) and dp.c (the DP-SGD backward) and by nothing
 * else: how params/grads/acts/scratch are laid out is gpt.c's business (see
 * the comment at its top). */
#ifndef NAWAL_GPT_INTERNAL_H
#define NAWAL_GPT_INTERNAL_H

#include "gpt.h"

/* tensor i of layer l (NAWAL_P_*) / wte / wpe / ln_f (i = 0 weight, 1 bias)
 * inside a params-shaped buffer */
float *gpt_lp(const nawal_gpt *m, float *base, int l, int i);
float *gpt_wte(const nawal_gpt *m, float *base);
float *gpt_wpe(const nawal_gpt *m, float *base);
float *gpt_lnf(const nawal_gpt *m, float *base, int i);

/* Activation views for the sequences from b0 on, sequence length T
 * (prefixes of max-size row-major buffers, so a shard's rows are an offset). */
typedef struct { float *ln1, *ln1_mean, *ln1_rstd, *qkv, *atty, *att, *res2, *ln2, *ln2_mean, *ln2_rstd, *fch, *fch_gelu, *res3; } layer_acts;
typedef struct { float *encoded, *lnf, *lnf_mean, *lnf_rstd, *logits, *losses; } top_acts;
typedef struct { float *dres, *dsmall, *dbig, *datt; } scratch_bufs;
layer_acts gpt_layer_acts(const nawal_gpt *m, int l, int b0, int T);
top_acts gpt_top_acts(const nawal_gpt *m, int b0, int T);
scratch_bufs gpt_scratch(const nawal_gpt *m, int b0, int T);

/* A batch of B sequences split into S shards of whole sequences; shard k
 * accumulates parameter gradients into grads[k]. ext: the caller's data. */
typedef struct { nawal_gpt *m; int B, T, S; float scale; float *grads[NAWAL_GPT_MAX_SHARDS]; void *ext; } shard_job;

/* What a shard works on: its sequences [b0, b0+B), their N = B*T rows. */
typedef struct {
    nawal_gpt *m;
    const nawal_ops *o;
    int B, T, N, C, NH, V, b0;
    size_t r0;
    top_acts ta;
    scratch_bufs s;
} shard_view;

shard_view gpt_shard_begin(const shard_job *j, int k);
int gpt_shard_count(const nawal_gpt *m, int B);
void gpt_run_shards(nawal_gpt *m, shard_job *j, void (*fn)(void *, int));
/* grads[0] = m->grads, grads[k > 0] = zeroed per-shard buffers; _end adds them into m->grads */
void gpt_shard_grads_begin(nawal_gpt *m, shard_job *j);
void gpt_shard_grads_end(nawal_gpt *m, shard_job *j);

#endif
