/*
 * cancelkeys: the cancel keys the proxy gives clients of servers it may
 * hand on (server_reuse), and the servers' real keys behind them.
 *
 * A kept server serves client after client, and each of them learns a key
 * that cancels what that server runs. With the server's own key, a
 * CancelRequest a client sends as it leaves could land on the query of the
 * next one. So each such client gets a key of its own: the backend's
 * process ID (what PQbackendPID shows stays true) and a random secret of the
 * real one's length. A CancelRequest carrying it is forwarded with the real
 * key; once the client has left, its key is forgotten and its CancelRequest
 * reaches the server with a key no backend has, which the server ignores.
 *
 * Shared by every worker: a CancelRequest comes on a connection of its own,
 * to any worker. Thread-safe; no I/O.
 */
#ifndef IDEM_CANCELKEYS_H
#define IDEM_CANCELKEYS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pgproto.h"

struct cancel_keys;

struct cancel_keys *cancel_keys_new(void);
void cancel_keys_free(struct cancel_keys *m);

/* Makes a key for a client of the server whose BackendKeyData body is real
 * (len bytes) and writes it to given (len bytes). False when len is out of
 * bounds or memory or randomness ran out: then nothing is kept. */
bool cancel_keys_add(struct cancel_keys *m, const uint8_t *real, size_t len, uint8_t *given);

/* Forgets a key given out (len bytes). */
void cancel_keys_remove(struct cancel_keys *m, const uint8_t *given, size_t len);

/* When key (len bytes, a CancelRequest's process ID and secret) is one
 * given out, writes the real one over it and returns true. */
bool cancel_keys_translate(struct cancel_keys *m, uint8_t *key, size_t len);

/* Keys given out now. */
size_t cancel_keys_count(struct cancel_keys *m);

#endif
