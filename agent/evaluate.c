/* evaluate.c - see evaluate.h. */
#include "evaluate.h"
#include "checkpoint.h"
#include "error.h"
#include "state.h"
#include "trainer.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define EVAL_BATCH 8 /* windows per forward pass of an evaluation job */

struct nawal_agent_evals {
    pthread_mutex_t mu;
    struct {
        uint8_t cid[32];
        double loss;
        uint64_t tokens;
    } e[NAWAL_AGENT_EVAL_MEMORY];
    size_t n, next; /* entries in use; the one replaced next (the oldest) */
};

int nawal_agent_val_loss(nawal_gpt *m, const nawal_corpus *c, double *loss, uint64_t *tokens, char *err,
                         size_t errlen) {
    size_t n_val = c->n_tokens - c->n_train, cap = (size_t)NAWAL_AGENT_EVAL_MAX_WINDOWS * (size_t)m->cfg.n_ctx + 1;
    *loss = 0.0;
    *tokens = 0;
    if (n_val < 2) return 0;
    size_t np = 0;
    char e[256] = "";
    if (nawal_eval_tokens(m, c->tokens + c->n_train, n_val < cap ? n_val : cap, loss, &np, e, sizeof e))
        return nawal_fail(err, errlen, "validation loss: %s", e[0] ? e : "the model's loss is not a number");
    *tokens = np;
    return 0;
}

int nawal_agent_val_split_check(const nawal_agent *ag, char *err, size_t errlen) {
    if (ag->corpus.n_tokens - ag->corpus.n_train >= 2) return 0;
    return nawal_fail(err, errlen, "this validator has no validation split: its corpus of %zu tokens is all training data",
                      ag->corpus.n_tokens);
}

nawal_agent_evals *nawal_agent_evals_new(void) {
    nawal_agent_evals *t = calloc(1, sizeof *t);
    if (t && pthread_mutex_init(&t->mu, NULL)) {
        free(t);
        return NULL;
    }
    return t;
}

void nawal_agent_evals_free(nawal_agent_evals *t) {
    if (!t) return;
    pthread_mutex_destroy(&t->mu);
    free(t);
}

int nawal_agent_evals_get(nawal_agent_evals *t, const uint8_t cid[32], double *loss, uint64_t *tokens) {
    if (!t) return 0;
    int found = 0;
    pthread_mutex_lock(&t->mu);
    for (size_t i = 0; i < t->n && !found; i++)
        if (!memcmp(t->e[i].cid, cid, 32)) {
            *loss = t->e[i].loss;
            *tokens = t->e[i].tokens;
            found = 1;
        }
    pthread_mutex_unlock(&t->mu);
    return found;
}

void nawal_agent_evals_put(nawal_agent_evals *t, const uint8_t cid[32], double loss, uint64_t tokens) {
    if (!t) return;
    pthread_mutex_lock(&t->mu);
    size_t i = 0;
    while (i < t->n && memcmp(t->e[i].cid, cid, 32)) i++;
    if (i == t->n) { /* a new one: a free slot, else the oldest */
        i = t->next;
        t->next = (t->next + 1) % NAWAL_AGENT_EVAL_MEMORY;
        if (t->n < NAWAL_AGENT_EVAL_MEMORY) t->n++;
        memcpy(t->e[i].cid, cid, 32);
    }
    t->e[i].loss = loss;
    t->e[i].tokens = tokens;
    pthread_mutex_unlock(&t->mu);
}

int nawal_agent_model_val_loss(nawal_agent *ag, const uint8_t cid[32], nawal_gpt *m, double *loss, uint64_t *tokens,
                               char *err, size_t errlen) {
    if (nawal_agent_evals_get(ag->evals, cid, loss, tokens)) return 0;
    if (nawal_agent_val_loss(m, &ag->corpus, loss, tokens, err, errlen)) return -1;
    if (*tokens) nawal_agent_evals_put(ag->evals, cid, *loss, *tokens);
    return 0;
}

int nawal_agent_model_evaluate(nawal_agent *ag, const uint8_t cid[32], double *loss, uint64_t *tokens, char *err,
                               size_t errlen) {
    if (nawal_agent_evals_get(ag->evals, cid, loss, tokens)) return 0;
    if (nawal_agent_val_split_check(ag, err, errlen)) return -1;
    char path[4096];
    if (nawal_agent_model_path(path, sizeof path, ag->state_dir, cid))
        return nawal_fail(err, errlen, "%s: path too long", ag->state_dir);
    nawal_gpt *m = NULL;
    int rc = nawal_model_file_load(&m, ag->ops, path, EVAL_BATCH, err, errlen) ||
             nawal_agent_model_val_loss(ag, cid, m, loss, tokens, err, errlen);
    nawal_gpt_free(m);
    return rc ? -1 : 0;
}
