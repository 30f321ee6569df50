/*
 * cancel: forwards a CancelRequest to the server.
 *
 * The request arrives on a connection of its own and gets no answer; the
 * server needs the exact bytes (the key length varies from protocol 3.2 on),
 * on a new connection of its own, with the server's real key where the
 * client holds one the proxy gave it (see cancelkeys.h). Each forward frees
 * itself once written.
 */
#ifndef IDEM_CANCEL_H
#define IDEM_CANCEL_H

#include <stddef.h>
#include <stdint.h>

struct worker;

/* Sends the len bytes of pkt, a whole CancelRequest, to the server. */
void cancel_forward(struct worker *w, const uint8_t *pkt, size_t len);

#endif
