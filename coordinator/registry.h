/* registry.h - the validators the coordinator admits: registered public
 * keys with a stake in planck (`nawal-coordinator validator add|list|remove`).
 * Only a registered, not removed key whose stake is at least the configured
 * minimum may join a round.
 *
 * Removal is a flag, not a delete: past submissions and rewards keep
 * pointing at the key. Adding a removed key again re-activates it with the
 * new stake. Each change is one committed transaction (see store.h).
 * Return values follow store.h: 0, -1 (error), NAWAL_STORE_REFUSED (reason
 * in err). */
#ifndef NAWAL_REGISTRY_H
#define NAWAL_REGISTRY_H

#include "store.h"

typedef struct {
    uint8_t pubkey[32];
    uint64_t stake_planck;
    int64_t added_ms;
    int removed;
    int64_t removed_ms; /* 0 unless removed */
} nawal_validator;

/* Refused if the key is registered and active. */
int nawal_registry_add(nawal_store *s, const uint8_t pubkey[32], uint64_t stake_planck, char *err, size_t errlen);
/* Refused if the key is unknown or already removed. */
int nawal_registry_remove(nawal_store *s, const uint8_t pubkey[32], char *err, size_t errlen);
/* Refused if the key was never registered (a removed one is returned). */
int nawal_registry_get(nawal_store *s, const uint8_t pubkey[32], nawal_validator *out, char *err, size_t errlen);
/* Validators ordered by time added then key; removed ones only with
 * include_removed. *out is malloc'ed (NULL when *n == 0). */
int nawal_registry_list(nawal_store *s, int include_removed, nawal_validator **out, size_t *n, char *err,
                        size_t errlen);
/* 1 if the key may join (registered, active, stake >= min_stake_planck);
 * 0 if not, with the reason in (reason, reasonlen); -1 on a database error
 * (message in reason). */
int nawal_registry_can_join(nawal_store *s, const uint8_t pubkey[32], uint64_t min_stake_planck, char *reason,
                            size_t reasonlen);

#endif
