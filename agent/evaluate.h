/* evaluate.h - a model's loss on this validator's own validation split:
 * the corpus's held-out tokens after n_train (corpus.h), at most
 * NAWAL_AGENT_EVAL_MAX_WINDOWS windows of the model's context, in mean
 * nats per predicted token. local_update.c measures a round's base before
 * training and the local model after; `nawal-agent run` answers the
 * coordinator's EvaluateRequest with it (session.c).
 *
 * A small table (nawal_agent_evals) remembers the loss of the last models
 * measured, by CID: the new global model of round r is the base of round
 * r+1, so whichever of the evaluation and the training asks first measures
 * it and the other reads the result. The table is shared by the event
 * loop's thread and the worker thread (a mutex inside). */
#ifndef NAWAL_AGENT_EVALUATE_H
#define NAWAL_AGENT_EVALUATE_H

#include "corpus.h"
#include "gpt.h"
#include "session.h"

#include <stddef.h>
#include <stdint.h>

/* Validation windows measured (bounds the cost of one evaluation). */
#define NAWAL_AGENT_EVAL_MAX_WINDOWS 32
/* Models whose loss the table remembers (the oldest is forgotten first). */
#define NAWAL_AGENT_EVAL_MEMORY 8

/* Mean loss of m over the first validation windows of c; *tokens gets the
 * predicted tokens (0, and *loss 0, when c has no validation split). */
int nawal_agent_val_loss(nawal_gpt *m, const nawal_corpus *c, double *loss, uint64_t *tokens, char *err,
                         size_t errlen);

/* 0 when ag's corpus has a validation split, else -1 with a message saying so. */
int nawal_agent_val_split_check(const nawal_agent *ag, char *err, size_t errlen);

typedef struct nawal_agent_evals nawal_agent_evals;

/* NULL when out of memory (the agent then measures every time). */
nawal_agent_evals *nawal_agent_evals_new(void);
void nawal_agent_evals_free(nawal_agent_evals *t);
/* 1 and *loss, *tokens when cid's loss is remembered, else 0 (also for t NULL). */
int nawal_agent_evals_get(nawal_agent_evals *t, const uint8_t cid[32], double *loss, uint64_t *tokens);
void nawal_agent_evals_put(nawal_agent_evals *t, const uint8_t cid[32], double loss, uint64_t tokens);

/* The validation loss of m, which holds the global model cid: remembered
 * in ag->evals, else measured and remembered (when there is a split). */
int nawal_agent_model_val_loss(nawal_agent *ag, const uint8_t cid[32], nawal_gpt *m, double *loss, uint64_t *tokens,
                               char *err, size_t errlen);

/* The validation loss of the global model cid, loaded from the state
 * dir's model cache when not remembered (the worker thread's evaluation
 * job). Fails with a message when the corpus has no validation split. */
int nawal_agent_model_evaluate(nawal_agent *ag, const uint8_t cid[32], double *loss, uint64_t *tokens, char *err,
                               size_t errlen);

#endif
