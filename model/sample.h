/* sample.h - autoregressive sampling from a GPT: temperature and top-k over
 * the last position's logits, context cropped to the model's window. */
#ifndef NAWAL_SAMPLE_H
#define NAWAL_SAMPLE_H

#include "gpt.h"

/* Appends n_new sampled tokens to prompt[0..n_prompt) into out (which must
 * hold n_prompt + n_new); n_prompt >= 1. temperature 0 = greedy; top_k 0 =
 * whole vocab. stop_token >= 0 ends early when sampled (not appended).
 * Returns the total token count, or -1 with a message. */
long nawal_gpt_sample(nawal_gpt *m, const int32_t *prompt, size_t n_prompt, int n_new, float temperature,
                      int top_k, uint64_t seed, int stop_token, int32_t *out, char *err, size_t errlen);

#endif
