/* cmd_keygen.c - `nawal-agent keygen --out DIR`: creates the validator's
 * Ed25519 identity (DIR/identity.key, secret, mode 0600; DIR/identity.pub,
 * the public key in hex; format in proto/identity.h), creating DIR if
 * missing and refusing to overwrite an existing key, then prints the
 * fingerprint (the public key in hex) that the coordinator operator
 * registers. */
#include "cli.h"
#include "cmds.h"
#include "identity.h"
#include <stdio.h>

int nawal_cmd_keygen(int argc, char **argv) {
    const char *out = NULL;
    nawal_flag flags[] = {
        { "out", NAWAL_FLAG_STR, &out, "directory for identity.key (secret) and identity.pub (created if missing)", 0, -1, 1, 0 },
    };
    int pr = nawal_flags_parse(argc, argv, flags, sizeof flags / sizeof flags[0],
                               "usage: nawal-agent keygen --out DIR");
    if (pr) return pr == 1 ? 0 : 2;
    char err[512] = "", fp[NAWAL_FINGERPRINT_HEX_BYTES];
    if (nawal_identity_create(out, fp, err, sizeof err)) {
        fprintf(stderr, "error: %s\n", err);
        return 1;
    }
    fprintf(stderr, "wrote %s/%s (secret, mode 0600) and %s/%s\n", out, NAWAL_IDENTITY_KEY_FILE, out,
            NAWAL_IDENTITY_PUB_FILE);
    printf("fingerprint %s\n", fp);
    return 0;
}
