/* test_gpt_fixture.c - the C model against a PyTorch / Hugging Face
 * reference: tests/fixtures/gpt2_tiny.safetensors, made by
 * make_gpt2_fixture.py with transformers.GPT2LMHeadModel (2 layers, 4 heads,
 * width 32, context 16, vocab 67, batch 3, perturbed LayerNorms and biases).
 * Checks logits, loss and every parameter gradient to 1e-4 relative error
 * (max-abs error over the tensor / max-abs of the reference), then 10 AdamW
 * steps (nanoGPT's decay grouping) against the reference losses and
 * parameters. Also saves the fixture weights as a nawal checkpoint and reads
 * them back bit-exactly. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "checkpoint.h"
#include "gpt.h"
#include "optim.h"
#include "safetensors.h"
#include "test_util.h"

#define FIXTURE NAWAL_FIXTURE_DIR "/gpt2_tiny.safetensors"

static nawal_st_file *fx;
static nawal_gpt *m;
static int B, T;

static int meta_int(const char *k) {
    const char *v = nawal_st_metadata(fx, k);
    cr_assert(v, "fixture metadata %s missing", k);
    return atoi(v);
}

static const float *fixture_f32(const char *name, size_t numel) {
    const nawal_st_tensor *t = nawal_st_find(fx, name);
    cr_assert(t, "fixture tensor %s missing", name);
    cr_assert_eq(t->nbytes, numel * sizeof(float), "fixture tensor %s has %zu bytes", name, t->nbytes);
    return t->data;
}

static double rel_err(const float *a, const float *ref, size_t n) {
    double md = 0.0, mr = 0.0;
    for (size_t i = 0; i < n; i++) {
        md = fmax(md, fabs((double)a[i] - ref[i]));
        mr = fmax(mr, fabs((double)ref[i]));
    }
    return md / (mr > 0 ? mr : 1.0);
}

static void setup(void) {
    char err[512];
    cr_assert_eq(nawal_st_read(&fx, FIXTURE, err, sizeof err), 0, "%s", err);
    nawal_gpt_config cfg = { meta_int("n_layer"), meta_int("n_head"), meta_int("n_embd"), meta_int("n_ctx"), meta_int("vocab_size") };
    B = meta_int("batch");
    T = meta_int("seq");
    cr_assert_eq(nawal_gpt_create(&m, nawal_ops_cpu(0), &cfg, B, err, sizeof err), 0, "%s", err);
    for (int i = 0; i < m->n_tensors; i++) {
        char nm[96];
        snprintf(nm, sizeof nm, "param.%s", m->tensors[i].name);
        memcpy(m->params + m->tensors[i].offset, fixture_f32(nm, m->tensors[i].numel), m->tensors[i].numel * sizeof(float));
    }
}

static void teardown(void) {
    char err[128];
    m->ops->set_precision(m->ops, NAWAL_PREC_FP32, err, sizeof err); /* the bf16 test's */
    nawal_gpt_free(m);
    nawal_st_free(fx);
}

TestSuite(fixture, .init = setup, .fini = teardown);

/* logits, loss and every gradient against the fixture, to tol */
static void check_forward_backward(double tol, const char *prec) {
    char err[512];
    const int32_t *tok = (const int32_t *)nawal_st_find(fx, "tokens")->data;
    const int32_t *tgt = (const int32_t *)nawal_st_find(fx, "targets")->data;
    size_t NV = (size_t)B * T * m->cfg.vocab;
    cr_assert(!isnan(nawal_gpt_forward(m, tok, NULL, B, T, 0, NULL, err, sizeof err)), "%s", err);
    double e = rel_err(nawal_gpt_logits(m), fixture_f32("logits", NV), NV);
    cr_expect(e <= tol, "%s: logits relative error %g", prec, e);

    nawal_gpt_zero_grad(m);
    float loss = nawal_gpt_forward(m, tok, tgt, B, T, 1, NULL, err, sizeof err);
    float ref = fixture_f32("loss", 1)[0];
    cr_expect(fabsf(loss - ref) <= tol * fabsf(ref), "%s: loss %.7f vs reference %.7f", prec, loss, ref);
    nawal_gpt_backward(m);
    for (int i = 0; i < m->n_tensors; i++) {
        char nm[96];
        snprintf(nm, sizeof nm, "grad.%s", m->tensors[i].name);
        const nawal_param_tensor *t = &m->tensors[i];
        e = rel_err(m->grads + t->offset, fixture_f32(nm, t->numel), t->numel);
        cr_expect(e <= tol, "%s: %s: gradient relative error %g", prec, t->name, e);
    }
}

Test(fixture, logits_loss_and_gradients_match_pytorch) { check_forward_backward(1e-4, "fp32"); }

/* bf16 matmuls (operands rounded, fp32 accumulation) against PyTorch's fp32:
 * within 2e-2, the limit the GPU's bf16 whole-step test uses */
Test(fixture, bf16_matmuls_stay_near_pytorch_fp32) {
    char err[512];
    if (m->ops->set_precision(m->ops, NAWAL_PREC_BF16, err, sizeof err)) TEST_SKIP_WITHOUT_BF16(err);
    check_forward_backward(2e-2, "bf16");
}

Test(fixture, ten_adamw_steps_match_pytorch) {
    char err[512];
    const int32_t *tok = (const int32_t *)nawal_st_find(fx, "tokens")->data;
    const int32_t *tgt = (const int32_t *)nawal_st_find(fx, "targets")->data;
    const float *ref = fixture_f32("adamw_losses", 10);
    nawal_adamw_config ac = { strtof(nawal_st_metadata(fx, "beta1"), NULL), strtof(nawal_st_metadata(fx, "beta2"), NULL),
                              strtof(nawal_st_metadata(fx, "eps"), NULL), strtof(nawal_st_metadata(fx, "weight_decay"), NULL) };
    float lr = strtof(nawal_st_metadata(fx, "lr"), NULL);
    for (int s = 0; s < 10; s++) {
        nawal_gpt_zero_grad(m);
        float loss = nawal_gpt_forward(m, tok, tgt, B, T, 1, NULL, err, sizeof err);
        cr_expect(fabsf(loss - ref[s]) <= 1e-4f * fabsf(ref[s]), "step %d: loss %.7f vs reference %.7f", s, loss, ref[s]);
        nawal_gpt_backward(m);
        cr_assert_eq(nawal_gpt_adamw_step(m, &ac, lr), 0);
    }
    const char *after[] = { "transformer.h.1.mlp.c_fc.weight", "transformer.wte.weight" };
    for (int k = 0; k < 2; k++) {
        const nawal_param_tensor *t = nawal_gpt_find_tensor(m, after[k]);
        char nm[128];
        snprintf(nm, sizeof nm, "adamw_params_after.%s", after[k]);
        double e = rel_err(m->params + t->offset, fixture_f32(nm, t->numel), t->numel);
        cr_expect(e <= 1e-4, "%s after 10 steps: relative error %g", after[k], e);
    }
}

Test(fixture, checkpoint_round_trip_is_bit_exact) {
    char err[512], dir[] = "/tmp/nawal_ckpt_XXXXXX";
    cr_assert(mkdtemp(dir));
    cr_assert_eq(nawal_checkpoint_save(m, NULL, dir, err, sizeof err), 0, "%s", err);
    nawal_gpt *m2;
    nawal_tokenizer *tok;
    cr_assert_eq(nawal_checkpoint_load(&m2, &tok, nawal_ops_cpu(0), dir, 2, err, sizeof err), 0, "%s", err);
    cr_expect_eq(memcmp(&m2->cfg, &m->cfg, sizeof m->cfg), 0);
    cr_expect_eq(m2->n_params, m->n_params);
    cr_expect_eq(memcmp(m2->params, m->params, m->n_params * sizeof(float)), 0, "weights changed through the checkpoint");
    cr_expect_eq(nawal_tokenizer_vocab_size(tok), 257);
    /* the file itself: HF names, Conv1D layout, metadata format=pt */
    char path[600];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    nawal_st_file *f;
    cr_assert_eq(nawal_st_read(&f, path, err, sizeof err), 0, "%s", err);
    const nawal_st_tensor *t = nawal_st_find(f, "transformer.h.1.attn.c_attn.weight");
    cr_assert(t);
    cr_expect(t->shape[0] == m->cfg.n_embd && t->shape[1] == 3 * m->cfg.n_embd);
    cr_expect_str_eq(nawal_st_metadata(f, "format"), "pt");
    cr_expect_null(nawal_st_find(f, "lm_head.weight"));
    nawal_st_free(f);
    nawal_gpt_free(m2);
    nawal_tokenizer_free(tok);

    /* a truncated weights file and a broken config are clear errors */
    FILE *fp = fopen(path, "r+b");
    cr_assert(fp);
    cr_assert_eq(ftruncate(fileno(fp), 1000), 0);
    fclose(fp);
    err[0] = 0;
    cr_expect_neq(nawal_checkpoint_load(&m2, &tok, nawal_ops_cpu(0), dir, 2, err, sizeof err), 0);
    cr_expect(strstr(err, "model.safetensors") != NULL, "error should name the file: %s", err);
    snprintf(path, sizeof path, "%s/config.json", dir);
    fp = fopen(path, "w");
    fputs("{\"model_type\": \"gpt2\", \"n_layer\": 2", fp);
    fclose(fp);
    err[0] = 0;
    cr_expect_neq(nawal_checkpoint_load(&m2, &tok, nawal_ops_cpu(0), dir, 2, err, sizeof err), 0);
    cr_expect(strstr(err, "config.json") != NULL, "error should name the file: %s", err);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_expect_eq(system(cmd), 0);
}
