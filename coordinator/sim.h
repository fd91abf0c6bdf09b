/* sim.h - `nawal-coordinator sim`: a whole federation on one machine, for
 * demos and tests. In a fresh directory D (kept afterwards):
 *
 *   D/coordinator/         `init --model-config` (a tiny GPT), the validators
 *                          registered with stakes, `round start` with the
 *                          training config (later rounds chain by themselves)
 *   D/tls/cert.pem, key.pem  a self-signed certificate for 127.0.0.1 (tlscert.h)
 *   D/validators/i/        validator i's key pair, data.txt (its private
 *                          shard: the i-th contiguous slice of the corpus, so
 *                          the shards are not IID) and the agent's state/
 *   D/validation.txt       the corpus's held-out tail
 *   D/logs/                setup.log (the CLI steps), serve.log, agent-i.log
 *
 * then `serve` on 127.0.0.1 (TLS unless --plaintext) and N `nawal-agent run
 * --rounds R` processes (the binaries next to this one), and prints one line
 * per ended round, read from serve's structured log (events update_metrics,
 * round_closed, round_failed, round_ended) and the database: participants,
 * mean train loss reported by the updates, the new global model's loss on
 * the held-out tail (evaluated here, "val loss"), the token-weighted mean
 * of the losses the validators report for it on their own validation
 * splits ("fed val", rounds.h's evaluations: the line waits for all N, at
 * most 5 s after the round ended; "-" when none came), the largest epsilon
 * spent reported
 * (or "off"), bytes the coordinator received / sent during the round, the
 * round's time (announcement to close) and the rewards paid. After round R
 * the children are stopped (SIGTERM, waited for) and the ledger verified.
 * Exit 0; 1 when a child fails (its log is named) or a round fails; 2 for
 * a usage error. */
#ifndef NAWAL_SIM_H
#define NAWAL_SIM_H

int nawal_cmd_sim(int argc, char **argv);

#endif
