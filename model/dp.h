/* dp.h - DP-SGD for the GPT: per-example gradient norms, clipping and
 * Gaussian noise (Abadi et al. 2016), by one of two methods
 * (nawal_gpt_dp_set_method): book-keeping, where the per-example norms are
 * computed without materialising per-example gradients (ghost norms) and
 * the clipped sum is formed from the kept output gradients of every layer,
 * scaled by each example's clip factor, and only then turned into weight
 * gradients; or per-example, where each example's whole gradient is
 * written out by batched products and clipped where it lies.
 *
 * One example = one training sequence; its loss is the mean cross-entropy
 * over its non-ignored target positions. A DP step over a logical batch
 * (Poisson-sampled, possibly empty) is:
 *     nawal_gpt_zero_grad(m);
 *     for each physical micro-batch: nawal_gpt_dp_accumulate(m, ...);
 *     nawal_gpt_dp_finish(m, sigma * C, expected_batch, key, step);
 *     optimizer step;
 * after which m->grads = (sum_b clip_C(g_b) + N(0, sigma^2 C^2 I)) / expected_batch. */
#ifndef NAWAL_DP_H
#define NAWAL_DP_H

#include "gpt.h"

/* Adds to m->grads sum_b min(1, C / (||g_b|| + margin_b + 1e-6)) g_b over the B
 * examples inputs/targets[B][T] (host, as nawal_gpt_forward takes them),
 * g_b = the gradient of example b's mean token loss w.r.t. all parameters
 * (the tied token-embedding / LM-head matrix counted once, with its cross
 * term; margin_b: 0 unless pass 2 runs in reduced precision, see
 * nawal_gpt_dp_set_pass2). norms_out[B] (host, may be NULL) receives ||g_b||; *loss_out the
 * batch's mean token loss. Returns 0, or -1 with a message (bad tokens,
 * out of memory, a per-example norm that is not finite: then nothing was
 * added to m->grads). */
int nawal_gpt_dp_accumulate(nawal_gpt *m, const int32_t *inputs, const int32_t *targets, int B, int T,
                            float max_grad_norm, float *norms_out, float *loss_out, char *err, size_t errlen);

/* How a DP step gets each example's norm and its clipped share:
 * BOOKKEEPING: norms without per-example gradients (ghost norms, or a
 *   materialised product per layer that is summed and dropped), then a
 *   second pass forms the clipped sum from the kept output gradients
 *   scaled by c_b (pass 2, in the precision nawal_gpt_dp_set_pass2 picks).
 *   Memory: the kept output gradients only.
 * PER_EXAMPLE: every example's whole gradient is written out (one batched
 *   product per linear layer, in the matmul precision), its norm is that of
 *   the stored values and the clipped sum is sum_b c_b g_b over the same
 *   values, so a clipped example adds C in every precision, to fp32
 *   precision (the norm's rounding to float and the products c_b g_b, as
 *   in the fp32 book-keeping step), with no margin and no second pass.
 *   Memory: max_batch gradients.
 * AUTO: PER_EXAMPLE while its gradients take at most twice the memory of
 *   the activations (so on the tiny Shakespeare config and GPT-2 small),
 *   else BOOKKEEPING; it also falls back to BOOKKEEPING, with a note on
 *   stderr, when the per-example gradients cannot be allocated. On CUDA
 *   the per-example products run on the tensor cores, where the ghost
 *   norms' fp32 Gram matrices cost more than the whole step; on the CPU it
 *   measured 8-16% faster DP steps than BOOKKEEPING (bench/RESULTS.md).
 * Either way a step whose per-example norms are not all finite is refused
 * (an error, nothing added to the gradients). */
typedef enum { NAWAL_DP_AUTO = 0, NAWAL_DP_BOOKKEEPING = 1, NAWAL_DP_PER_EXAMPLE = 2 } nawal_dp_method;

/* Selects the method for the next DP steps: 0, or -1 with a message. */
int nawal_gpt_dp_set_method(nawal_gpt *m, nawal_dp_method method, char *err, size_t errlen);
/* The method the next DP step runs (AUTO resolved for m's backend). */
nawal_dp_method nawal_gpt_dp_method_in_force(const nawal_gpt *m);
/* "auto", "bookkeeping", "per-example": 0, or -1 for another name. */
int nawal_dp_method_parse(const char *s, nawal_dp_method *out);
const char *nawal_dp_method_name(nawal_dp_method method);

/* The precision of the clipped sum's weight-gradient products (DP pass 2)
 * when the backend's matmul precision is not fp32 (in fp32 everything is
 * fp32). NAWAL_PREC_FP32: exact, each clipped example adds C to fp32
 * precision. TF32 / BF16: faster on tensor cores; rounding the operands
 * (unit roundoff u: 2^-10 for tf32, covering truncation, 2^-8 for bf16)
 * moves example b's contribution by at most (2u + u^2) M_b, M_b^2 = the sum
 * over linear layers of (sum_t ||a_t|| ||d_t||)^2 (ops pe_bound_linear),
 * so the clip factor becomes min(1, C / (||g_b|| + (2u + u^2) M_b + 1e-6))
 * and a clipped example adds at most C, up to the fp32 rounding an all-fp32
 * step has too (accumulation inside the GEMMs, the fp32 norms). The price
 * is utility: clipped examples add a little less than C. Measured on the
 * tiny model at initialisation on Shakespeare text (bench/RESULTS.md):
 * margin / ||g_b|| = 0.9% (T 64) and 1.2% (T 1024) in tf32, 3.6% and 4.7%
 * in bf16.
 * Default: fp32 on the CPU, tf32 on CUDA. 0, or -1 with a message for a
 * precision the backend cannot run. */
int nawal_gpt_dp_set_pass2(nawal_gpt *m, nawal_precision p, char *err, size_t errlen);

/* The precision the next DP step's clipped sums run in: fp32 while the
 * backend runs fp32 matmuls or the per-example method is in force (its
 * sums are fp32, and need no margin), else m's choice
 * (nawal_gpt_dp_set_pass2). */
nawal_precision nawal_gpt_dp_pass2_in_force(const nawal_gpt *m);

/* 2u + u^2 for clipped sums in precision p (0 for fp32): margin_b is this
 * times M_b, the square root of m->dp_bounds[b] after a DP step that used
 * the margin (m->dp_norms[b] then holds ||g_b||^2). */
double nawal_gpt_dp_margin_factor(nawal_precision p);

/* m->grads += N(0, noise_std^2) per element from Philox stream `stream` of
 * `key` (the same numbers on every backend), then m->grads /= expected_batch. */
void nawal_gpt_dp_finish(nawal_gpt *m, float noise_std, double expected_batch, uint64_t key, uint64_t stream);

#endif
