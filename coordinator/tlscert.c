/* tlscert.c - a self-signed certificate with OpenSSL's C API (see tlscert.h). */
#include "tlscert.h"

#include "error.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int ossl_fail(char *err, size_t errlen, const char *what) {
    char why[256];
    ERR_error_string_n(ERR_get_error(), why, sizeof why);
    ERR_clear_error();
    return nawal_fail(err, errlen, "TLS certificate: %s: %s", what, why);
}

/* "IP:1.2.3.4,DNS:name,..." */
static int san_text(char *out, size_t cap, const char *const *hosts, size_t n) {
    size_t len = 0;
    out[0] = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char buf[16];
        int ip = inet_pton(AF_INET, hosts[i], buf) == 1 || inet_pton(AF_INET6, hosts[i], buf) == 1;
        int w = snprintf(out + len, cap - len, "%s%s:%s", i ? "," : "", ip ? "IP" : "DNS", hosts[i]);
        if (w < 0 || (size_t)w >= cap - len) return -1;
        len += (size_t)w;
    }
    return 0;
}

static int add_ext(X509 *x, int nid, const char *value) {
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    if (!e) return -1;
    int ok = X509_add_ext(x, e, -1);
    X509_EXTENSION_free(e);
    return ok ? 0 : -1;
}

/* PEM of the key (private) or certificate into path, created with mode. */
static int write_pem(const char *path, mode_t mode, EVP_PKEY *key, X509 *cert, char *err, size_t errlen) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (!f) {
        if (fd >= 0) close(fd);
        return nawal_fail(err, errlen, "cannot create %s", path);
    }
    int ok = key ? PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL) : PEM_write_X509(f, cert);
    if (fclose(f) != 0) ok = 0;
    if (!ok) return nawal_fail(err, errlen, "cannot write %s", path);
    return 0;
}

int nawal_tls_selfsigned(const char *cert_path, const char *key_path, const char *const *hosts, size_t n, int days,
                         char *err, size_t errlen) {
    if (n == 0 || days <= 0) return nawal_fail(err, errlen, "TLS certificate: no host or no validity");
    char san[1024];
    if (san_text(san, sizeof san, hosts, n)) return nawal_fail(err, errlen, "TLS certificate: too many host names");
    int rc = -1;
    X509 *x = NULL;
    BIGNUM *serial = NULL;
    EVP_PKEY *key = EVP_EC_gen("P-256");
    if (!key) {
        ossl_fail(err, errlen, "key generation");
        goto out;
    }
    if (!(x = X509_new()) || !(serial = BN_new())) {
        ossl_fail(err, errlen, "out of memory");
        goto out;
    }
    X509_NAME *name = X509_get_subject_name(x);
    if (!X509_set_version(x, 2) || !BN_rand(serial, 63, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) ||
        !BN_to_ASN1_INTEGER(serial, X509_get_serialNumber(x)) || !X509_gmtime_adj(X509_getm_notBefore(x), -3600) ||
        !X509_gmtime_adj(X509_getm_notAfter(x), (long)days * 86400) || !X509_set_pubkey(x, key) ||
        !X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, (const unsigned char *)"nawal", -1, -1, 0) ||
        !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)hosts[0], -1, -1, 0) ||
        !X509_set_issuer_name(x, name) || add_ext(x, NID_basic_constraints, "critical,CA:TRUE") ||
        add_ext(x, NID_key_usage, "critical,digitalSignature,keyCertSign") ||
        add_ext(x, NID_ext_key_usage, "serverAuth") || add_ext(x, NID_subject_key_identifier, "hash") ||
        add_ext(x, NID_subject_alt_name, san) || !X509_sign(x, key, EVP_sha256())) {
        ossl_fail(err, errlen, "building the certificate");
        goto out;
    }
    if (write_pem(key_path, 0600, key, NULL, err, errlen) || write_pem(cert_path, 0644, NULL, x, err, errlen)) goto out;
    rc = 0;
out:
    BN_free(serial);
    X509_free(x);
    EVP_PKEY_free(key);
    return rc;
}
