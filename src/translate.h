/*
 * translate: when a unique violation may be reported as success.
 *
 * For a retry, a 23505 on a registered table is the success path. But an
 * error is only replaced where nothing else the client believes happened
 * was rolled back or skipped: in an implicit transaction (several
 * statements in one Query, several Executes before one Sync) the server has
 * already undone earlier statements and skips later ones. Inside an
 * explicit transaction block the proxy runs the INSERT under a savepoint
 * of its own and rolls back to it, so the transaction goes on.
 *
 * Pure: the connection describes the request and the error; these
 * functions say what to do.
 */
#ifndef IDEM_TRANSLATE_H
#define IDEM_TRANSLATE_H

#include <stdbool.h>
#include <stddef.h>

/* The savepoint the proxy owns, and the statements around it. */
#define TRANSLATE_SQL_SAVEPOINT "SAVEPOINT idemproxy_guard"
#define TRANSLATE_SQL_RELEASE "RELEASE SAVEPOINT idemproxy_guard"
/* The rollback, as one Query and, for the extended protocol (one statement
 * per Parse), its first statement alone. */
#define TRANSLATE_SQL_ROLLBACK_TO "ROLLBACK TO SAVEPOINT idemproxy_guard"
#define TRANSLATE_SQL_ROLLBACK TRANSLATE_SQL_ROLLBACK_TO "; " TRANSLATE_SQL_RELEASE
/* After another error under the savepoint: a statement that fails, run once
 * the savepoint is rolled back and released, so that the block fails at the
 * client's own level, as the error would have failed it without the
 * savepoint (its locks released and its settings undone there and then).
 * Its text is what the server's log shows. */
#define TRANSLATE_SQL_FAIL "SELECT 'idemproxy: the statement failed, and so does its block'::int"
#define TRANSLATE_SQL_ABORT TRANSLATE_SQL_ROLLBACK "; " TRANSLATE_SQL_FAIL
/* What the client is told instead of the error. */
#define TRANSLATE_TAG "INSERT 0 0"

/* What one request (a Query, or an Execute) is, as far as translation
 * cares. */
struct translate_request {
    bool extended;     /* an Execute rather than a Query */
    int table;         /* the scope table its INSERT goes into; -1: not a recognised INSERT */
    bool enabled;      /* that table's translate_errors */
    size_t statements; /* Query: its statements; Execute: Executes since the
                          last Sync, this one included */
    char txn_status;   /* as the request began: 'I', 'T' or 'E' */
    bool returning;    /* its INSERT has a RETURNING list */
    bool guarded;      /* it runs under the proxy's savepoint */
};

/* What the server said. */
struct translate_error {
    const char *sqlstate; /* field C */
    int table;            /* the scope table its s and t fields name (partitions
                             mapped to their registered parent); -1: none */
    bool in_routine;      /* it has a context (field W): raised inside a
                             function or trigger, not by the statement itself */
};

enum translate_verdict {
    TRANSLATE_PASS,     /* forward the error unchanged */
    TRANSLATE_COMPLETE, /* report TRANSLATE_TAG in its place */
    TRANSLATE_ROLLBACK, /* roll back to the savepoint, then report TRANSLATE_TAG */
    TRANSLATE_AWAIT,    /* COMPLETE if the client's next message is Sync, else PASS */
};

/* Why: labels for counters and log lines. */
enum translate_reason {
    TR_TRANSLATED,       /* reported as success */
    TR_NOT_UNIQUE,       /* not a 23505: not counted anywhere */
    TR_NOT_RECOGNISED,   /* not an INSERT the proxy recognised (UPDATE, COPY, COMMIT, function...) */
    TR_IN_ROUTINE,       /* raised inside a function or trigger the statement ran */
    TR_OTHER_TABLE,      /* the violation is on another table than the INSERT's */
    TR_DISABLED,         /* translate_errors = off */
    TR_RETURNING,        /* simple protocol INSERT ... RETURNING: the client expects a
                            row description only the server could give */
    TR_NOT_ALONE,        /* other statements share its implicit transaction */
    TR_NOT_GUARDED,      /* in a transaction block, but not under the proxy's savepoint */
    TR_FAILED_BLOCK,     /* the transaction had already failed */
    TR_NOT_SYNC,         /* extended: the client's next message was not Sync */
    TR_ROLLBACK_FAILED,  /* the rollback to the proxy's savepoint failed (a cancel) */
    TR_COUNT,
};

const char *translate_reason_name(enum translate_reason reason);

/* Decides about the error err answering req. */
enum translate_verdict translate_decide(const struct translate_request *req,
                                        const struct translate_error *err,
                                        enum translate_reason *why);

/* Settles TRANSLATE_AWAIT once the type of the client's next message after
 * the Execute is known. Only Sync completes it; even a Flush does not, since
 * after one the client may be waiting for the outcome before it sends more. */
enum translate_verdict translate_await(char next_type, enum translate_reason *why);

/* Whether req should run under the proxy's savepoint: a recognised INSERT
 * into a table with translation on, alone in its Query and without
 * RETURNING (or any Execute), in a transaction block. certain says the proxy knows the block is still open
 * when the statement runs: nothing the proxy cannot see through (a pipelined
 * COMMIT, say) comes between the last ReadyForQuery and it. */
bool translate_guard(const struct translate_request *req, bool certain);

#endif
