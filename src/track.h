/*
 * track: the queue of a session's outstanding requests.
 *
 * Every client message that the server answers (Query, Parse, Bind,
 * Describe, Execute, Close, Sync, FunctionCall, and the end of a COPY) is
 * queued in the order the client sent it; every server message that answers
 * one takes it off again, following the server's own rules: after an error
 * in the extended protocol the server skips everything up to Sync, during
 * COPY FROM STDIN it ignores Sync and Flush, and one ReadyForQuery ends each
 * Query, Sync and FunctionCall. ReadyForQuery is the ground truth: when the
 * queue and the server disagree (a client outside the protocol), the queue
 * is resynchronised there and the slip counted.
 *
 * The proxy injects requests of its own (track_inject): their replies are
 * the proxy's, never the client's, and a tag says what each was for. A
 * client's request may carry a note, owned by the queue and released with
 * free_note (given the queue's owner) when the request is answered.
 *
 * Pure bookkeeping over message type bytes. No I/O.
 */
#ifndef IDEM_TRACK_H
#define IDEM_TRACK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum track_kind {
    TRACK_QUERY,    /* 'Q' */
    TRACK_PARSE,    /* 'P' */
    TRACK_BIND,     /* 'B' */
    TRACK_DESCRIBE, /* 'D' */
    TRACK_EXECUTE,  /* 'E' */
    TRACK_CLOSE,    /* 'C' */
    TRACK_SYNC,     /* 'S' */
    TRACK_FUNCALL,  /* 'F' */
    TRACK_COPY_END, /* 'c' CopyDone or 'f' CopyFail */
};

struct track_req {
    enum track_kind kind;
    bool injected;   /* sent by the proxy, not the client */
    uint8_t tag;     /* injected: what the proxy sent it for (its own labels) */
    uint64_t serial; /* requests are numbered from 1 in the order they are sent */
    void *note;      /* the connection's, about a client's request; may be NULL */
};

struct track {
    struct track_req *ring;
    size_t cap;   /* a power of two */
    size_t head;  /* index of the oldest request */
    size_t count;
    char txn_status;   /* from the last ReadyForQuery: 'I', 'T' or 'E' */
    bool batch_open;   /* extended messages sent since the last Sync */
    bool copy_in;      /* the server is reading COPY data from the client */
    bool skip_to_sync; /* an extended message failed and its Sync is still to
                          come: the server discards everything until then */
    uint64_t desyncs;  /* times ReadyForQuery found the queue wrong */
    uint64_t sent;     /* requests recorded, ever: the last one's serial */
    void (*free_note)(void *owner, void *note);
    void *owner;
};

/* free_note (may be NULL) releases the notes of answered requests; owner
 * is passed along. */
void track_init(struct track *t, void (*free_note)(void *owner, void *note), void *owner);
void track_reset(struct track *t);
void track_free(struct track *t);

/* Records a client message by its type byte, with a note for the request
 * it makes (the queue owns the note from here on, and frees it at once when
 * the message makes no request). Returns false only when memory for the
 * queue cannot be had (the note is freed). */
bool track_client_msg(struct track *t, char type, void *note);

/* Records a message the proxy sends on its own, labelled with tag. The
 * proxy must only send what cannot change what the client's messages mean:
 * a Query when track_idle() holds, extended messages on names of its own,
 * or a Parse that gives the unnamed statement the text the client gave it.
 * False when memory cannot be had. */
bool track_inject(struct track *t, char type, uint8_t tag);

/* Records a server message by its type byte; for ReadyForQuery, status is
 * its transaction status byte (ignored otherwise). */
void track_server_msg(struct track *t, char type, char status);

/* True when an ErrorResponse now would make the server skip every message
 * up to the next Sync: it answers an extended message (Parse, Bind,
 * Describe, Execute, Close). Ask before track_server_msg takes the error. */
bool track_error_skips(const struct track *t);

/* True when the server reads COPY data and the client's CopyDone or
 * CopyFail has not come yet: what the client sends next goes to the copy. */
bool track_copy_awaits_client(const struct track *t);

/* True when nothing is outstanding and no batch or COPY is open, whatever
 * the transaction status: a request of the proxy's own may go first. */
bool track_quiet(const struct track *t);

/* True when track_quiet holds and no transaction is open either: the
 * client may be disconnected without losing anything. */
bool track_idle(const struct track *t);

static inline size_t track_pending(const struct track *t)
{
    return t->count;
}

/* The serial the next request recorded will carry. */
static inline uint64_t track_next_serial(const struct track *t)
{
    return t->sent + 1;
}

/* True when a Sync is outstanding. */
bool track_sync_pending(const struct track *t);

/* True when no request numbered serial or lower is outstanding: each was
 * answered, or skipped by the server. */
bool track_answered_through(const struct track *t, uint64_t serial);

/* The oldest outstanding request, or NULL. */
const struct track_req *track_head(const struct track *t);

/* The i-th outstanding request (0 is the head), or NULL. */
const struct track_req *track_at(const struct track *t, size_t i);

#endif
