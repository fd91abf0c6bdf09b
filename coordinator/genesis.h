/* genesis.h - the coordinator's initial global model: a GPT-2 created from
 * a config and a seed, or imported from a checkpoint, serialised as
 * safetensors (Hugging Face GPT-2 names, the model's tensor order, the
 * config in the metadata) into the blob store, and recorded as the base
 * of round 1 (`nawal-coordinator init --model-config ...|--import DIR`). */
#ifndef NAWAL_GENESIS_H
#define NAWAL_GENESIS_H

#include <stddef.h>
#include <stdint.h>

#include "gpt.h"
#include "store.h"

/* "L,H,W,C,V" (layers, heads, width, context, vocab) into a checked config. */
int nawal_model_config_parse(const char *text, nawal_gpt_config *cfg, char *err, size_t errlen);

/* The model's parameters as a safetensors blob (streamed into the store);
 * metadata: format=pt and the config as n_layer, n_head, n_embd,
 * n_positions, vocab_size. */
int nawal_model_put(nawal_store *s, const nawal_gpt *m, uint8_t cid_out[32], uint64_t *size_out, char *err,
                    size_t errlen);

/* Puts m and records it as the initial model (NAWAL_SETTING_BASE_MODEL),
 * refusing a store that has rounds already. */
int nawal_genesis_record(nawal_store *s, const nawal_gpt *m, uint8_t cid_out[32], char *err, size_t errlen);

#endif
