/* gpt.h - the GPT-2 model: config, flat parameter/gradient/activation
 * buffers, forward and backward written once against ops.h.
 *
 * Exactly GPT-2: learned positions, pre-LayerNorm blocks, tanh-GELU MLP of
 * width 4C, tied token-embedding / LM-head matrix. Parameters live in one
 * flat buffer in Hugging Face order and layout (Conv1D weights are
 * [in][out]), described by a tensor table that checkpoints and optimizers
 * walk. */
#ifndef NAWAL_GPT_H
#define NAWAL_GPT_H

#include "ops.h"
#include <stddef.h>
#include <stdint.h>

typedef struct {
    int n_layer, n_head, n_embd, n_ctx, vocab;
} nawal_gpt_config;

/* One named parameter tensor inside the flat buffer. */
typedef struct {
    char name[64];        /* Hugging Face GPT-2 name, e.g. transformer.h.0.attn.c_attn.weight */
    int ndim;
    int64_t shape[2];
    size_t offset, numel; /* in floats */
    int decay;            /* 1: weight decay applies (matrices), 0: biases, LayerNorm */
} nawal_param_tensor;

/* Per-tensor indices inside a layer, in HF order. */
enum {
    NAWAL_P_LN1_W, NAWAL_P_LN1_B, NAWAL_P_QKV_W, NAWAL_P_QKV_B, NAWAL_P_ATTPROJ_W, NAWAL_P_ATTPROJ_B,
    NAWAL_P_LN2_W, NAWAL_P_LN2_B, NAWAL_P_FC_W, NAWAL_P_FC_B, NAWAL_P_FCPROJ_W, NAWAL_P_FCPROJ_B,
    NAWAL_P_PER_LAYER
};

#define NAWAL_GPT_MAX_SHARDS 64

/* what a captured training step's kernels take by value (gpt.c) */
typedef struct { int B, T, prec; float scale; } nawal_graph_key;

typedef struct nawal_gpt {
    nawal_gpt_config cfg;
    const nawal_ops *ops;
    int n_tensors;
    nawal_param_tensor *tensors;  /* host table */
    size_t n_params;
    float *params, *grads;        /* device buffers of n_params floats */
    float *opt_m, *opt_v;         /* optimizer state, allocated on first step */
    int opt_step;
    int max_batch;                /* activations sized for max_batch x n_ctx */
    float *acts;                  /* device: all forward activations */
    float *scratch;               /* device: backward scratch */
    int32_t *d_inputs, *d_targets;
    float *h_losses;              /* host copy of per-position losses */
    int cur_B, cur_T, has_grad_logits;
    float *shard_grads[NAWAL_GPT_MAX_SHARDS - 1]; /* per-thread gradients, allocated on use */
    size_t n_act_floats, n_scratch_floats;
    float *dp_store, *dp_norms, *dp_scales, *dp_bounds; /* DP-SGD book-keeping (dp.c), allocated on first use */
    int dp_store_layers;          /* layers whose output gradients dp_store holds */
    nawal_precision dp_pass2;     /* the clipped sum's products (dp.h: nawal_gpt_dp_set_pass2) */
    int dp_method;                /* nawal_dp_method (dp.h: nawal_gpt_dp_set_method) */
    int use_graphs, graph_failed; /* nawal_gpt_set_graphs; a capture failed: stop trying */
    void *graph;                  /* the captured forward + backward (backend handle) */
    nawal_graph_key graph_key, graph_seen; /* what it was captured for; the last uncaptured run */
    float *dp_pe;                 /* per-example method: max_batch gradients, dp_pe_stride floats apart */
    size_t dp_pe_stride;
} nawal_gpt;

/* Checks a config (positive sizes, width divisible by heads, caps). */
int nawal_gpt_config_check(const nawal_gpt_config *c, char *err, size_t errlen);

/* Creates a model with buffers for batches of up to max_batch sequences.
 * Parameters are uninitialised: call nawal_gpt_init_params or load them. */
int nawal_gpt_create(nawal_gpt **out, const nawal_ops *ops, const nawal_gpt_config *cfg,
                     int max_batch, char *err, size_t errlen);
void nawal_gpt_free(nawal_gpt *m);

/* GPT-2 initialisation: weights N(0, 0.02), residual projections
 * N(0, 0.02/sqrt(2 L)), biases 0, LayerNorm gain 1 bias 0; Philox keyed by seed. */
void nawal_gpt_init_params(nawal_gpt *m, uint64_t seed);

const nawal_param_tensor *nawal_gpt_find_tensor(const nawal_gpt *m, const char *name);

/* Forward pass over inputs[B][T] (host token ids, checked in [0, vocab)).
 * With targets (host, -1 = ignore) returns the mean loss over non-ignored
 * positions and stores their count in *n_valid; with want_grad the fused
 * loss also leaves dloss/dlogits ready for nawal_gpt_backward.
 * Returns NAN (with a message in err) on bad input. Without targets the
 * logits are available through nawal_gpt_logits. */
float nawal_gpt_forward(nawal_gpt *m, const int32_t *inputs, const int32_t *targets, int B, int T,
                        int want_grad, size_t *n_valid, char *err, size_t errlen);
/* Accumulates gradients of the last forward's mean loss into m->grads. */
void nawal_gpt_backward(nawal_gpt *m);
/* nawal_gpt_forward with gradients, then nawal_gpt_backward: the gradient
 * part of a training step, same results. With graphs on
 * (nawal_gpt_set_graphs) and a backend that has them (CUDA), the second
 * call with a batch of the same shape captures the step's ops in a graph
 * and later calls replay it: one launch instead of one per kernel. */
float nawal_gpt_forward_backward(nawal_gpt *m, const int32_t *inputs, const int32_t *targets, int B, int T,
                                 size_t *n_valid, char *err, size_t errlen);
/* Graph capture and replay in nawal_gpt_forward_backward: 1 on, 0 off
 * (the default). Ignored on backends without graphs. */
void nawal_gpt_set_graphs(nawal_gpt *m, int on);
void nawal_gpt_zero_grad(nawal_gpt *m);
/* Device pointer to the logits [B][T][vocab] of the last forward without targets. */
const float *nawal_gpt_logits(const nawal_gpt *m);

/* 6N + 6 L C T model FLOPs per token for training (forward + backward), N = parameters. */
double nawal_gpt_train_flops_per_token(const nawal_gpt_config *c, int T);

#endif
