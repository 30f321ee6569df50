#include "track.h"

#include <stdlib.h>
#include <string.h>

#define TRACK_INITIAL_CAP 16

void track_init(struct track *t, void (*free_note)(void *owner, void *note), void *owner)
{
    memset(t, 0, sizeof(*t));
    t->txn_status = 'I';
    t->free_note = free_note;
    t->owner = owner;
}

static void release(struct track *t, struct track_req *r)
{
    if (r->note && t->free_note)
        t->free_note(t->owner, r->note);
    r->note = NULL;
}

static struct track_req *at(const struct track *t, size_t i);

void track_reset(struct track *t)
{
    for (size_t i = 0; i < t->count; i++)
        release(t, at(t, i));
    t->head = 0;
    t->count = 0;
    t->txn_status = 'I';
    t->batch_open = false;
    t->copy_in = false;
    t->skip_to_sync = false;
}

void track_free(struct track *t)
{
    void (*free_note)(void *, void *) = t->free_note;
    void *owner = t->owner;

    track_reset(t);
    free(t->ring);
    track_init(t, free_note, owner);
}

static struct track_req *at(const struct track *t, size_t i)
{
    return &t->ring[(t->head + i) & (t->cap - 1)];
}

const struct track_req *track_head(const struct track *t)
{
    return t->count ? at(t, 0) : NULL;
}

const struct track_req *track_at(const struct track *t, size_t i)
{
    return i < t->count ? at(t, i) : NULL;
}

static bool grow(struct track *t)
{
    size_t cap = t->cap ? t->cap * 2 : TRACK_INITIAL_CAP;
    struct track_req *ring = malloc(cap * sizeof(*ring));

    if (!ring)
        return false;
    for (size_t i = 0; i < t->count; i++)
        ring[i] = *at(t, i);
    free(t->ring);
    t->ring = ring;
    t->cap = cap;
    t->head = 0;
    return true;
}

static bool push_req(struct track *t, enum track_kind kind, bool injected, uint8_t tag,
                     void *note)
{
    if (t->count == t->cap && !grow(t)) {
        struct track_req lost = { .note = note };
        release(t, &lost);
        return false;
    }
    if (kind == TRACK_COPY_END && t->count == 0 && !t->copy_in) {
        struct track_req ignored = { .note = note };
        release(t, &ignored);
        return true;
    }
    struct track_req *r = at(t, t->count);
    r->kind = kind;
    r->injected = injected;
    r->tag = tag;
    r->serial = ++t->sent;
    r->note = note;
    t->count++;
    return true;
}

/* A CopyDone or CopyFail at the head belongs to no COPY in progress (its
 * COPY failed before reading data, or was skipped): the server ignores it,
 * without a reply. */
static bool stale_at_head(const struct track *t)
{
    return !t->copy_in && t->count && at(t, 0)->kind == TRACK_COPY_END;
}

static void pop(struct track *t)
{
    do {
        release(t, at(t, 0));
        t->head = (t->head + 1) & (t->cap - 1);
        t->count--;
    } while (stale_at_head(t));
}

static bool pop_if(struct track *t, enum track_kind kind)
{
    if (t->count == 0 || at(t, 0)->kind != kind)
        return false;
    pop(t);
    return true;
}

static bool ends_with_ready(enum track_kind kind)
{
    return kind == TRACK_QUERY || kind == TRACK_SYNC || kind == TRACK_FUNCALL;
}

static bool is_extended(enum track_kind kind)
{
    switch (kind) {
    case TRACK_PARSE:
    case TRACK_BIND:
    case TRACK_DESCRIBE:
    case TRACK_EXECUTE:
    case TRACK_CLOSE:
        return true;
    default:
        return false;
    }
}

/* Drops the n requests that follow the head. */
static void drop_after_head(struct track *t, size_t n)
{
    for (size_t i = 1; i <= n; i++)
        release(t, at(t, i));
    for (size_t i = 1; i + n < t->count; i++)
        *at(t, i) = *at(t, i + n);
    t->count -= n;
}

/* COPY FROM STDIN is over. What the client sent after the COPY command up
 * to its CopyDone or CopyFail went to the copy, which ignores Sync and
 * Flush: forget those requests, and the CopyDone/CopyFail too. When none
 * came yet (the server failed the copy midway), all that came went to the
 * copy; the CopyDone still to come is ignored by the server unanswered
 * (stale_at_head). */
static void end_copy_in(struct track *t)
{
    size_t n = 0;

    t->copy_in = false;
    while (1 + n < t->count) {
        if (at(t, 1 + n++)->kind == TRACK_COPY_END)
            break;
    }
    drop_after_head(t, n);
}

/* The request a client message makes, if any. */
static bool request_kind(struct track *t, char type, enum track_kind *kind)
{
    if (t->skip_to_sync) {
        /* The server discards everything but Sync, unanswered. */
        if (type != 'S')
            return false;
        t->skip_to_sync = false;
    }
    if (t->copy_in && type == 'H')
        return false;
    switch (type) {
    case 'c':
    case 'f':
        /* Whether or not the server is known to be reading COPY data yet:
         * a client may send it right behind the COPY command. */
        *kind = TRACK_COPY_END;
        return true;
    case 'Q': *kind = TRACK_QUERY; return true;
    case 'F': *kind = TRACK_FUNCALL; return true;
    case 'S':
        t->batch_open = false;
        *kind = TRACK_SYNC;
        return true;
    case 'P': *kind = TRACK_PARSE; break;
    case 'B': *kind = TRACK_BIND; break;
    case 'D': *kind = TRACK_DESCRIBE; break;
    case 'E': *kind = TRACK_EXECUTE; break;
    case 'C': *kind = TRACK_CLOSE; break;
    case 'H': t->batch_open = true; return false;
    default:  return false; /* CopyData, Terminate, unknown: no reply */
    }
    t->batch_open = true;
    return true;
}

bool track_client_msg(struct track *t, char type, void *note)
{
    enum track_kind kind;

    if (request_kind(t, type, &kind))
        return push_req(t, kind, false, 0, note);
    struct track_req none = { .note = note };
    release(t, &none);
    return true;
}

bool track_inject(struct track *t, char type, uint8_t tag)
{
    enum track_kind kind;

    if (!request_kind(t, type, &kind))
        return true;
    return push_req(t, kind, true, tag, NULL);
}

/* ReadyForQuery ends the oldest Query, Sync or FunctionCall. Anything still
 * queued before it was never answered: the queue has slipped. */
static void ready(struct track *t, char status)
{
    bool slipped = false;

    while (t->count && !ends_with_ready(at(t, 0)->kind)) {
        pop(t);
        slipped = true;
    }
    if (t->count)
        pop(t);
    else
        slipped = true;
    if (slipped)
        t->desyncs++;
    if (status)
        t->txn_status = status;
}

void track_server_msg(struct track *t, char type, char status)
{
    switch (type) {
    case '1': pop_if(t, TRACK_PARSE); break;
    case '2': pop_if(t, TRACK_BIND); break;
    case '3': pop_if(t, TRACK_CLOSE); break;
    case 'T':
    case 'n': pop_if(t, TRACK_DESCRIBE); break;
    case 'I':
    case 's': pop_if(t, TRACK_EXECUTE); break;
    case 'C':
        if (t->copy_in)
            end_copy_in(t);
        pop_if(t, TRACK_EXECUTE);
        break;
    case 'G':
    case 'W':
        t->copy_in = true;
        break;
    case 'E':
        if (t->copy_in)
            end_copy_in(t);
        if (!track_error_skips(t))
            break;
        /* An extended message failed: the server skips every message up to
         * Sync, those already queued (a Query among them too) and those
         * still to come. */
        while (t->count && at(t, 0)->kind != TRACK_SYNC)
            pop(t);
        if (t->count == 0)
            t->skip_to_sync = true;
        break;
    case 'Z':
        ready(t, status);
        break;
    default:
        break;
    }
}

bool track_sync_pending(const struct track *t)
{
    /* From the newest: a batch's Sync is most often the last request. */
    for (size_t i = t->count; i > 0; i--)
        if (at(t, i - 1)->kind == TRACK_SYNC)
            return true;
    return false;
}

bool track_answered_through(const struct track *t, uint64_t serial)
{
    /* The head is the oldest outstanding request: the queue keeps the
     * order of sending, whatever it drops. */
    return t->count == 0 || at(t, 0)->serial > serial;
}

bool track_error_skips(const struct track *t)
{
    return t->count > 0 && is_extended(at(t, 0)->kind);
}

bool track_copy_awaits_client(const struct track *t)
{
    if (!t->copy_in)
        return false;
    for (size_t i = 0; i < t->count; i++)
        if (at(t, i)->kind == TRACK_COPY_END)
            return false;
    return true;
}

bool track_quiet(const struct track *t)
{
    return t->count == 0 && !t->batch_open && !t->copy_in;
}

bool track_idle(const struct track *t)
{
    return track_quiet(t) && t->txn_status == 'I';
}
