/* cmd_eval.c - `nawal-agent eval`: mean cross-entropy (nats per predicted
 * token) of a checkpoint over a whole file, in consecutive non-overlapping
 * windows of the model's context, printed as `loss <float>`. */
#include "checkpoint.h"
#include "cli.h"
#include "cmds.h"
#include "corpus.h"
#include "trainer.h"
#include <stdio.h>

int nawal_cmd_eval(int argc, char **argv) {
    const char *ckpt = NULL, *data = NULL, *device = "auto";
    int threads = 0, batch = 16, skip_bad = 0;
    nawal_flag flags[] = {
        { "checkpoint", NAWAL_FLAG_STR, &ckpt, "checkpoint directory", 0, -1, 1, 0 },
        { "data", NAWAL_FLAG_STR, &data, "text or .jsonl file to evaluate on (all of it)", 0, -1, 1, 0 },
        { "batch", NAWAL_FLAG_INT, &batch, "windows per forward pass", 1, 4096, 0, 0 },
        { "device", NAWAL_FLAG_STR, &device, "auto|cpu|cuda", 0, -1, 0, 0 },
        { "threads", NAWAL_FLAG_INT, &threads, "CPU threads (0 = all cores)", 0, 4096, 0, 0 },
        { "skip-bad-lines", NAWAL_FLAG_BOOL, &skip_bad, "skip malformed JSONL lines instead of failing", 0, -1, 0, 0 },
    };
    int pr = nawal_flags_parse(argc, argv, flags, sizeof flags / sizeof flags[0],
                               "usage: nawal-agent eval --checkpoint DIR --data FILE [options]");
    if (pr) return pr == 1 ? 0 : 2;
    char err[512] = "";
    const nawal_ops *ops;
    nawal_gpt *m = NULL;
    nawal_tokenizer *tok = NULL;
    nawal_corpus corpus = { 0 };
    int rc = 1;
    if (nawal_agent_open_device(&ops, device, threads)) return 1;
    if (nawal_checkpoint_load(&m, &tok, ops, ckpt, batch, err, sizeof err)) { fprintf(stderr, "error: %s\n", err); goto out; }
    if (nawal_corpus_load(&corpus, data, tok, skip_bad, err, sizeof err)) { fprintf(stderr, "error: %s\n", err); goto out; }
    double loss;
    size_t np;
    if (nawal_eval_tokens(m, corpus.tokens, corpus.n_tokens, &loss, &np, err, sizeof err)) { fprintf(stderr, "error: %s\n", err); goto out; }
    fprintf(stderr, "evaluated %zu predicted tokens of %s\n", np, data);
    printf("loss %.6f\n", loss);
    rc = 0;
out:
    nawal_gpt_free(m);
    nawal_corpus_free(&corpus);
    nawal_tokenizer_free(tok);
    return rc;
}
