/*
 * Unit tests for track: the queue of outstanding requests, driven with the
 * type-byte sequences that real client/server exchanges produce.
 *
 * Notation: client("PBES") feeds client messages; server("12CZI") feeds
 * server messages, where a 'Z' (ReadyForQuery) takes the character after it
 * as its transaction status. Note that the same letter means different
 * things on each side: client 'C' is Close, server 'C' is CommandComplete;
 * client 'S' is Sync, server 'S' is ParameterStatus; client 'D' is Describe,
 * server 'D' is DataRow; client 'c' and server 'c' are both CopyDone.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "track.h"

static void client(struct track *t, const char *types)
{
    for (const char *c = types; *c; c++)
        assert_true(track_client_msg(t, *c, NULL));
}

static void server(struct track *t, const char *types)
{
    for (const char *c = types; *c; c++) {
        if (*c == 'Z') {
            assert_true(c[1] == 'I' || c[1] == 'T' || c[1] == 'E');
            track_server_msg(t, 'Z', c[1]);
            c++;
        } else {
            track_server_msg(t, *c, 0);
        }
    }
}

/* Macros rather than functions, so a failure names the caller's line. */
#define expect_state(t, pending, idle)                          \
    do {                                                        \
        assert_int_equal(track_pending(t), (pending));          \
        assert_int_equal(track_idle(t), (idle));                \
    } while (0)

#define expect_head(t, want)                                    \
    do {                                                        \
        assert_non_null(track_head(t));                         \
        assert_int_equal(track_head(t)->kind, (want));          \
    } while (0)

/* Idle, empty, and no slip counted. */
#define expect_clean(t)                                         \
    do {                                                        \
        expect_state(t, 0, true);                               \
        assert_null(track_head(t));                             \
        assert_false((t)->copy_in);                             \
        assert_int_equal((t)->desyncs, 0);                      \
    } while (0)

static int setup(void **state)
{
    struct track *t = malloc(sizeof(*t));
    if (!t)
        return -1;
    track_init(t, NULL, NULL);
    *state = t;
    return 0;
}

static int teardown(void **state)
{
    struct track *t = *state;
    track_free(t);
    free(t);
    return 0;
}

/* ---- basics ---------------------------------------------------------- */

static void test_init_is_idle(void **state)
{
    struct track *t = *state;
    expect_clean(t);
    assert_false(t->batch_open);
}

static void test_reset(void **state)
{
    struct track *t = *state;
    client(t, "PBES");
    server(t, "1");
    client(t, "P");
    track_reset(t);
    expect_clean(t);
    assert_false(t->batch_open);
    client(t, "Q");
    server(t, "CZI");
    expect_clean(t);
}

/* Terminate, Flush and stray CopyData/CopyDone get no answer of their own.
 * (Whether a lone Flush opens a batch is left open: the server counts it as
 * an extended-protocol message, so only the queue is checked here.) */
static void test_unanswered_client_messages(void **state)
{
    struct track *t = *state;
    client(t, "dc");
    expect_state(t, 0, true);
    client(t, "H");
    assert_int_equal(track_pending(t), 0);
    client(t, "Q");
    client(t, "H");
    assert_int_equal(track_pending(t), 1);
    expect_head(t, TRACK_QUERY);
    server(t, "CZI");
    assert_int_equal(track_pending(t), 0);
    assert_int_equal(t->desyncs, 0);
    client(t, "X");
    assert_int_equal(track_pending(t), 0);
}

/* ---- simple query protocol ------------------------------------------ */

static void test_simple_query(void **state)
{
    struct track *t = *state;
    client(t, "Q");
    expect_state(t, 1, false);
    expect_head(t, TRACK_QUERY);
    server(t, "T");
    expect_state(t, 1, false);
    server(t, "DD");
    expect_state(t, 1, false);
    server(t, "C");
    expect_state(t, 1, false);
    expect_head(t, TRACK_QUERY);
    server(t, "ZI");
    expect_clean(t);
}

/* "SELECT 1; SELECT 2; COMMIT": several CommandCompletes, one ReadyForQuery. */
static void test_simple_multi_statement(void **state)
{
    struct track *t = *state;
    client(t, "Q");
    server(t, "TDC");
    server(t, "TDDC");
    server(t, "C");
    expect_state(t, 1, false);
    expect_head(t, TRACK_QUERY);
    server(t, "ZI");
    expect_clean(t);
}

/* In the simple protocol an error does not skip the next Query. */
static void test_simple_query_error(void **state)
{
    struct track *t = *state;
    client(t, "QQ");
    expect_state(t, 2, false);
    server(t, "E");
    expect_state(t, 2, false);
    server(t, "ZI");
    expect_state(t, 1, false);
    expect_head(t, TRACK_QUERY);
    server(t, "CZI");
    expect_clean(t);
}

/* An empty query string gets EmptyQueryResponse in place of a result. */
static void test_simple_empty_query(void **state)
{
    struct track *t = *state;
    client(t, "Q");
    server(t, "I");
    expect_state(t, 1, false);
    server(t, "ZI");
    expect_clean(t);
}

static void test_transaction_status(void **state)
{
    struct track *t = *state;
    client(t, "Q"); /* BEGIN */
    assert_false(track_quiet(t));
    server(t, "CZT");
    expect_state(t, 0, false);
    assert_int_equal(t->txn_status, 'T');
    /* Inside the block, between requests: quiet, but not idle. */
    assert_true(track_quiet(t));
    client(t, "Q"); /* a failing statement */
    server(t, "EZE");
    expect_state(t, 0, false);
    assert_int_equal(t->txn_status, 'E');
    client(t, "Q"); /* ROLLBACK */
    server(t, "CZI");
    expect_clean(t);
    assert_int_equal(t->txn_status, 'I');
}

/* ---- extended query protocol ---------------------------------------- */

static void test_extended_select(void **state)
{
    struct track *t = *state;
    client(t, "PBDES");
    expect_state(t, 5, false);
    expect_head(t, TRACK_PARSE);
    server(t, "1");
    expect_state(t, 4, false);
    expect_head(t, TRACK_BIND);
    server(t, "2");
    expect_state(t, 3, false);
    expect_head(t, TRACK_DESCRIBE);
    server(t, "T");
    expect_state(t, 2, false);
    expect_head(t, TRACK_EXECUTE);
    server(t, "DDD");
    expect_state(t, 2, false);
    server(t, "C");
    expect_state(t, 1, false);
    expect_head(t, TRACK_SYNC);
    server(t, "ZI");
    expect_clean(t);
}

/* Describe of a portal that returns no rows (an INSERT) answers NoData. */
static void test_extended_insert_nodata(void **state)
{
    struct track *t = *state;
    client(t, "PBDES");
    server(t, "12n");
    expect_state(t, 2, false);
    expect_head(t, TRACK_EXECUTE);
    server(t, "C");
    expect_head(t, TRACK_SYNC);
    server(t, "ZI");
    expect_clean(t);
}

/* Describe of a statement: ParameterDescription, then RowDescription or
 * NoData; only the second completes it. */
static void test_describe_statement(void **state)
{
    struct track *t = *state;
    client(t, "PDS");
    server(t, "1");
    expect_head(t, TRACK_DESCRIBE);
    server(t, "t");
    expect_state(t, 2, false);
    expect_head(t, TRACK_DESCRIBE);
    server(t, "T");
    expect_state(t, 1, false);
    expect_head(t, TRACK_SYNC);
    server(t, "ZI");
    expect_clean(t);

    client(t, "PDS");
    server(t, "1t");
    expect_state(t, 2, false);
    server(t, "n");
    expect_state(t, 1, false);
    expect_head(t, TRACK_SYNC);
    server(t, "ZI");
    expect_clean(t);
}

static void test_close(void **state)
{
    struct track *t = *state;
    client(t, "CCS"); /* close a statement and a portal */
    expect_state(t, 3, false);
    expect_head(t, TRACK_CLOSE);
    server(t, "3");
    expect_state(t, 2, false);
    expect_head(t, TRACK_CLOSE);
    server(t, "3");
    expect_head(t, TRACK_SYNC);
    server(t, "ZI");
    expect_clean(t);
}

/* Execute with a row limit ends with PortalSuspended. */
static void test_portal_suspended(void **state)
{
    struct track *t = *state;
    client(t, "BES");
    server(t, "2DD");
    expect_state(t, 2, false);
    server(t, "s");
    expect_state(t, 1, false);
    expect_head(t, TRACK_SYNC);
    server(t, "ZT");
    expect_state(t, 0, false);
    client(t, "ES");
    server(t, "D");
    expect_head(t, TRACK_EXECUTE);
    server(t, "C");
    expect_head(t, TRACK_SYNC);
    server(t, "ZI");
    expect_clean(t);
}

static void test_execute_empty_query(void **state)
{
    struct track *t = *state;
    client(t, "PBES");
    server(t, "12");
    expect_head(t, TRACK_EXECUTE);
    server(t, "I");
    expect_state(t, 1, false);
    expect_head(t, TRACK_SYNC);
    server(t, "ZI");
    expect_clean(t);
}

static void test_function_call(void **state)
{
    struct track *t = *state;
    client(t, "F");
    expect_state(t, 1, false);
    expect_head(t, TRACK_FUNCALL);
    server(t, "V");
    expect_state(t, 1, false);
    server(t, "ZI");
    expect_clean(t);

    client(t, "F");
    server(t, "E");
    expect_state(t, 1, false);
    expect_head(t, TRACK_FUNCALL);
    server(t, "ZI");
    expect_clean(t);
}

/* Extended messages without a Sync leave a batch open: not idle, even when
 * every one of them has been answered. */
static void test_batch_open(void **state)
{
    struct track *t = *state;
    client(t, "P");
    server(t, "1");
    expect_state(t, 0, false);
    assert_true(t->batch_open);
    assert_false(track_quiet(t));
    client(t, "H"); /* Flush: no answer of its own, batch still open */
    expect_state(t, 0, false);
    client(t, "BE");
    server(t, "2C");
    expect_state(t, 0, false);
    client(t, "S");
    expect_state(t, 1, false);
    assert_false(t->batch_open);
    server(t, "ZI");
    expect_clean(t);
}

static void test_async_messages(void **state)
{
    struct track *t = *state;
    /* NoticeResponse, ParameterStatus, NotificationResponse while idle. */
    server(t, "NSA");
    expect_clean(t);

    client(t, "Q");
    server(t, "NSA");
    expect_state(t, 1, false);
    expect_head(t, TRACK_QUERY);
    server(t, "TNDCA");
    expect_state(t, 1, false);
    server(t, "ZI");
    expect_clean(t);

    client(t, "PBES");
    server(t, "1N2S");
    expect_state(t, 2, false);
    expect_head(t, TRACK_EXECUTE);
    server(t, "ACZI");
    expect_clean(t);
    assert_int_equal(t->txn_status, 'I');
}

/* ---- errors in the extended protocol -------------------------------- */

/* After an error the server skips to Sync, across several Executes. */
static void test_error_skips_to_sync(void **state)
{
    struct track *t = *state;
    client(t, "PBEPBES");
    expect_state(t, 7, false);
    server(t, "1");
    expect_state(t, 6, false);
    server(t, "E"); /* Bind fails: B E P B E are skipped */
    expect_state(t, 1, false);
    expect_head(t, TRACK_SYNC);
    server(t, "ZI");
    expect_clean(t);
}

/* ... but not past that Sync: the next batch is answered normally. */
static void test_error_stops_at_sync(void **state)
{
    struct track *t = *state;
    client(t, "PBESPBES");
    server(t, "E"); /* Parse fails */
    expect_state(t, 5, false);
    expect_head(t, TRACK_SYNC);
    server(t, "ZI");
    expect_state(t, 4, false);
    expect_head(t, TRACK_PARSE);
    server(t, "12C");
    expect_head(t, TRACK_SYNC);
    server(t, "ZI");
    expect_clean(t);
}

/* The implicit COMMIT at Sync can fail (a deferred constraint): the error
 * then answers nothing, and ReadyForQuery still ends the Sync. */
static void test_error_at_sync(void **state)
{
    struct track *t = *state;
    client(t, "PBES");
    server(t, "12C");
    expect_state(t, 1, false);
    server(t, "E");
    expect_state(t, 1, false);
    expect_head(t, TRACK_SYNC);
    server(t, "ZI");
    expect_clean(t);
}

/* Messages the client sends after the error but before its Sync are
 * skipped by the server too, though the proxy sees them after the error. */
static void test_error_then_more_client_messages(void **state)
{
    struct track *t = *state;
    client(t, "PBE");
    server(t, "1E");
    expect_state(t, 0, false);
    client(t, "PBES");
    server(t, "ZI");
    expect_clean(t);
}

/* The server skips a Query, a FunctionCall and COPY messages too after an
 * extended error, up to the Sync: the client pipelined them before it
 * could know of the error. */
static void test_error_skips_query_in_batch(void **state)
{
    struct track *t = *state;
    client(t, "PBEQFQdcBS");
    server(t, "12");
    assert_true(track_error_skips(t));
    server(t, "E");
    expect_state(t, 1, false);
    expect_head(t, TRACK_SYNC);
    server(t, "ZI");
    expect_clean(t);
    /* A Query's own error skips nothing. */
    client(t, "QPBES");
    assert_false(track_error_skips(t));
    server(t, "EZI");
    expect_head(t, TRACK_PARSE);
    server(t, "12CZI");
    expect_clean(t);
}

/* 1000 pipelined batches; three of them fail at Parse, Bind and Execute. */
static void test_pipeline_1000_with_errors(void **state)
{
    struct track *t = *state;
    static const char answers[] = "12C";
    static const enum track_kind kinds[] = { TRACK_PARSE, TRACK_BIND, TRACK_EXECUTE };
    const size_t batches = 1000;
    size_t pending = 0;

    for (size_t i = 0; i < batches; i++) {
        client(t, "PBES");
        pending += 4;
        assert_int_equal(track_pending(t), pending);
    }
    for (size_t i = 0; i < batches; i++) {
        /* Which of P, B, E fails in this batch; 3 for none. */
        size_t fail = i == 300 ? 0 : i == 500 ? 2 : i == 700 ? 1 : 3;
        for (size_t m = 0; m < 3; m++) {
            expect_head(t, kinds[m]);
            if (m == fail) {
                server(t, "E");
                pending -= 3 - m;
                assert_int_equal(track_pending(t), pending);
                break;
            }
            if (m == 2)
                server(t, "D");
            server(t, (char[]){ answers[m], 0 });
            pending--;
            assert_int_equal(track_pending(t), pending);
        }
        expect_head(t, TRACK_SYNC);
        server(t, "ZI");
        pending--;
        expect_state(t, pending, pending == 0);
    }
    expect_clean(t);
}

/* ---- ReadyForQuery as ground truth ------------------------------------ */

static void test_ready_with_empty_queue(void **state)
{
    struct track *t = *state;
    server(t, "ZI");
    expect_state(t, 0, true);
    assert_int_equal(t->desyncs, 1);
    assert_null(track_head(t));
    /* Business as usual afterwards. */
    client(t, "Q");
    server(t, "CZI");
    expect_state(t, 0, true);
    assert_int_equal(t->desyncs, 1);
}

/* A ReadyForQuery that arrives while the queue still expects other answers
 * ends the Sync it belongs to, and the slip is counted. */
static void test_ready_skips_answers(void **state)
{
    struct track *t = *state;
    client(t, "PBES");
    server(t, "ZI");
    expect_state(t, 0, true);
    assert_int_equal(t->desyncs, 1);
}

/* ---- growth ----------------------------------------------------------- */

static void test_growth_10000(void **state)
{
    struct track *t = *state;
    const size_t n = 10000;
    for (size_t i = 0; i < n; i++)
        client(t, "Q");
    expect_state(t, n, false);
    for (size_t i = 0; i < n; i++) {
        expect_head(t, TRACK_QUERY);
        server(t, "TDCZI");
        assert_int_equal(track_pending(t), n - 1 - i);
    }
    expect_clean(t);
}

static void answer_batch(struct track *t)
{
    static const char answers[] = "12nCZ";
    static const enum track_kind kinds[] = {
        TRACK_PARSE, TRACK_BIND, TRACK_DESCRIBE, TRACK_EXECUTE, TRACK_SYNC,
    };
    for (size_t m = 0; m < 5; m++) {
        expect_head(t, kinds[m]);
        if (answers[m] == 'Z')
            server(t, "ZI");
        else
            server(t, (char[]){ answers[m], 0 });
    }
}

/* The ring grows while its head has moved: order must survive the copy. */
static void test_growth_wrapped(void **state)
{
    struct track *t = *state;
    size_t sent = 0, answered = 0;
    for (size_t round = 0; round < 6000; round++) {
        client(t, "PBDES");
        sent++;
        if (round % 2) {
            answer_batch(t);
            answered++;
        }
        assert_int_equal(track_pending(t), 5 * (sent - answered));
    }
    while (answered < sent) {
        answer_batch(t);
        answered++;
        assert_int_equal(track_pending(t), 5 * (sent - answered));
    }
    expect_clean(t);
}

/* ---- COPY ------------------------------------------------------------- */

static void test_copy_in_simple(void **state)
{
    struct track *t = *state;
    client(t, "Q");
    server(t, "G");
    assert_true(t->copy_in);
    expect_state(t, 1, false);
    client(t, "dd");
    expect_state(t, 1, false);
    client(t, "c");
    expect_state(t, 2, false);
    server(t, "C");
    expect_state(t, 1, false);
    expect_head(t, TRACK_QUERY);
    server(t, "ZI");
    expect_clean(t);
}

/* The copy waits for the client until its CopyDone or CopyFail is sent,
 * whether the server has started it yet or not. */
static void test_copy_awaits_client(void **state)
{
    struct track *t = *state;
    client(t, "Q");
    assert_false(track_copy_awaits_client(t));
    server(t, "G");
    assert_true(track_copy_awaits_client(t));
    client(t, "d");
    assert_true(track_copy_awaits_client(t));
    client(t, "c");
    assert_false(track_copy_awaits_client(t));
    server(t, "CZI");
    client(t, "QdfQ");
    server(t, "G");
    assert_false(track_copy_awaits_client(t));
    server(t, "EZI");
    assert_false(track_copy_awaits_client(t));
    server(t, "CZI");
    expect_clean(t);
}

/* During COPY FROM STDIN the server ignores Sync and Flush. */
static void test_copy_in_ignores_sync_and_flush(void **state)
{
    struct track *t = *state;
    client(t, "Q");
    server(t, "G");
    client(t, "dSHdc");
    server(t, "C");
    expect_state(t, 1, false);
    server(t, "ZI");
    expect_clean(t);
}

/* libpq's PQexecParams("COPY ... FROM STDIN"): the Sync sent along with
 * the Execute is swallowed by the COPY, so after CopyDone libpq sends a
 * second Sync, and only that one is answered. */
static void test_copy_in_extended_libpq(void **state)
{
    struct track *t = *state;
    client(t, "PBDES");
    expect_state(t, 5, false);
    server(t, "12n");
    expect_state(t, 2, false);
    expect_head(t, TRACK_EXECUTE);
    server(t, "G");
    assert_true(t->copy_in);
    client(t, "ddcS");
    server(t, "C");
    expect_state(t, 1, false);
    expect_head(t, TRACK_SYNC);
    server(t, "ZI");
    expect_clean(t);
}

/* The same, with the first Sync reaching the proxy after CopyInResponse. */
static void test_copy_in_extended_late_sync(void **state)
{
    struct track *t = *state;
    client(t, "PBDE");
    server(t, "12nG");
    client(t, "SddcS");
    server(t, "C");
    expect_state(t, 1, false);
    expect_head(t, TRACK_SYNC);
    server(t, "ZI");
    expect_clean(t);
}

/* The Sync that ended the COPY's batch goes to the copy: once the copy
 * is over (here failed by the client), no Sync is outstanding until the
 * client sends the one behind it. */
static void test_copy_in_swallows_sync(void **state)
{
    struct track *t = *state;
    client(t, "PBES");
    assert_true(track_sync_pending(t));
    server(t, "12G");
    client(t, "df");
    assert_true(track_sync_pending(t));
    server(t, "E");
    assert_false(t->copy_in);
    assert_false(track_sync_pending(t));
    client(t, "S");
    assert_true(track_sync_pending(t));
    server(t, "ZI");
    expect_clean(t);
}

/* Requests are numbered in the order they are sent; a request counts as
 * answered once it left the queue, answered or skipped. */
static void test_answered_through(void **state)
{
    struct track *t = *state;
    assert_true(track_answered_through(t, 0));
    uint64_t first = track_next_serial(t);
    client(t, "Q");
    uint64_t second = track_next_serial(t);
    assert_int_equal(second, first + 1);
    client(t, "QPBES");
    assert_false(track_answered_through(t, first));
    server(t, "CZI");
    assert_true(track_answered_through(t, first));
    assert_false(track_answered_through(t, second));
    server(t, "EZI1E");
    /* The error skipped the Bind and Execute: only the Sync is left. */
    assert_true(track_answered_through(t, second + 3));
    assert_false(track_answered_through(t, second + 4));
    server(t, "ZI");
    assert_true(track_answered_through(t, second + 4));
    expect_clean(t);
}

/* A client that sends the data right behind the COPY command, without
 * waiting for CopyInResponse, and goes on. */
static void test_copy_in_pipelined(void **state)
{
    struct track *t = *state;
    client(t, "QddcPBES");
    server(t, "G");
    server(t, "C");
    expect_state(t, 5, false);
    expect_head(t, TRACK_QUERY);
    server(t, "ZI12CZI");
    expect_clean(t);
    /* The same in the extended protocol, with libpq's Sync after Execute. */
    client(t, "PBESdcSQ");
    server(t, "12GC");
    expect_head(t, TRACK_SYNC);
    server(t, "ZIZI");
    expect_clean(t);
}

/* A COPY command that fails before reading data (in a failed block, or
 * a missing table): the server ignores the data that follows, CopyDone
 * included, without a reply. */
static void test_copy_in_refused(void **state)
{
    struct track *t = *state;
    client(t, "QdcQ");
    server(t, "EZE");
    expect_state(t, 1, false);
    expect_head(t, TRACK_QUERY);
    server(t, "CZI");
    expect_clean(t);
    /* Skipped with its batch, after an extended error. */
    client(t, "PBEQdcS");
    server(t, "1E");
    expect_head(t, TRACK_SYNC);
    server(t, "ZI");
    expect_clean(t);
}

/* The server fails the COPY (bad data); the client's CopyDone arrives after
 * the error and is dropped by the server unanswered. */
static void test_copy_in_error_simple(void **state)
{
    struct track *t = *state;
    client(t, "Q");
    server(t, "G");
    client(t, "d");
    server(t, "E");
    assert_false(t->copy_in);
    expect_state(t, 1, false);
    client(t, "c");
    server(t, "ZI");
    expect_clean(t);
}

/* The same race the other way round: CopyDone passes the error. */
static void test_copy_in_error_simple_race(void **state)
{
    struct track *t = *state;
    client(t, "Q");
    server(t, "G");
    client(t, "dc");
    server(t, "E");
    expect_state(t, 1, false);
    expect_head(t, TRACK_QUERY);
    server(t, "ZI");
    expect_clean(t);
}

static void test_copy_in_error_extended(void **state)
{
    struct track *t = *state;
    client(t, "PBES");
    server(t, "12G");
    client(t, "d");
    server(t, "E");
    assert_false(t->copy_in);
    client(t, "cS");
    server(t, "ZI");
    expect_clean(t);
}

static void test_copy_in_error_extended_race(void **state)
{
    struct track *t = *state;
    client(t, "PBES");
    server(t, "12G");
    client(t, "dcS");
    server(t, "E");
    expect_state(t, 1, false);
    expect_head(t, TRACK_SYNC);
    server(t, "ZI");
    expect_clean(t);
}

/* After an error the server discards frontend messages until Sync; it does
 * not need a CopyDone first, and that Sync is answered. */
static void test_copy_in_error_sync_without_copydone(void **state)
{
    struct track *t = *state;
    client(t, "PBES");
    server(t, "12G");
    client(t, "d");
    server(t, "E");
    client(t, "S");
    expect_state(t, 1, false);
    expect_head(t, TRACK_SYNC);
    server(t, "ZI");
    expect_clean(t);
    client(t, "PBES");
    server(t, "12CZI");
    expect_clean(t);
}

/* A simple-protocol client may stop after the error without a CopyDone:
 * once ReadyForQuery has come the session is back to normal. */
static void test_copy_in_error_simple_no_copydone(void **state)
{
    struct track *t = *state;
    client(t, "Q");
    server(t, "G");
    client(t, "d");
    server(t, "EZI");
    expect_clean(t);
    client(t, "PBES");
    server(t, "12CZI");
    expect_clean(t);
}

/* CopyFail: the server answers with an error. */
static void test_copy_fail(void **state)
{
    struct track *t = *state;
    client(t, "Q");
    server(t, "G");
    client(t, "df");
    server(t, "E");
    expect_state(t, 1, false);
    expect_head(t, TRACK_QUERY);
    server(t, "ZI");
    expect_clean(t);

    client(t, "PBES");
    server(t, "12G");
    client(t, "dfS");
    server(t, "E");
    expect_state(t, 1, false);
    expect_head(t, TRACK_SYNC);
    server(t, "ZI");
    expect_clean(t);
}

/* COPY TO STDOUT: the server's CopyDone is not the client's. */
static void test_copy_out(void **state)
{
    struct track *t = *state;
    client(t, "Q");
    server(t, "Hddc");
    assert_false(t->copy_in);
    expect_state(t, 1, false);
    server(t, "C");
    expect_state(t, 1, false);
    server(t, "ZI");
    expect_clean(t);

    client(t, "PBDES");
    server(t, "12n");
    expect_head(t, TRACK_EXECUTE);
    server(t, "Hdddc");
    expect_state(t, 2, false);
    server(t, "C");
    expect_state(t, 1, false);
    expect_head(t, TRACK_SYNC);
    server(t, "ZI");
    expect_clean(t);
}

/* ---- notes ------------------------------------------------------------ */

/* Notes are bytes of this array, so that count_free can tell which one it
 * was given; freed[i] counts the calls for note i. */
#define NNOTES 32
static char notes[NNOTES];
static int freed[NNOTES];

static void count_free(void *owner, void *note)
{
    (void)owner;
    ptrdiff_t i = (char *)note - notes;
    assert_true(i >= 0 && i < NNOTES);
    freed[i]++;
}

static int setup_notes(void **state)
{
    memset(freed, 0, sizeof(freed));
    struct track *t = malloc(sizeof(*t));
    if (!t)
        return -1;
    track_init(t, count_free, NULL);
    *state = t;
    return 0;
}

/* Client messages, each carrying the next note. */
static void client_noted(struct track *t, const char *types, int *next)
{
    for (const char *c = types; *c; c++) {
        assert_true(*next < NNOTES);
        assert_true(track_client_msg(t, *c, &notes[(*next)++]));
    }
}

/* want[i] is how often note i must have been freed so far ('0' or '1');
 * notes past the end of want must not have been. */
#define expect_freed(want)                                                      \
    do {                                                                        \
        const char *want_ = (want);                                             \
        for (int i_ = 0; i_ < NNOTES; i_++) {                                   \
            int expected_ = i_ < (int)strlen(want_) ? want_[i_] - '0' : 0;      \
            if (freed[i_] != expected_)                                         \
                fail_msg("note %d freed %d times, expected %d", i_, freed[i_],  \
                         expected_);                                            \
        }                                                                       \
    } while (0)

/* Notes 0..n-1 freed once each, the rest not at all. */
#define expect_upto(n)                                                          \
    do {                                                                        \
        for (int i_ = 0; i_ < NNOTES; i_++) {                                   \
            if (freed[i_] != (i_ < (n)))                                        \
                fail_msg("note %d freed %d times, expected %d", i_, freed[i_],  \
                         i_ < (n));                                             \
        }                                                                       \
    } while (0)

/* Each request's note goes when the message that ends it arrives, not
 * before (RowDescription, DataRow, CommandComplete of a Query end nothing). */
static void test_notes_freed_when_answered(void **state)
{
    struct track *t = *state;
    int next = 0;

    client_noted(t, "PBDES", &next);
    expect_upto(0);
    server(t, "1");
    expect_upto(1);
    server(t, "2");
    expect_upto(2);
    server(t, "n");
    expect_upto(3);
    server(t, "DC");
    expect_upto(4);
    server(t, "ZI");
    expect_upto(5);

    client_noted(t, "Q", &next);
    server(t, "TDC");
    expect_upto(5);
    server(t, "ZI");
    expect_upto(6);

    /* Describe of a statement: ParameterDescription is not the end. */
    client_noted(t, "PDCS", &next);
    server(t, "1t");
    expect_upto(7);
    server(t, "T3");
    expect_upto(9);
    server(t, "ZI");
    expect_upto(10);

    client_noted(t, "F", &next);
    server(t, "VZI");
    expect_upto(11);
    expect_clean(t);
}

/* A message that makes no request has its note freed at once. */
static void test_notes_freed_without_request(void **state)
{
    struct track *t = *state;
    int next = 0;

    client_noted(t, "dcH", &next); /* stray CopyData and CopyDone, Flush */
    expect_upto(3);
    client_noted(t, "Q", &next);
    client_noted(t, "Z", &next); /* unknown */
    expect_freed("11101");
    client_noted(t, "X", &next);
    expect_freed("111011");
    server(t, "CZI");
    expect_upto(6);
    /* No note at all is fine. */
    assert_true(track_client_msg(t, 'd', NULL));
    assert_true(track_client_msg(t, 'Q', NULL));
    server(t, "CZI");
    /* Not expect_clean(): whether the Flush left a batch open is not the
     * point here (see test_unanswered_client_messages). */
    assert_int_equal(track_pending(t), 0);
    assert_int_equal(t->desyncs, 0);
}

/* After an extended error the server discards everything up to Sync: the
 * queued requests it skips and the messages still to come are freed. */
static void test_notes_freed_skipping_to_sync(void **state)
{
    struct track *t = *state;
    int next = 0;

    client_noted(t, "PBE", &next);
    server(t, "1E");
    expect_upto(3);
    assert_true(t->skip_to_sync);
    client_noted(t, "PBEHd", &next);
    expect_upto(8);
    client_noted(t, "S", &next);
    expect_upto(8);
    server(t, "ZI");
    expect_upto(9);
    expect_clean(t);

    /* Errors with the Sync already queued. */
    client_noted(t, "PBESQ", &next);
    server(t, "1E");
    expect_upto(12);
    server(t, "ZI");
    expect_upto(13);
    server(t, "CZI");
    expect_upto(14);
    expect_clean(t);
}

static void test_notes_freed_on_reset_and_free(void **state)
{
    struct track *t = *state;
    int next = 0;

    client_noted(t, "PBESQ", &next);
    server(t, "1");
    expect_upto(1);
    track_reset(t);
    expect_upto(5);
    expect_clean(t);

    /* Wrapped round the ring, grown, then freed. */
    for (int i = 0; i < 20; i++) {
        client_noted(t, "Q", &next);
        server(t, "CZI");
    }
    expect_upto(25);
    client_noted(t, "PBDESQ", &next);
    assert_int_equal(next, 31);
    track_free(t);
    expect_upto(31);
    /* track_free leaves an empty queue that still frees its notes. */
    expect_clean(t);
    client_noted(t, "d", &next);
    expect_upto(32);
}

/* The requests a COPY FROM STDIN swallows: the Syncs the server ignored
 * and the CopyDone, when the COPY ends well or badly. */
static void test_notes_freed_by_copy_in(void **state)
{
    struct track *t = *state;
    int next = 0;

    client_noted(t, "Q", &next);
    server(t, "G");
    client_noted(t, "d", &next);
    expect_freed("01");
    client_noted(t, "SHdc", &next);
    expect_freed("01011");
    server(t, "C");
    expect_freed("011111");
    server(t, "ZI");
    expect_upto(6);
    expect_clean(t);

    /* The server fails the COPY before the CopyDone (libpq's extended
     * form): the Execute and the Sync sent with it go at the error, the
     * late CopyDone at once. */
    client_noted(t, "PBES", &next);
    server(t, "12G");
    expect_upto(8);
    client_noted(t, "d", &next);
    server(t, "E");
    expect_upto(11);
    client_noted(t, "cS", &next);
    expect_upto(12);
    server(t, "ZI");
    expect_upto(13);
    expect_clean(t);

    /* The CopyDone passed the error. */
    client_noted(t, "Q", &next);
    server(t, "G");
    client_noted(t, "dc", &next);
    server(t, "E");
    expect_freed("1111111111111011");
    server(t, "ZI");
    expect_upto(16);
    expect_clean(t);
}

/* A ReadyForQuery that finds answers missing drops those requests. */
static void test_notes_freed_on_slip(void **state)
{
    struct track *t = *state;
    int next = 0;

    client_noted(t, "PBESQ", &next);
    server(t, "ZI");
    expect_upto(4);
    assert_int_equal(t->desyncs, 1);
    server(t, "ZI");
    expect_upto(5);
    expect_state(t, 0, true);
    assert_int_equal(t->desyncs, 1);
}

/* ---- injected requests ------------------------------------------------ */

static void test_inject_query(void **state)
{
    struct track *t = *state;
    int next = 0;

    assert_true(track_idle(t));
    assert_true(track_inject(t, 'Q', 7));
    expect_state(t, 1, false);
    expect_head(t, TRACK_QUERY);
    assert_true(track_head(t)->injected);
    assert_int_equal(track_head(t)->tag, 7);
    assert_null(track_head(t)->note);

    /* The client goes on meanwhile; its requests queue behind. */
    client_noted(t, "PBES", &next);
    expect_head(t, TRACK_QUERY);
    assert_true(track_head(t)->injected);
    server(t, "TDDC");
    expect_upto(0);
    server(t, "ZI");
    expect_upto(0);
    expect_head(t, TRACK_PARSE);
    assert_false(track_head(t)->injected);
    server(t, "12");
    expect_head(t, TRACK_EXECUTE);
    assert_false(track_head(t)->injected);
    server(t, "C");
    expect_head(t, TRACK_SYNC);
    assert_false(track_head(t)->injected);
    server(t, "ZI");
    expect_upto(4);
    expect_clean(t);
}

/* An injected Query then the client's: the replies pop in order, and an
 * error in the proxy's own query does not disturb the client's. */
static void test_inject_then_client_query(void **state)
{
    struct track *t = *state;
    int next = 0;

    assert_true(track_inject(t, 'Q', 1));
    client_noted(t, "QQ", &next);
    expect_state(t, 3, false);
    server(t, "EZI");
    expect_upto(0);
    expect_head(t, TRACK_QUERY);
    assert_false(track_head(t)->injected);
    server(t, "CZI");
    expect_upto(1);
    expect_head(t, TRACK_QUERY);
    assert_false(track_head(t)->injected);
    server(t, "CZT");
    expect_upto(2);
    expect_state(t, 0, false);
    assert_int_equal(t->txn_status, 'T');

    /* A new injection after idle again. */
    client(t, "Q");
    server(t, "CZI");
    assert_true(track_inject(t, 'Q', 2));
    assert_true(track_head(t)->injected);
    assert_int_equal(track_head(t)->tag, 2);
    server(t, "CZI");
    expect_clean(t);
}

/* The proxy's own extended messages mid-batch: each carries its tag and
 * pops with its reply, between the client's. */
static void test_inject_extended_midbatch(void **state)
{
    struct track *t = *state;
    int next = 0;

    client_noted(t, "PB", &next);
    const char *mine = "PBECC";
    for (const char *m = mine; *m; m++)
        assert_true(track_inject(t, *m, 3));
    client_noted(t, "ES", &next);
    server(t, "12");
    expect_upto(2);
    for (const char *r = "12C33"; *r; r++) {
        assert_true(track_head(t)->injected);
        assert_int_equal(track_head(t)->tag, 3);
        server(t, (char[]){ *r, '\0' });
    }
    expect_head(t, TRACK_EXECUTE);
    assert_false(track_head(t)->injected);
    server(t, "C");
    server(t, "ZI");
    expect_upto(4);
    expect_clean(t);
}

#define TRACK_TEST(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
#define NOTES_TEST(f) cmocka_unit_test_setup_teardown(f, setup_notes, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        TRACK_TEST(test_init_is_idle),
        TRACK_TEST(test_reset),
        TRACK_TEST(test_unanswered_client_messages),
        TRACK_TEST(test_simple_query),
        TRACK_TEST(test_simple_multi_statement),
        TRACK_TEST(test_simple_query_error),
        TRACK_TEST(test_simple_empty_query),
        TRACK_TEST(test_transaction_status),
        TRACK_TEST(test_extended_select),
        TRACK_TEST(test_extended_insert_nodata),
        TRACK_TEST(test_describe_statement),
        TRACK_TEST(test_close),
        TRACK_TEST(test_portal_suspended),
        TRACK_TEST(test_execute_empty_query),
        TRACK_TEST(test_function_call),
        TRACK_TEST(test_batch_open),
        TRACK_TEST(test_async_messages),
        TRACK_TEST(test_error_skips_to_sync),
        TRACK_TEST(test_error_stops_at_sync),
        TRACK_TEST(test_error_at_sync),
        TRACK_TEST(test_error_then_more_client_messages),
        TRACK_TEST(test_error_skips_query_in_batch),
        TRACK_TEST(test_pipeline_1000_with_errors),
        TRACK_TEST(test_ready_with_empty_queue),
        TRACK_TEST(test_ready_skips_answers),
        TRACK_TEST(test_growth_10000),
        TRACK_TEST(test_growth_wrapped),
        TRACK_TEST(test_copy_awaits_client),
        TRACK_TEST(test_copy_in_simple),
        TRACK_TEST(test_copy_in_ignores_sync_and_flush),
        TRACK_TEST(test_copy_in_extended_libpq),
        TRACK_TEST(test_copy_in_extended_late_sync),
        TRACK_TEST(test_copy_in_swallows_sync),
        TRACK_TEST(test_answered_through),
        TRACK_TEST(test_copy_in_pipelined),
        TRACK_TEST(test_copy_in_refused),
        TRACK_TEST(test_copy_in_error_simple),
        TRACK_TEST(test_copy_in_error_simple_race),
        TRACK_TEST(test_copy_in_error_extended),
        TRACK_TEST(test_copy_in_error_extended_race),
        TRACK_TEST(test_copy_in_error_sync_without_copydone),
        TRACK_TEST(test_copy_in_error_simple_no_copydone),
        TRACK_TEST(test_copy_fail),
        TRACK_TEST(test_copy_out),
        NOTES_TEST(test_notes_freed_when_answered),
        NOTES_TEST(test_notes_freed_without_request),
        NOTES_TEST(test_notes_freed_skipping_to_sync),
        NOTES_TEST(test_notes_freed_on_reset_and_free),
        NOTES_TEST(test_notes_freed_by_copy_in),
        NOTES_TEST(test_notes_freed_on_slip),
        NOTES_TEST(test_inject_query),
        NOTES_TEST(test_inject_then_client_query),
        NOTES_TEST(test_inject_extended_midbatch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
