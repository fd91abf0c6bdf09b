/* checkpoint.c - see checkpoint.h. The model's tensor table already holds the
 * HF names and shapes, so saving is a walk over it and loading is the same
 * walk with every tensor checked against the file. */
#include "checkpoint.h"
#include "error.h"
#include "fileio.h"
#include "safetensors.h"
#include <errno.h>
#include <limits.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int nawal_checkpoint_save(const nawal_gpt *m, const nawal_tokenizer *tok, const char *dir, char *err, size_t errlen) {
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) { snprintf(err, errlen, "cannot create directory %s: %s", dir, strerror(errno)); return -1; }
    char path[4096];
    const nawal_gpt_config *c = &m->cfg;
    int bpe = tok && nawal_tokenizer_is_bpe(tok);
    int eot = c->vocab > NAWAL_TOKEN_EOT ? NAWAL_TOKEN_EOT : c->vocab - 1;
    if (bpe) {
        snprintf(path, sizeof path, "%s/%s", dir, NAWAL_CKPT_TOKENIZER_FILE);
        if (nawal_tokenizer_save(tok, path, err, errlen)) return -1;
    }
    json_t *j = json_pack("{s:s, s:[s], s:i, s:i, s:i, s:i, s:i, s:n, s:s, s:f, s:f, s:f, s:f, s:f, s:b, s:i, s:i}",
                          "model_type", "gpt2", "architectures", "GPT2LMHeadModel",
                          "vocab_size", c->vocab, "n_positions", c->n_ctx, "n_embd", c->n_embd,
                          "n_layer", c->n_layer, "n_head", c->n_head, "n_inner",
                          "activation_function", "gelu_new", "layer_norm_epsilon", 1e-5,
                          "initializer_range", 0.02, "resid_pdrop", 0.0, "embd_pdrop", 0.0, "attn_pdrop", 0.0,
                          "tie_word_embeddings", 1, "bos_token_id", eot, "eos_token_id", eot);
    if (!j) { snprintf(err, errlen, "cannot build config.json"); return -1; }
    json_object_set_new(j, "torch_dtype", json_string("float32"));
    if (bpe) json_object_set_new(j, "nawal_tokenizer", json_string(NAWAL_CKPT_TOKENIZER_FILE));
    char *text = json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(j);
    if (!text) { snprintf(err, errlen, "cannot encode config.json"); return -1; }
    snprintf(path, sizeof path, "%s/config.json", dir);
    nawal_chunk chunk = { text, strlen(text) };
    int rc = nawal_file_replace(path, &chunk, 1, 0644, err, errlen);
    free(text);
    if (rc) return -1;

    float *h = malloc(m->n_params * sizeof(float));
    nawal_st_tensor *ts = calloc((size_t)m->n_tensors, sizeof *ts);
    if (!h || !ts) { free(h); free(ts); snprintf(err, errlen, "out of memory"); return -1; }
    m->ops->download(m->ops, h, m->params, m->n_params * sizeof(float));
    for (int i = 0; i < m->n_tensors; i++) {
        const nawal_param_tensor *t = &m->tensors[i];
        ts[i].name = t->name;
        ts[i].dtype = NAWAL_ST_F32;
        ts[i].ndim = t->ndim;
        ts[i].shape[0] = t->shape[0];
        if (t->ndim == 2) ts[i].shape[1] = t->shape[1];
        ts[i].nbytes = t->numel * sizeof(float);
        ts[i].data = h + t->offset;
    }
    static const char *const meta[] = { "format", "pt", NULL };
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    rc = nawal_st_write(path, ts, (size_t)m->n_tensors, meta, err, errlen);
    free(h);
    free(ts);
    return rc;
}

static int json_int(json_t *j, const char *key, int *out, const char *path, char *err, size_t errlen) {
    json_t *v = json_object_get(j, key);
    if (!json_is_integer(v)) { snprintf(err, errlen, "%s: missing integer \"%s\"", path, key); return -1; }
    json_int_t x = json_integer_value(v);
    if (x < 0 || x > (1 << 24)) { snprintf(err, errlen, "%s: \"%s\" = %lld out of range", path, key, (long long)x); return -1; }
    *out = (int)x;
    return 0;
}

int nawal_checkpoint_read_config(const char *dir, nawal_gpt_config *cfg, char *err, size_t errlen) {
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    if (!j) { snprintf(err, errlen, "%s: %s (line %d)", path, je.text, je.line); return -1; }
    int rc = -1;
    if (!json_is_object(j)) { snprintf(err, errlen, "%s: not a JSON object", path); goto out; }
    json_t *mt = json_object_get(j, "model_type");
    if (!json_is_string(mt) || strcmp(json_string_value(mt), "gpt2") != 0) { snprintf(err, errlen, "%s: model_type is not \"gpt2\"", path); goto out; }
    if (json_int(j, "n_layer", &cfg->n_layer, path, err, errlen) || json_int(j, "n_head", &cfg->n_head, path, err, errlen) ||
        json_int(j, "n_embd", &cfg->n_embd, path, err, errlen) || json_int(j, "n_positions", &cfg->n_ctx, path, err, errlen) ||
        json_int(j, "vocab_size", &cfg->vocab, path, err, errlen))
        goto out;
    json_t *act = json_object_get(j, "activation_function");
    if (act && (!json_is_string(act) || strcmp(json_string_value(act), "gelu_new") != 0)) {
        snprintf(err, errlen, "%s: activation_function must be \"gelu_new\" (GPT-2's tanh GELU)", path);
        goto out;
    }
    if (nawal_gpt_config_check(cfg, err, errlen) == 0) rc = 0;
out:
    json_decref(j);
    return rc;
}

/* tensors HF may store that are not parameters of ours */
static int ignorable(const char *name) {
    size_t n = strlen(name);
    return strcmp(name, "lm_head.weight") == 0 || (n > 9 && strcmp(name + n - 9, ".attn.bias") == 0) ||
           (n > 16 && strcmp(name + n - 16, ".attn.masked_bias") == 0);
}

int nawal_checkpoint_load_weights(nawal_gpt *m, const char *path, char *err, size_t errlen) {
    nawal_st_file *f;
    if (nawal_st_read(&f, path, err, errlen)) return -1;
    int rc = -1;
    float *h = malloc(m->n_params * sizeof(float));
    if (!h) { snprintf(err, errlen, "out of memory"); goto out; }
    for (size_t i = 0; i < nawal_st_count(f); i++) {
        const nawal_st_tensor *t = nawal_st_at(f, i);
        if (!nawal_gpt_find_tensor(m, t->name) && !ignorable(t->name)) {
            snprintf(err, errlen, "%s: unexpected tensor \"%s\" for a GPT-2 model", path, t->name);
            goto out;
        }
    }
    for (int i = 0; i < m->n_tensors; i++) {
        const nawal_param_tensor *p = &m->tensors[i];
        const nawal_st_tensor *t = nawal_st_find(f, p->name);
        if (!t) { snprintf(err, errlen, "%s: missing tensor \"%s\"", path, p->name); goto out; }
        int shape_ok = t->dtype == NAWAL_ST_F32 && t->ndim == p->ndim && t->shape[0] == p->shape[0] &&
                       (p->ndim == 1 || t->shape[1] == p->shape[1]);
        if (!shape_ok) {
            snprintf(err, errlen, "%s: tensor \"%s\" has dtype %s and %d dims, expected F32 [%lld%s%lld]", path,
                     p->name, nawal_st_dtype_name(t->dtype), t->ndim, (long long)p->shape[0], p->ndim == 2 ? "," : "",
                     p->ndim == 2 ? (long long)p->shape[1] : 0LL);
            goto out;
        }
        memcpy(h + p->offset, t->data, p->numel * sizeof(float));
    }
    m->ops->upload(m->ops, m->params, h, m->n_params * sizeof(float));
    rc = 0;
out:
    free(h);
    nawal_st_free(f);
    return rc;
}

int nawal_checkpoint_load(nawal_gpt **m, nawal_tokenizer **tok, const nawal_ops *ops, const char *dir,
                          int max_batch, char *err, size_t errlen) {
    *m = NULL;
    if (tok) *tok = NULL;
    nawal_gpt_config cfg;
    if (nawal_checkpoint_read_config(dir, &cfg, err, errlen)) return -1;
    char path[4096];
    if (tok) {
        snprintf(path, sizeof path, "%s/%s", dir, NAWAL_CKPT_TOKENIZER_FILE);
        int rc = access(path, F_OK) == 0 ? nawal_tokenizer_load(tok, path, err, errlen) : nawal_tokenizer_new_byte(tok);
        if (rc) { if (!err[0]) snprintf(err, errlen, "cannot create tokenizer"); return -1; }
        if (nawal_tokenizer_is_bpe(*tok) && nawal_tokenizer_vocab_size(*tok) > cfg.vocab) {
            snprintf(err, errlen, "%s: tokenizer has %d tokens but the model's vocab is %d", dir, nawal_tokenizer_vocab_size(*tok), cfg.vocab);
            nawal_tokenizer_free(*tok);
            *tok = NULL;
            return -1;
        }
    }
    if (nawal_gpt_create(m, ops, &cfg, max_batch, err, errlen)) goto fail;
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (nawal_checkpoint_load_weights(*m, path, err, errlen)) goto fail;
    return 0;
fail:
    nawal_gpt_free(*m);
    *m = NULL;
    if (tok) { nawal_tokenizer_free(*tok); *tok = NULL; }
    return -1;
}

/* ---- global model files (safetensors with the config in the metadata) ---- */

static int meta_int(const nawal_st_file *f, const char *key, int *out, const char *path, char *err, size_t errlen) {
    const char *v = nawal_st_metadata(f, key);
    char *end;
    errno = 0;
    long x = v ? strtol(v, &end, 10) : 0;
    if (!v || errno || *end || end == v || x <= 0 || x > INT_MAX)
        return nawal_fail(err, errlen, "%s: metadata \"%s\" missing or not a positive integer (not a nawal global model?)",
                          path, key);
    *out = (int)x;
    return 0;
}

int nawal_st_model_config(const nawal_st_file *f, nawal_gpt_config *cfg, const char *path, char *err, size_t errlen) {
    if (meta_int(f, "n_layer", &cfg->n_layer, path, err, errlen) || meta_int(f, "n_head", &cfg->n_head, path, err, errlen) ||
        meta_int(f, "n_embd", &cfg->n_embd, path, err, errlen) || meta_int(f, "n_positions", &cfg->n_ctx, path, err, errlen) ||
        meta_int(f, "vocab_size", &cfg->vocab, path, err, errlen))
        return -1;
    return nawal_gpt_config_check(cfg, err, errlen);
}

int nawal_model_file_load(nawal_gpt **m, const nawal_ops *ops, const char *path, int max_batch, char *err,
                          size_t errlen) {
    nawal_st_file *f = NULL;
    nawal_gpt_config cfg;
    *m = NULL;
    int rc = nawal_st_read(&f, path, err, errlen) || nawal_st_model_config(f, &cfg, path, err, errlen) ||
             nawal_gpt_create(m, ops, &cfg, max_batch, err, errlen) || nawal_checkpoint_load_weights(*m, path, err, errlen);
    nawal_st_free(f);
    if (rc) {
        nawal_gpt_free(*m);
        *m = NULL;
        return -1;
    }
    return 0;
}
