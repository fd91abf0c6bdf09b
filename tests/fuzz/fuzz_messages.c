/* fuzz_messages.c - libFuzzer target for the per-message decoders behind
 * nawal_msg_unpack(): byte 0 picks the MsgType (mod 16, so 0 and 15 are
 * unknown types and must be refused with ERR_UNKNOWN_TYPE), the rest is
 * the payload. Bad bytes must only produce ERR_BAD_MESSAGE with a message.
 * When the payload decodes, packing it and decoding that again must work,
 * and packing the second decode must give the same bytes as the first
 * (decoding normalises; after that, encoding is stable - unknown fields
 * included). Seeds: tests/fuzz/corpus/messages/. */
#include "envelope.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    uint32_t type = data[0] % 16;
    const uint8_t *payload = data + 1;
    size_t len = size - 1;
    ProtobufCMessage *m = NULL, *m2 = NULL;
    char err[512] = "";
    int rc = nawal_msg_unpack(type, payload, len, &m, err, sizeof err);
    if (!nawal_msg_descriptor(type)) {
        FUZZ_CHECK(rc == NAWAL__ERROR_CODE__ERR_UNKNOWN_TYPE && m == NULL, "unknown type refused");
        return 0;
    }
    if (rc) {
        FUZZ_CHECK(rc == NAWAL__ERROR_CODE__ERR_BAD_MESSAGE && m == NULL && err[0], "bad bytes: ERR_BAD_MESSAGE");
        return 0;
    }
    FUZZ_CHECK(m->descriptor == nawal_msg_descriptor(type), "decoded as the type's message");
    uint8_t *p1 = NULL, *p2 = NULL;
    size_t n1 = 0, n2 = 0;
    FUZZ_CHECK(nawal_msg_pack(type, m, &p1, &n1, err, sizeof err) == 0, "a decoded message packs");
    FUZZ_CHECK(nawal_msg_unpack(type, p1, n1, &m2, err, sizeof err) == 0, "a packed message decodes");
    FUZZ_CHECK(nawal_msg_pack(type, m2, &p2, &n2, err, sizeof err) == 0, "and packs again");
    FUZZ_CHECK(n1 == n2 && memcmp(p1, p2, n1) == 0, "re-encoding is stable");
    free(p1);
    free(p2);
    nawal_msg_free(m);
    nawal_msg_free(m2);
    return 0;
}
