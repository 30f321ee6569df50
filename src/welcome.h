/*
 * welcome: what a server told its client at the end of a login, kept so
 * that a server connection handed to another client (server_reuse) can
 * tell it again.
 *
 * A login ends with a ParameterStatus for every reported setting, then
 * BackendKeyData and ReadyForQuery. Before them the server may have sent
 * NegotiateProtocolVersion (the StartupMessage asked for a newer minor
 * version or for protocol options, _pq_.*, it does not know) and, after
 * AuthenticationOk, warnings about the database (such as a collation
 * version mismatch). A kept server goes only to a client with the same
 * StartupMessage, so the same answers hold for it, and it must hear them:
 * else it believes in a version or an option the server never granted, or
 * never learns what every login to that database is told. Reported
 * settings change during a
 * session (SET, and the reset before reuse reports the old values back),
 * so every ParameterStatus of the session is noted, the last value of a
 * name replacing the one before.
 *
 * Pure bookkeeping: no I/O.
 */
#ifndef IDEM_WELCOME_H
#define IDEM_WELCOME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct welcome_param;

struct welcome {
    struct welcome_param *params; /* by name, in the order first noted */
    uint8_t *key;    /* the BackendKeyData body, NULL until it came */
    size_t key_len;
    uint8_t *negotiation; /* the NegotiateProtocolVersion body, NULL if none came */
    size_t negotiation_len;
    uint8_t *notices;     /* the login's NoticeResponses, whole, back to back */
    size_t notices_len;
    bool broken;     /* a note was lost (no memory, or malformed): never replay */
};

void welcome_init(struct welcome *w);
void welcome_free(struct welcome *w);

/* Notes a server message of type with its body: ParameterStatus ('S'),
 * BackendKeyData ('K'), NegotiateProtocolVersion ('v') and NoticeResponse
 * ('N': only those of the login, before ReadyForQuery, are the caller's to
 * note); other types are ignored. */
void welcome_note(struct welcome *w, char type, const uint8_t *body, size_t len);

/* Whether it can be replayed: a whole login was noted, nothing lost. */
bool welcome_complete(const struct welcome *w);

/* The end of a login as a client hears it: the noted
 * NegotiateProtocolVersion if there was one, AuthenticationOk, the noted
 * notices in their order, every noted ParameterStatus, BackendKeyData (with key as its body, of the noted one's
 * length, or the noted one when key is NULL) and ReadyForQuery 'I'.
 * Returns the bytes it needs; when that exceeds cap nothing is written. */
size_t welcome_build(const struct welcome *w, const uint8_t *key, uint8_t *buf, size_t cap);

/* The value noted for name, or NULL. */
const char *welcome_value(const struct welcome *w, const char *name);

#endif
