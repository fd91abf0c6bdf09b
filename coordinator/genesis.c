/* genesis.c - see genesis.h. */
#include "genesis.h"
#include "cid.h"
#include "error.h"
#include "safetensors.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int nawal_model_config_parse(const char *text, nawal_gpt_config *cfg, char *err, size_t errlen) {
    int v[5], used = 0;
    if (!text || sscanf(text, "%d,%d,%d,%d,%d%n", &v[0], &v[1], &v[2], &v[3], &v[4], &used) != 5 || text[used] != '\0')
        return nawal_fail(err, errlen, "model config '%s': want LAYERS,HEADS,WIDTH,CONTEXT,VOCAB (five integers)",
                          text ? text : "");
    *cfg = (nawal_gpt_config){v[0], v[1], v[2], v[3], v[4]};
    return nawal_gpt_config_check(cfg, err, errlen);
}

int nawal_model_put(nawal_store *s, const nawal_gpt *m, uint8_t cid_out[32], uint64_t *size_out, char *err,
                    size_t errlen) {
    float *h = malloc(m->n_params * sizeof(float));
    nawal_st_tensor *ts = calloc((size_t)m->n_tensors, sizeof *ts);
    uint8_t *head = NULL;
    size_t head_len = 0;
    nawal_blob_writer *w = NULL;
    int rc = !h || !ts ? nawal_fail(err, errlen, "out of memory for a %zu-parameter model", m->n_params) : 0;
    if (rc == 0) {
        m->ops->download(m->ops, h, m->params, m->n_params * sizeof(float));
        for (int i = 0; i < m->n_tensors; i++) {
            const nawal_param_tensor *t = &m->tensors[i];
            ts[i] = (nawal_st_tensor){.name = t->name, .dtype = NAWAL_ST_F32, .ndim = t->ndim,
                                      .nbytes = t->numel * sizeof(float), .data = h + t->offset};
            ts[i].shape[0] = t->shape[0];
            if (t->ndim == 2) ts[i].shape[1] = t->shape[1];
        }
        char l[16], hd[16], e[16], c[16], vo[16];
        snprintf(l, sizeof l, "%d", m->cfg.n_layer);
        snprintf(hd, sizeof hd, "%d", m->cfg.n_head);
        snprintf(e, sizeof e, "%d", m->cfg.n_embd);
        snprintf(c, sizeof c, "%d", m->cfg.n_ctx);
        snprintf(vo, sizeof vo, "%d", m->cfg.vocab);
        const char *meta[] = {"format", "pt", "n_layer", l, "n_head", hd, "n_embd", e, "n_positions", c,
                              "vocab_size", vo, NULL};
        rc = nawal_st_encode_header(ts, (size_t)m->n_tensors, meta, &head, &head_len, err, errlen);
    }
    if (rc == 0) rc = nawal_blobstore_writer_open(s, &w, err, errlen);
    if (rc == 0) rc = nawal_blobstore_writer_write(w, head, head_len, err, errlen);
    for (int i = 0; rc == 0 && i < m->n_tensors; i++) rc = nawal_blobstore_writer_write(w, ts[i].data, ts[i].nbytes, err, errlen);
    if (rc == 0) {
        rc = nawal_blobstore_writer_commit(w, cid_out, size_out, err, errlen);
        w = NULL;
    }
    nawal_blobstore_writer_abort(w);
    free(head);
    free(ts);
    free(h);
    return rc ? -1 : 0;
}

int nawal_genesis_record(nawal_store *s, const nawal_gpt *m, uint8_t cid_out[32], char *err, size_t errlen) {
    nawal_round r;
    int rc = nawal_store_round_latest(s, &r, err, errlen);
    if (rc == 0) {
        nawal_fail(err, errlen, "%s already has rounds; the initial model is set once", nawal_store_dir(s));
        return NAWAL_STORE_REFUSED;
    }
    if (rc != NAWAL_STORE_REFUSED) return -1;
    if (nawal_model_put(s, m, cid_out, NULL, err, errlen)) return -1;
    char hex[NAWAL_CID_HEX_BYTES];
    nawal_cid_to_hex(hex, cid_out);
    return nawal_store_setting_set(s, NAWAL_SETTING_BASE_MODEL, hex, err, errlen);
}
