/* flat_model.h - the flat vector of a model: how a compressed delta
 * (delta_codec.h, frames over ONE float vector of n values) maps onto the
 * tensors of a safetensors model.
 *
 * Convention: the flat vector of a model is its tensors concatenated in
 * the order of their data in the safetensors file (ascending data offset;
 * the order of the names in the JSON header plays no part), each tensor's
 * elements in row-major order, exactly as stored; n = the total number of
 * elements. Offset j of the vector is element j - start(t) of the tensor t
 * whose range holds it.
 *
 * nawal writes models with their data in Hugging Face GPT-2 order, the
 * order of model/gpt.c's build_tensors (wte, wpe, then per layer ln_1,
 * attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj, weight before
 * bias, then ln_f), which is also the layout of nawal_gpt's params buffer:
 * for a nawal model the flat vector IS that buffer (tensor i at
 * tensors[i].offset). The coordinator writes each new global model with
 * the base's tensors in this same order, so the convention holds round
 * after round.
 *
 * An agent encodes delta = local - base in this order over the base model
 * of the round; the coordinator refuses a frame whose n is not the base
 * model's flat length. */
#ifndef NAWAL_FLAT_MODEL_H
#define NAWAL_FLAT_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "safetensors.h"

/* order (nawal_st_count(f) entries, may be NULL) gets the nawal_st_at
 * indices of f's tensors in flat order; *n (may be NULL) the flat length.
 * 0, or -1 when out of memory. */
int nawal_flat_order(const nawal_st_file *f, size_t *order, uint64_t *n, char *err, size_t errlen);

#endif
