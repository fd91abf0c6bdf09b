/* privacy_budget.h - the per-validator privacy budget file: how much of its
 * corpus's privacy a validator has spent so far, kept across runs, so that
 * DP training can refuse the step that would cross the validator's epsilon
 * and so that losing or editing the record is noticed rather than silently
 * resetting the spend to zero. The numbers come from accountant.h: the file
 * stores the accountant's RDP vector (composing RDP across runs is tighter
 * than adding epsilons) and the delta at which epsilon is reported.
 *
 * A budget lives in a directory DIR (normally the validator's identity
 * directory, next to identity.key) as three files:
 *
 *   DIR/privacy_budget          the state; replaced atomically on every
 *                               update (fileio.h: temp file, fsync, rename,
 *                               fsync DIR), so a crash leaves the old state
 *                               or the new one. Strict text format:
 *       nawal-privacy-budget-v1
 *       budget <32 lowercase hex: random id drawn at creation>
 *       validator <64 lowercase hex public key | none>
 *       counter <decimal u64: 0 at creation, +1 on every update>
 *       delta <double>
 *       steps <decimal u64: steps charged so far>
 *       epsilon <double: spent, Balle bound at delta; checked on load>
 *       orders <n>
 *       rdp <order> <rdp>                      (n lines, doubles)
 *       signature <128 hex: Ed25519 over every byte above>   (with a key)
 *     | checksum <64 hex: BLAKE2b-256 of every byte above>   (without one)
 *     every line ends in '\n' and nothing follows the last; doubles are
 *     written in the shortest %g form that reads back exactly.
 *   DIR/privacy_budget.started  written once, after the first state file:
 *       nawal-privacy-budget-started-v1
 *       budget <the same id>
 *       validator <hex | none>
 *       signature <hex> | checksum <hex>    (as above)
 *     It records that a budget was started here: if privacy_budget is then
 *     missing, opening fails (a fresh budget would forget the privacy
 *     already spent) instead of starting again from zero.
 *   DIR/privacy_budget.lock     held (flock) while the budget is open, so
 *     two processes cannot both charge the same budget and lose an update.
 *
 * What is detected, each with a message naming the file: any changed,
 * added or removed byte (signature or checksum, then strict parsing), a
 * file signed by another key than the one given, a signed file opened
 * without a key (and the reverse), a state file missing while its marker
 * is present, state and marker from different budgets, a delta other than
 * the budget's. Not detectable from this directory alone: deleting both
 * files, or putting back an older signed copy of the state file; the
 * counter is there so that a party holding the last signed counter (the
 * coordinator, later) can detect that. Without a key the checksum catches
 * corruption, not a deliberate edit.
 *
 * Use in training: before each step, nawal_privacy_budget_would_exceed()
 * with the step's (q, sigma) and the run's epsilon limit; if it would
 * exceed, stop before the step and say so. Charge the step with
 * nawal_privacy_budget_record() before anything computed from it leaves
 * the process (checkpoint, delta upload); if recording fails, stop.
 *
 * Functions return 0 on success and -1 on error with a message in
 * (err, errlen) (may be NULL). */
#ifndef NAWAL_PRIVACY_BUDGET_H
#define NAWAL_PRIVACY_BUDGET_H

#include "accountant.h"
#include "identity.h"

#include <stddef.h>
#include <stdint.h>

#define NAWAL_BUDGET_FILE "privacy_budget"
#define NAWAL_BUDGET_MARKER_FILE "privacy_budget.started"
#define NAWAL_BUDGET_LOCK_FILE "privacy_budget.lock"
#define NAWAL_BUDGET_ID_BYTES 16

typedef struct nawal_privacy_budget nawal_privacy_budget;

/* Opens the budget in `dir` (which must exist). `id` is the validator's
 * identity: the files are signed with it and must verify with its public
 * key; NULL means a checksum-only budget. The identity must outlive the
 * handle. `delta` must equal the budget's (a budget reports epsilon at one
 * delta for its whole life). With `create`, a directory holding neither
 * budget file gets a fresh budget (nothing spent, default order grid);
 * without it that is an error. */
int nawal_privacy_budget_open(nawal_privacy_budget **out, const char *dir, const nawal_identity *id, double delta,
                              int create, char *err, size_t errlen);

/* Releases the lock and frees the handle (NULL is a no-op). */
void nawal_privacy_budget_close(nawal_privacy_budget *b);

/* epsilon spent so far (at the budget's delta) and the order attaining it. */
int nawal_privacy_budget_epsilon(const nawal_privacy_budget *b, double *eps, double *best_order, char *err,
                                 size_t errlen);

/* *eps_after = epsilon after `steps` more steps of (q, sigma); *exceeds = 1
 * if that is above eps_limit, else 0. Changes nothing. */
int nawal_privacy_budget_would_exceed(const nawal_privacy_budget *b, double q, double sigma, uint64_t steps,
                                      double eps_limit, double *eps_after, int *exceeds, char *err, size_t errlen);

/* Charges `steps` steps of (q, sigma) and rewrites the state file
 * atomically (counter + 1). On failure nothing changes, on disk or in *b. */
int nawal_privacy_budget_record(nawal_privacy_budget *b, double q, double sigma, uint64_t steps, char *err,
                                size_t errlen);

uint64_t nawal_privacy_budget_steps(const nawal_privacy_budget *b);
uint64_t nawal_privacy_budget_counter(const nawal_privacy_budget *b);
double nawal_privacy_budget_delta(const nawal_privacy_budget *b);
const nawal_accountant *nawal_privacy_budget_accountant(const nawal_privacy_budget *b);
const char *nawal_privacy_budget_path(const nawal_privacy_budget *b);

#endif
