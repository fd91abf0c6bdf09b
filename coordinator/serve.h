/* serve.h - `nawal-coordinator serve --dir D --listen HOST:PORT`: the
 * coordinator's network endpoint. One process, one event loop (the
 * transport's, proto/transport.h) serving the agents' WebSocket sessions
 * (session.c) and, on the same port, the operator's plain HTTP GET /metrics
 * and GET /status (http.c); a worker thread (ticker.c) runs the round
 * machine's ticks (rounds.h), whose aggregations take seconds on big models.
 * Everything it knows lives in the coordinator directory (store.h): a
 * restarted server resumes the round where it was.
 *
 * Protocol. Every message is a protobuf (proto/nawal.proto) in a signed
 * envelope (proto/envelope.h) inside one binary WebSocket message
 * (sub-protocol "nawal.v1"). The coordinator signs with D/identity.key; its
 * sequence numbers are time-based (max(last + 1, Unix us)), so they only
 * grow, across connections and restarts.
 *
 *   agent                                   coordinator
 *   Hello{version, software, pubkey}   ->   pubkey = envelope sender,
 *                                           registered, not removed, stake
 *                                           >= the current round's minimum
 *                                      <-   Challenge{32-byte nonce, expires_ms}
 *   Auth{nonce}                        ->   the same nonce, before it expires
 *                                      <-   Ack{Auth's sequence, blob_token: 32 random bytes}
 *                                      <-   RoundAnnounce (the open round, if any)
 *   Join{round_id, stake}              ->   rounds.h's checks, committed
 *                                      <-   Ack | Error
 *   BlobRequest{cid, offset}           ->   cid: a global model (some round's base or result, or the initial model)
 *                                           or a model patch of one (patches.h; RoundAnnounce and
 *                                           EvaluateRequest name a model's patch: patch_cid, _from_cid, _size)
 *                                      <-   BlobChunk* (blobstream.h: 1 MiB each, from offset; resume with a new request)
 *   or, on the same port, plain HTTP:
 *   GET /blobs/<cid hex>                ->   the same blobs, for the life of the session that got the token
 *     Authorization: Nawal <token hex>       (the fast path: lws 4.1's client parses WebSocket frames a byte
 *     [Range: bytes=OFFSET-]                 at a time); 200 or 206 with the file from OFFSET, 401 / 404 / 416
 *   UpdateSubmit{round, base, examples,->   rounds.h's refusals, checked first (Error: nothing to upload)
 *     metrics, epsilon, delta cid+size,
 *     quality}
 *                                      <-   BlobRequest{delta cid, offset} (unless the blob is already stored)
 *   BlobChunk*                         ->   received into D/uploads/, CID verified, moved into the blob store
 *                                      <-   Ack{UpdateSubmit's sequence} (committed first) | Error
 *                                           (an agent that lost the Ack and submits again gets
 *                                           ERR_DUPLICATE: its update is on record)
 *   Heartbeat{time}                    ->
 *                                      <-   Heartbeat{coordinator time}
 *                                      <-   when a round ends, to every authenticated session: if it
 *                                           closed, EvaluateRequest{round, new model cid}; then
 *                                           RoundResult{round, new model, accepted keys, payouts} (a failed
 *                                           round: no model, nobody accepted) and the next RoundAnnounce
 *   EvaluateResult{round, model cid,   ->   the model's loss on the agent's validation split, recorded once
 *     loss, tokens}                         per validator and round (rounds.h: evaluations)
 *                                      <-   Ack{EvaluateResult's sequence} | Error
 *                                           (after Auth, a validator that has not evaluated the latest
 *                                           closed round's model gets its EvaluateRequest, before the
 *                                           RoundAnnounce)
 *
 * Refusals are Error{code, text} with the codes of rounds.h and envelope.h.
 * A message that fails the envelope checks, or anything but Hello/Auth
 * before authentication, gets its Error and the connection is closed after
 * it; refusals of requests (join, update, blob) and message types the
 * coordinator does not take (ERR_UNKNOWN_TYPE, including types unknown to
 * this build) leave it open. An agent that cannot serve the delta answers
 * the BlobRequest with an Error (ERR_NOT_FOUND, or ERR_BAD_MESSAGE), which
 * cancels the upload; one that cannot evaluate a model answers the
 * EvaluateRequest with an Error of another code (logged); a cut upload
 * resumes when the agent sends its UpdateSubmit again (the partial file
 * stays in D/uploads/; files there untouched for a day are removed when
 * serve starts). A delta larger than 2 x the round's base model + 1 MiB is
 * refused (ERR_TOO_LARGE). One session per validator: a new authentication
 * closes the key's older session (Error ERR_DUPLICATE). Connections that
 * have not authenticated within auth_timeout_ms are closed. Every state change an agent is told
 * about (joined, update accepted, round closed and paid) is committed to
 * SQLite before the message saying so is queued.
 *
 * TLS: the certificate and key are the directory's settings
 * (`init --tls-cert F --tls-key F`), or --cert/--key for one run;
 * --insecure-plaintext (no TLS) is accepted on loopback addresses only.
 *
 * Shutdown: SIGINT or SIGTERM ends the loop after the message being handled
 * (its transaction committed), waits for a tick in progress, closes every
 * connection and the database, and nawal_serve_run returns 0. */
#ifndef NAWAL_SERVE_H
#define NAWAL_SERVE_H

#include <stddef.h>

typedef struct {
    const char *dir;
    const char *listen;          /* "HOST:PORT" (IPv6: "[::1]:PORT"); port 0 = ephemeral, logged */
    const char *cert_file;       /* NULL: the directory's NAWAL_SETTING_TLS_CERT */
    const char *key_file;        /* NULL: the directory's NAWAL_SETTING_TLS_KEY */
    int insecure_plaintext;      /* loopback only */
    int max_connections;         /* 0: the transport's default (64) */
    int auth_timeout_ms;         /* 0: 30 s */
    const char *strategy;        /* aggregation strategy (NULL: fedavg) */
    int threads;                 /* aggregation threads (0: all cores) */
    int keepalive_s;             /* PING a silent peer after this many seconds, drop it after 3x
                                    without a PONG (0: the transport's 20 s / 60 s) */
    int no_blob_http;            /* 1: no blob tokens, models over BlobRequest only */
} nawal_serve_options;

/* Splits "HOST:PORT" / "[V6]:PORT" into host (cap bytes) and port (0..65535).
 * "*" or an empty host means every interface (host ""). 0 or -1 with a message. */
int nawal_listen_parse(const char *text, char *host, size_t cap, int *port, char *err, size_t errlen);
/* 1 for 127.0.0.0/8, ::1 and "localhost". */
int nawal_listen_is_loopback(const char *host);

/* Runs the server until SIGINT/SIGTERM; 0, or -1 with a message when it
 * cannot start (bad directory, TLS material, address in use) or fails. */
int nawal_serve_run(const nawal_serve_options *o, char *err, size_t errlen);

#endif
