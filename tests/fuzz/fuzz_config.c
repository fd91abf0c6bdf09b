/* fuzz_config.c - libFuzzer target for a checkpoint's config.json reader.
 *
 * Input: the bytes of a (candidate) config.json, written into a private
 * directory and read with nawal_checkpoint_read_config(). Bad input must
 * only produce -1 with a message. When it is accepted the config must pass
 * nawal_gpt_config_check() (positive sizes in range, width divisible by
 * heads) so that a model can be created from it.
 * Seeds: tests/fuzz/corpus/config/. */
#include "checkpoint.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_tmpfile("config.json", data, size);
    nawal_gpt_config cfg;
    memset(&cfg, 0, sizeof cfg);
    char err[1024] = "", err2[256] = "";
    int rc = nawal_checkpoint_read_config(fuzz_tmpdir(), &cfg, err, sizeof err);
    FUZZ_CHECK(rc == 0 || rc == -1, "read_config returns 0 or -1");
    if (rc != 0) {
        FUZZ_CHECK(err[0], "failure has a message");
        return 0;
    }
    FUZZ_CHECK(nawal_gpt_config_check(&cfg, err2, sizeof err2) == 0, "accepted config is valid");
    FUZZ_CHECK(cfg.n_embd % cfg.n_head == 0, "width divisible by heads");
    return 0;
}
