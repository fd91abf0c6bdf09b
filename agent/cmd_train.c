/* cmd_train.c - `nawal-agent train`: train a GPT on a local corpus with the
 * nanoGPT recipe (AdamW, warmup + cosine, clipping), print progress and the
 * final validation loss as `val_loss <float>`, optionally save a checkpoint.
 * With --dp the loop is DP-SGD (dp_train.h): per-example clipping, noise
 * derived from --epsilon/--delta, epsilon accounted before every step and
 * persisted in a signed budget file under --budget-dir (default: --key). */
#include "checkpoint.h"
#include "cli.h"
#include "cmds.h"
#include "corpus.h"
#include "dp.h"
#include "dp_train.h"
#include "identity.h"
#include "trainer.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

/* the --dp branch: budget, plan line, DP-SGD loop, summary; 0 or -1 (printed) */
static int train_private(nawal_gpt *m, const nawal_corpus *corpus, const nawal_train_config *tc, float epsilon,
                         float delta, float max_grad_norm, float sample_rate, float noise_mult, const char *budget_dir,
                         const char *key_dir, nawal_train_result *res) {
    char err[512] = "";
    nawal_dp_train_config dc = { .max_grad_norm = max_grad_norm, .sample_rate = sample_rate, .epsilon = epsilon,
                                 .delta = delta, .noise_multiplier = noise_mult, .budget = NULL, .seeded = 0 };
    nawal_identity id, *idp = NULL;
    if (key_dir) {
        if (nawal_identity_load(&id, key_dir, err, sizeof err)) { fprintf(stderr, "error: %s\n", err); return -1; }
        idp = &id;
    }
    if (!budget_dir) budget_dir = key_dir;
    if (budget_dir && nawal_privacy_budget_open(&dc.budget, budget_dir, idp, delta, 1, err, sizeof err)) {
        fprintf(stderr, "error: %s\n", err);
        return -1;
    }
    nawal_dp_report rep;
    int rc = -1;
    if (nawal_dp_train_plan(m, corpus->n_train, tc, &dc, &rep, err, sizeof err)) { fprintf(stderr, "error: %s\n", err); goto done; }
    double spent = 0.0;
    if (dc.budget && nawal_privacy_budget_epsilon(dc.budget, &spent, NULL, err, sizeof err)) {
        fprintf(stderr, "error: %s\n", err);
        goto done;
    }
    printf("dp-sgd: %zu examples, sample rate %.6g (expected batch %.1f), noise multiplier %.4f, max grad norm %g, "
           "target epsilon %g at delta %g; budget %s (spent so far %.4f)\n",
           rep.n_examples, rep.sample_rate, rep.expected_batch, rep.noise_multiplier, max_grad_norm, epsilon, delta,
           dc.budget ? nawal_privacy_budget_path(dc.budget) : "none (not persisted: pass --budget-dir or --key)", spent);
    fflush(stdout);
    if (nawal_dp_train_run(m, corpus->tokens, corpus->n_train, tc, &dc, stdout, res, &rep, err, sizeof err)) {
        fprintf(stderr, "error: %s\n", err);
        goto done;
    }
    printf("epsilon %.4f spent over %d steps (delta %g)%s\n", rep.epsilon_spent, rep.steps_done, delta,
           rep.stopped_by_budget ? ": stopped by the privacy budget" : "");
    rc = 0;
done:
    nawal_privacy_budget_close(dc.budget);
    return rc;
}

int nawal_cmd_train(int argc, char **argv) {
    nawal_gpt_config cfg = { .n_layer = 4, .n_head = 4, .n_embd = 128, .n_ctx = 64, .vocab = 0 };
    nawal_train_config tc;
    nawal_train_config_default(&tc);
    const char *data = NULL, *device = "auto", *out = NULL, *tokfile = NULL, *precision = "fp32";
    int threads = 0, skip_bad = 0, dp = 0;
    float epsilon = 0.0f, delta = 1e-5f, max_grad_norm = 1.0f, sample_rate = 0.0f, noise_mult = 0.0f;
    const char *budget_dir = NULL, *key_dir = NULL, *dp_method = "auto";
    int graphs = 0;
    nawal_flag flags[] = {
        { "data", NAWAL_FLAG_STR, &data, "training corpus: text file, or .jsonl with {\"text\": ...} per line", 0, -1, 1, 0 },
        { "layers", NAWAL_FLAG_INT, &cfg.n_layer, "transformer blocks", 1, 256, 0, 0 },
        { "heads", NAWAL_FLAG_INT, &cfg.n_head, "attention heads", 1, 1024, 0, 0 },
        { "width", NAWAL_FLAG_INT, &cfg.n_embd, "embedding width", 1, 65536, 0, 0 },
        { "context", NAWAL_FLAG_INT, &cfg.n_ctx, "context length in tokens", 1, 65536, 0, 0 },
        { "batch", NAWAL_FLAG_INT, &tc.batch, "sequences per step", 1, 1 << 20, 0, 0 },
        { "steps", NAWAL_FLAG_INT, &tc.steps, "optimizer steps", 1, 1 << 30, 0, 0 },
        { "lr", NAWAL_FLAG_FLOAT, &tc.lr, "peak learning rate", 0, 10, 0, 0 },
        { "min-lr", NAWAL_FLAG_FLOAT, &tc.min_lr, "final learning rate of the cosine decay", 0, 10, 0, 0 },
        { "warmup", NAWAL_FLAG_INT, &tc.warmup, "linear warmup steps", 0, 1 << 30, 0, 0 },
        { "weight-decay", NAWAL_FLAG_FLOAT, &tc.weight_decay, "AdamW weight decay (matrices only)", 0, 10, 0, 0 },
        { "beta1", NAWAL_FLAG_FLOAT, &tc.beta1, "AdamW beta1", 0, 1, 0, 0 },
        { "beta2", NAWAL_FLAG_FLOAT, &tc.beta2, "AdamW beta2", 0, 1, 0, 0 },
        { "grad-clip", NAWAL_FLAG_FLOAT, &tc.grad_clip, "global gradient-norm clip (0 = off)", 0, 1e9, 0, 0 },
        { "seed", NAWAL_FLAG_U64, &tc.seed, "seed for initialisation and batch sampling", 0, -1, 0, 0 },
        { "device", NAWAL_FLAG_STR, &device, "auto|cpu|cuda", 0, -1, 0, 0 },
        { "precision", NAWAL_FLAG_STR, &precision, "matmul precision fp32|tf32|bf16 (tf32: GPU only; bf16: GPU, or a CPU with AMX / AVX512-BF16)", 0, -1, 0, 0 },
        { "threads", NAWAL_FLAG_INT, &threads, "CPU threads (0 = all cores)", 0, 4096, 0, 0 },
        { "tokenizer", NAWAL_FLAG_STR, &tokfile, "BPE tokenizer file (default: byte-level)", 0, -1, 0, 0 },
        { "log-every", NAWAL_FLAG_INT, &tc.log_every, "progress line every N steps", 0, 1 << 30, 0, 0 },
        { "skip-bad-lines", NAWAL_FLAG_BOOL, &skip_bad, "skip malformed JSONL lines instead of failing", 0, -1, 0, 0 },
        { "out", NAWAL_FLAG_STR, &out, "checkpoint directory to write (model.safetensors + config.json)", 0, -1, 0, 0 },
        { "dp", NAWAL_FLAG_BOOL, &dp, "differentially private training (DP-SGD)", 0, -1, 0, 0 },
        { "epsilon", NAWAL_FLAG_FLOAT, &epsilon, "--dp: privacy target epsilon (stops before crossing it)", 0, 1e6, 0, 0 },
        { "delta", NAWAL_FLAG_FLOAT, &delta, "--dp: privacy delta", 0, 1, 0, 0 },
        { "max-grad-norm", NAWAL_FLAG_FLOAT, &max_grad_norm, "--dp: per-example clipping norm C", 0, 1e9, 0, 0 },
        { "sample-rate", NAWAL_FLAG_FLOAT, &sample_rate, "--dp: Poisson sampling rate q (default: batch / examples)", 0, 1, 0, 0 },
        { "noise-multiplier", NAWAL_FLAG_FLOAT, &noise_mult, "--dp: sigma (default: derived from --epsilon)", 0, 1e6, 0, 0 },
        { "budget-dir", NAWAL_FLAG_STR, &budget_dir, "--dp: directory of the privacy budget file (default: --key)", 0, -1, 0, 0 },
        { "key", NAWAL_FLAG_STR, &key_dir, "--dp: validator key directory; signs the budget file", 0, -1, 0, 0 },
        { "dp-method", NAWAL_FLAG_STR, &dp_method, "--dp: per-example gradients auto|per-example|bookkeeping (auto: per-example while it needs at most twice the activations' memory)", 0, -1, 0, 0 },
        { "graphs", NAWAL_FLAG_BOOL, &graphs, "CUDA: capture the training step in a graph and replay it (small models; without --dp)", 0, -1, 0, 0 },
    };
    int pr = nawal_flags_parse(argc, argv, flags, sizeof flags / sizeof flags[0],
                               "usage: nawal-agent train --data FILE [options]");
    if (pr) return pr == 1 ? 0 : 2;

    char err[512] = "";
    const nawal_ops *ops;
    nawal_tokenizer *tok = NULL;
    nawal_corpus corpus = { 0 };
    nawal_gpt *m = NULL;
    int rc = 1;
    nawal_dp_method method;
    if (nawal_dp_method_parse(dp_method, &method)) {
        fprintf(stderr, "error: --dp-method %s: expected auto, per-example or bookkeeping\n", dp_method);
        return 2;
    }
    if (nawal_agent_open_device(&ops, device, threads)) return 1;
    if (nawal_ops_set_precision_name(ops, precision, err, sizeof err)) { fprintf(stderr, "error: %s\n", err); return 2; }
    if (nawal_agent_load_tokenizer(&tok, tokfile)) return 1;
    if (nawal_corpus_load(&corpus, data, tok, skip_bad, err, sizeof err)) { fprintf(stderr, "error: %s\n", err); goto out; }
    if (corpus.n_skipped_lines) fprintf(stderr, "warning: skipped %zu malformed lines of %s\n", corpus.n_skipped_lines, data);
    cfg.vocab = nawal_tokenizer_vocab_size(tok);
    if (nawal_gpt_create(&m, ops, &cfg, tc.batch, err, sizeof err)) { fprintf(stderr, "error: %s\n", err); goto out; }
    nawal_gpt_init_params(m, tc.seed);
    nawal_gpt_set_graphs(m, graphs);
    if (nawal_gpt_dp_set_method(m, method, err, sizeof err)) { fprintf(stderr, "error: %s\n", err); goto out; }
    size_t n_val = corpus.n_tokens - corpus.n_train;
    printf("model: %d layers, %d heads, width %d, context %d, vocab %d: %zu parameters\n", cfg.n_layer, cfg.n_head,
           cfg.n_embd, cfg.n_ctx, cfg.vocab, m->n_params);
    printf("device: %s\n", ops->device_desc);
    printf("data: %s, %zu tokens (%zu train, %zu validation)\n", data, corpus.n_tokens, corpus.n_train, n_val);
    printf("training: %d steps of %d x %d tokens, lr %g -> %g (warmup %d), AdamW (%g, %g), wd %g, clip %g, seed %llu\n",
           tc.steps, tc.batch, cfg.n_ctx, tc.lr, tc.min_lr, tc.warmup, tc.beta1, tc.beta2, tc.weight_decay,
           tc.grad_clip, (unsigned long long)tc.seed);
    if (dp) printf("dp method: %s\n", nawal_dp_method_name(nawal_gpt_dp_method_in_force(m)));
    fflush(stdout);
    nawal_train_result res;
    if (dp) {
        if (train_private(m, &corpus, &tc, epsilon, delta, max_grad_norm, sample_rate, noise_mult, budget_dir, key_dir, &res))
            goto out;
    } else if (nawal_train_run(m, corpus.tokens, corpus.n_train, &tc, stdout, &res, err, sizeof err)) {
        fprintf(stderr, "error: %s\n", err);
        goto out;
    }
    printf("trained %d steps in %.1f s: %.0f tokens/s\n", tc.steps, res.seconds, res.tokens_per_s);
    if (n_val >= 2) {
        double vl;
        size_t np;
        if (nawal_eval_tokens(m, corpus.tokens + corpus.n_train, n_val, &vl, &np, err, sizeof err)) {
            fprintf(stderr, "error: %s\n", err);
            goto out;
        }
        printf("val_loss %.4f\n", vl);
    } else {
        printf("validation split too small to evaluate (%zu tokens)\n", n_val);
    }
    if (out) {
        if (nawal_checkpoint_save(m, tok, out, err, sizeof err)) { fprintf(stderr, "error: %s\n", err); goto out; }
        printf("checkpoint written to %s\n", out);
    }
    rc = 0;
out:
    nawal_gpt_free(m);
    nawal_corpus_free(&corpus);
    nawal_tokenizer_free(tok);
    return rc;
}
