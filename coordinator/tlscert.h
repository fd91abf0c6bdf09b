/* tlscert.h - a self-signed TLS certificate for a coordinator that has no
 * certificate from a CA: the local federation (`nawal-coordinator sim`)
 * and tests. The agents then trust exactly this certificate (nawal-agent
 * run --ca CERT.pem) and pin the coordinator's key (--coordinator-key).
 * Written with OpenSSL's C API: an ECDSA P-256 key, SHA-256 signature,
 * subjectAltName with every host given (IP addresses as IP entries, names
 * as DNS entries), CA:TRUE so that it can serve as its own trust anchor. */
#ifndef NAWAL_TLSCERT_H
#define NAWAL_TLSCERT_H

#include <stddef.h>

/* Writes cert_path (PEM certificate, 0644) and key_path (PEM private key,
 * 0600) for hosts[0..n) (hosts[0] is also the subject's CN), valid from
 * now for days days. 0, or -1 with a message. */
int nawal_tls_selfsigned(const char *cert_path, const char *key_path, const char *const *hosts, size_t n, int days,
                         char *err, size_t errlen);

#endif
