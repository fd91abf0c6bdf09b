/* checkpoint.h - GPT checkpoints on disk, Hugging Face compatible.
 *
 * A checkpoint is a directory holding model.safetensors (GPT-2 tensor names,
 * Conv1D [in][out] layout, tied LM head not stored) and config.json that
 * transformers.GPT2LMHeadModel.from_pretrained() loads; when the model was
 * trained with a BPE tokenizer, a copy of it as tokenizer.nawal and the key
 * "nawal_tokenizer" in config.json. */
#ifndef NAWAL_CHECKPOINT_H
#define NAWAL_CHECKPOINT_H

#include "gpt.h"
#include "safetensors.h"
#include "tokenizer.h"

#define NAWAL_CKPT_TOKENIZER_FILE "tokenizer.nawal"

/* Writes dir/ (created if missing). tok may be NULL or byte-level (then no
 * tokenizer file is written). */
int nawal_checkpoint_save(const nawal_gpt *m, const nawal_tokenizer *tok, const char *dir, char *err, size_t errlen);

/* Reads dir/config.json only. */
int nawal_checkpoint_read_config(const char *dir, nawal_gpt_config *cfg, char *err, size_t errlen);

/* Creates a model from dir/ (config + weights, every tensor checked for name,
 * dtype and shape) and its tokenizer (*tok: BPE from the checkpoint, or the
 * byte-level one). */
int nawal_checkpoint_load(nawal_gpt **m, nawal_tokenizer **tok, const nawal_ops *ops, const char *dir,
                          int max_batch, char *err, size_t errlen);

/* Loads weights from a safetensors file into an existing model (shapes must match). */
int nawal_checkpoint_load_weights(nawal_gpt *m, const char *path, char *err, size_t errlen);

/* A global model file (coordinator/genesis.h: safetensors whose metadata
 * holds n_layer, n_head, n_embd, n_positions, vocab_size): f's config,
 * checked; path names the file in messages. */
int nawal_st_model_config(const nawal_st_file *f, nawal_gpt_config *cfg, const char *path, char *err,
                          size_t errlen);
/* Creates a model (max_batch sequences) from a global model file. */
int nawal_model_file_load(nawal_gpt **m, const nawal_ops *ops, const char *path, int max_batch, char *err,
                          size_t errlen);

#endif
