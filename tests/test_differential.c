/*
 * The proxy against PostgreSQL itself: pseudo-random sequences of frontend
 * messages (simple and extended queries, pipelines that fail midway, Flush,
 * Executes with a row limit, COPY both ways, transaction blocks, savepoints,
 * notifications, prepared statements by protocol and by SQL, declared
 * parameter types, binary values, function calls) go both
 * straight to the server and through idemproxy, and the two streams of
 * replies must be the same, message for message. The proxy gets a
 * sequence now and then in pieces, with pauses between them, or batch by
 * batch, each once the replies before it are in (send_in_pieces).
 *
 * Each side has a database of its own with the same tables: diff_reg is
 * registered with the proxy (its INSERTs are rewritten, simple ones run as
 * cached statements, those in transaction blocks guarded), diff_plain is
 * not. Every key an INSERT writes is new, so nothing the proxy does may
 * show: a difference is a fault in its framing, request tracking, rewrite
 * seam or statement cache. What any two sessions differ in is taken out
 * before comparing: the table OIDs in RowDescription, the backend PID of a
 * NotificationResponse, the server's source location in an error. One run
 * puts the proxied sessions and the proxy's server connections on TLS. One
 * reuses a few keys instead, and sends the server the ON CONFLICT clause
 * written by hand: the application unchanged behind the proxy against the
 * application rewritten.
 *
 * A failure prints the seed, the sequence as sent and both sides' replies.
 * IDEM_DIFF_SEQUENCES (default 300) sets the sequences per seed;
 * IDEM_DIFF_SEED_SET=N (default 0) runs other seeds than scripts/check
 * does, each test's own plus 100 * N (a failure names the seed it ran);
 * IDEM_DIFF_TRACE=1 prints every sequence as it is sent.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/ssl.h>

#include "itest.h"

#define DB_DIRECT "idem_diff_direct"
#define DB_PROXY "idem_diff_proxy"
#define READ_TIMEOUT_MS 10000

/* ---- building the frontend's bytes ------------------------------------- */

struct bytes {
    uint8_t *data;
    size_t len, cap;
};

static void put(struct bytes *b, const void *p, size_t n)
{
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2 + 256;
        b->data = realloc(b->data, b->cap);
        assert_non_null(b->data);
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

/* ---- the generator ----------------------------------------------------- */

/* The two streams a sequence is written into: the same messages, but for a
 * run with duplicates the direct side's INSERTs into diff_reg carry the
 * ON CONFLICT clause the application would have had to write by hand. */
enum side { PROXIED, DIRECT, SIDES };

struct gen {
    uint64_t rng;
    long long next_key;   /* the next new key */
    long long key_base;   /* with dup_keys: the seed's keys start here */
    uint32_t dup_keys;    /* 0: every key is new; n: keys are drawn from n */
    bool by_hand;         /* the direct side gets the hand-written forms */
    enum { RELOAD_NONE, RELOAD_BEFORE, RELOAD_AFTER } around_reload;
                          /* the sequence before a reload prepares s1, the
                             one after binds it: it is prepared again for
                             the new rules */
    bool no_settings;     /* no standard_conforming_strings, client_encoding,
                             search_path or role, which keep the rewrite away
                             from a session until it resets them: for runs
                             that are about what the rewrite does */
    bool no_identity;     /* of those, no search_path or role */
    bool parsed_insert;   /* this sequence parsed an INSERT into diff_reg: no
                             isolation level set after it (the Parse in
                             place of a cached one takes no snapshot:
                             README, Limitations) */
    bool identity_moved;  /* this sequence may have changed the search_path
                             or role: no Bind or Describe of a statement
                             prepared before in the change's batch, which
                             keep the form it was given before the change
                             is answered, and no SET TRANSACTION after it
                             (the question inside a block takes a
                             snapshot: README, Limitations) */
    bool batch_open;      /* extended messages since the last Sync: no
                             isolation level set then (a Describe of a
                             statement PostgreSQL looks up again takes a
                             snapshot, and the proxy prepared it anew:
                             README, Limitations) */
    bool text_moved;      /* this connection may have changed its
                             client_encoding or standard_conforming_strings:
                             no Bind or Describe of ACCENTED_NAME, whose
                             texts keep the form they were prepared in when
                             the rules or the search_path change later
                             (README, Limitations) */
    long long large_object; /* the key the last lo_create was given */
    struct bytes out[SIDES];
    size_t msg_at[SIDES]; /* where the message being written starts */
    size_t batch_starts[64]; /* where the proxied side's messages after a
                                Sync or a Query start, for send_in_pieces */
    size_t nbatch_starts;
    char script[16384];   /* the proxied side, readable, for a failure's report */
    size_t script_len;
};

static uint32_t rnd(struct gen *g, uint32_t n)
{
    g->rng ^= g->rng << 13;
    g->rng ^= g->rng >> 7;
    g->rng ^= g->rng << 17;
    return (uint32_t)(g->rng % n);
}

static long long new_key(struct gen *g)
{
    return g->dup_keys ? g->key_base + rnd(g, g->dup_keys) : g->next_key++;
}

static void emit(struct gen *g, const void *p, size_t n)
{
    for (int s = 0; s < SIDES; s++)
        put(&g->out[s], p, n);
}

static void emit_u32(struct gen *g, uint32_t v)
{
    uint8_t x[4] = { (uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v };
    emit(g, x, 4);
}

static void emit_u16(struct gen *g, uint16_t v)
{
    uint8_t x[2] = { (uint8_t)(v >> 8), (uint8_t)v };
    emit(g, x, 2);
}

static void emit_str(struct gen *g, const char *s)
{
    emit(g, s, strlen(s) + 1);
}

/* A string written one way to the proxy and another straight to the
 * server. */
static void emit_sides(struct gen *g, const char *proxied, const char *direct)
{
    put(&g->out[PROXIED], proxied, strlen(proxied) + 1);
    put(&g->out[DIRECT], direct, strlen(direct) + 1);
}

/* Starts a message on both sides; msg_end fills in their lengths. */
static void msg_begin(struct gen *g, char type)
{
    if (!g->batch_open && g->nbatch_starts < sizeof g->batch_starts / sizeof g->batch_starts[0])
        g->batch_starts[g->nbatch_starts++] = g->out[PROXIED].len;
    if (type == 'S')
        g->batch_open = false;
    else if (strchr("PBDECH", type))
        g->batch_open = true;
    for (int s = 0; s < SIDES; s++) {
        put(&g->out[s], &type, 1);
        g->msg_at[s] = g->out[s].len;
        put(&g->out[s], "\0\0\0\0", 4);
    }
}

static void msg_end(struct gen *g)
{
    for (int s = 0; s < SIDES; s++) {
        uint8_t *len = g->out[s].data + g->msg_at[s];
        uint32_t n = (uint32_t)(g->out[s].len - g->msg_at[s]);
        len[0] = (uint8_t)(n >> 24);
        len[1] = (uint8_t)(n >> 16);
        len[2] = (uint8_t)(n >> 8);
        len[3] = (uint8_t)n;
    }
}

static void note(struct gen *g, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note(struct gen *g, const char *fmt, ...)
{
    if (g->script_len >= sizeof g->script - 1)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(g->script + g->script_len, sizeof g->script - g->script_len, fmt, ap);
    va_end(ap);
    if (n > 0)
        g->script_len += (size_t)n;
    if (g->script_len >= sizeof g->script)
        g->script_len = sizeof g->script - 1;
}

/* A statement as the application sends it, and (by_hand) as it would have
 * to be written for the server itself to do what the proxy makes of it
 * under the default action: DO NOTHING, or for RETURNING the existing row.
 * NULL: the same text. An INSERT inside a WITH is not rewritten (README):
 * by hand it stays as it is. */
struct sql_pair {
    const char *sql;
    const char *by_hand;
};

#define DN " ON CONFLICT (k) DO NOTHING"
#define DU " ON CONFLICT (k) DO UPDATE SET k = EXCLUDED.k"

/* A document in a string constant: over the 16 kB the decision cache
 * keeps a text by, so that only its shape can be (README), with a quote
 * doubled in it. */
#define DOC_LEN (17u << 10)
#define SQL_CAP (DOC_LEN + 512)

static size_t put_document(char *out)
{
    static const char head[] = "it''s ";
    memcpy(out, head, sizeof head - 1);
    for (size_t i = sizeof head - 1; i < DOC_LEN; i++)
        out[i] = (char)('a' + i % 26);
    return DOC_LEN;
}

/* The template with each %K replaced by a key and %D by the document,
 * into both forms alike. */
static void expand(struct gen *g, const struct sql_pair *pair, char *sql, char *by_hand,
                   size_t cap)
{
    const char *tmpl[SIDES] = { pair->sql, g->by_hand && pair->by_hand ? pair->by_hand : pair->sql };
    char *outs[SIDES] = { sql, by_hand };
    long long keys[16];
    size_t nkeys = 0;

    for (const char *t = tmpl[PROXIED]; *t; t++)
        if (t[0] == '%' && t[1] == 'K' && nkeys < 16)
            keys[nkeys++] = new_key(g);
    for (int s = 0; s < SIDES; s++) {
        size_t at = 0, k = 0;
        for (const char *t = tmpl[s]; *t && at + 24 < cap; t++) {
            if (t[0] == '%' && t[1] == 'K' && k < nkeys) {
                at += (size_t)snprintf(outs[s] + at, cap - at, "%lld", keys[k++]);
                t++;
            } else if (t[0] == '%' && t[1] == 'D' && at + DOC_LEN + 24 < cap) {
                at += put_document(outs[s] + at);
                t++;
            } else {
                outs[s][at++] = *t;
            }
        }
        outs[s][at] = '\0';
    }
}

static void put_query(struct gen *g, const char *sql, const char *by_hand)
{
    msg_begin(g, 'Q');
    emit_sides(g, sql, by_hand);
    msg_end(g);
    /* A document's text is cut short. */
    int n = 300;
    note(g, "  Query \"%.*s%s\"\n", n, sql, strlen(sql) > (size_t)n ? "..." : "");
    if (strcmp(sql, by_hand) != 0)
        note(g, "        direct \"%.*s%s\"\n", n, by_hand, strlen(by_hand) > (size_t)n ? "..." : "");
}

/* Simple queries; %K is a key. Not here, because the proxy changes them on
 * purpose: in runs that need the rewrite to go on (see no_settings), the
 * settings that keep it away. */
static const struct sql_pair simple_sql[] = {
    { "SELECT 1", NULL },
    { "SELECT k, v FROM diff_plain ORDER BY k", NULL },
    { "SELECT count(*), sum(k) FROM diff_reg", NULL },
    { "SELECT 1/0", NULL },
    { "BEGIN", NULL },
    { "BEGIN", NULL },
    { "BEGIN ISOLATION LEVEL REPEATABLE READ", NULL },
    { "COMMIT", NULL },
    { "COMMIT", NULL },
    { "ROLLBACK", NULL },
    { "COMMIT AND CHAIN", NULL },
    { "SAVEPOINT a", NULL },
    { "ROLLBACK TO SAVEPOINT a", NULL },
    { "RELEASE SAVEPOINT a", NULL },
    { "SELECT 1; SELECT 2", NULL },
    { "SELECT 1; SELECT 1/0; SELECT 3", NULL },
    { "BEGIN; SELECT 1", NULL },
    { "SET application_name = 'diff_%K'", NULL },
    { "", NULL },
    { ";", NULL },
    { "SELEC 1", NULL },
    { "DO $$BEGIN RAISE NOTICE 'hello'; END$$", NULL },
    { "COPY (SELECT k FROM diff_plain ORDER BY k) TO STDOUT", NULL },
    { "INSERT INTO diff_reg (k, v) VALUES (%K, 'q')",
      "INSERT INTO diff_reg (k, v) VALUES (%K, 'q')" DN },
    { "INSERT INTO diff_reg (k, v) VALUES (%K, 'q')",
      "INSERT INTO diff_reg (k, v) VALUES (%K, 'q')" DN },
    { "INSERT INTO diff_reg (k, v) VALUES (%K, 'q') RETURNING k, v",
      "INSERT INTO diff_reg (k, v) VALUES (%K, 'q')" DU " RETURNING k, v" },
    { "insert into DIFF_REG values (%K, 'lower')", "insert into DIFF_REG values (%K, 'lower')" DN },
    { "INSERT INTO public.diff_reg AS r (k, v) VALUES (%K, 'it''s') RETURNING r.*",
      "INSERT INTO public.diff_reg AS r (k, v) VALUES (%K, 'it''s')" DU " RETURNING r.*" },
    { "INSERT INTO diff_reg (k, v) VALUES (%K, '%D')",
      "INSERT INTO diff_reg (k, v) VALUES (%K, '%D')" DN },
    /* Bytes beyond ASCII: "été" in UTF-8, before a value the server
     * refuses (its position counts characters); a column named "clé";
     * "café" in LATIN1, which UTF-8 refuses. */
    { "INSERT INTO diff_reg (k, v) VALUES (%K, '\xc3\xa9t\xc3\xa9'), ('k%K', 'b')",
      "INSERT INTO diff_reg (k, v) VALUES (%K, '\xc3\xa9t\xc3\xa9'), ('k%K', 'b')" DN },
    { "INSERT INTO diff_reg (k, v) VALUES (%K, '\xc3\xa9t\xc3\xa9') RETURNING k AS \"cl\xc3\xa9\"",
      "INSERT INTO diff_reg (k, v) VALUES (%K, '\xc3\xa9t\xc3\xa9')" DU
      " RETURNING k AS \"cl\xc3\xa9\"" },
    { "INSERT INTO diff_reg (k, v) VALUES (%K, 'caf\xe9')",
      "INSERT INTO diff_reg (k, v) VALUES (%K, 'caf\xe9')" DN },
    { "SELECT k, length(v), md5(v) FROM diff_reg ORDER BY k", NULL },
    { "INSERT INTO diff_reg (k, v) VALUES (%K, NULL)",
      "INSERT INTO diff_reg (k, v) VALUES (%K, NULL)" DN },
    /* Values the server cannot convert: bigint from 'k1', in a later row. */
    { "INSERT INTO diff_reg (k, v) VALUES ('k%K', 'wrong type')",
      "INSERT INTO diff_reg (k, v) VALUES ('k%K', 'wrong type')" DN },
    { "INSERT INTO diff_reg (k, v) VALUES (%K, 'a'), ('%K.5', 'b')",
      "INSERT INTO diff_reg (k, v) VALUES (%K, 'a'), ('%K.5', 'b')" DN },
    { "INSERT INTO diff_reg (k, v) VALUES (%K, 'a'), (%K, 'b')",
      "INSERT INTO diff_reg (k, v) VALUES (%K, 'a'), (%K, 'b')" DN },
    { "INSERT INTO diff_reg (k, v) SELECT %K, 'sel'", "INSERT INTO diff_reg (k, v) SELECT %K, 'sel'" DN },
    { "INSERT INTO diff_reg (k, v) VALUES (%K, 'c') ON CONFLICT DO NOTHING", NULL },
    { "INSERT INTO diff_reg (k, v, w) VALUES (%K, 'no such column', 1)",
      "INSERT INTO diff_reg (k, v, w) VALUES (%K, 'no such column', 1)" DN },
    { "INSERT INTO diff_reg (k, v) VALUES (%K, 'm'); SELECT 2",
      "INSERT INTO diff_reg (k, v) VALUES (%K, 'm')" DN "; SELECT 2" },
    { "WITH x AS (INSERT INTO diff_reg (k, v) VALUES (%K, 'w') RETURNING k) SELECT count(*) FROM x",
      NULL },
    { "INSERT INTO diff_plain (k, v) VALUES (%K, 'p')", NULL },
    { "PREPARE ps AS SELECT $1::int", NULL },
    { "EXECUTE ps(7)", NULL },
    { "DEALLOCATE ps", NULL },
    { "DEALLOCATE ALL", NULL },
    { "DISCARD ALL", NULL },
    { "LISTEN diff_chan", NULL },
    { "NOTIFY diff_chan, 'n%K'", NULL },
    { "UNLISTEN *", NULL },
    { "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", NULL },
    { "SHOW transaction_isolation", NULL },
    /* A custom setting (what row-level security reads) leaves the
     * session's INSERTs rewritten, in the same Query too. */
    { "SELECT set_config('diff.tenant', '%K', false)", NULL },
    { "SELECT set_config('diff.tenant', '%K', true); INSERT INTO diff_reg (k, v) VALUES (%K, 't')",
      "SELECT set_config('diff.tenant', '%K', true); INSERT INTO diff_reg (k, v) VALUES (%K, 't')" DN },
    /* The settings last, to be left out (no_settings). */
    { "SET standard_conforming_strings = off", NULL },
    { "RESET standard_conforming_strings", NULL },
    { "INSERT INTO diff_reg (k, v) VALUES (%K, 'back\\slash')",
      "INSERT INTO diff_reg (k, v) VALUES (%K, 'back\\slash')" DN },
    { "SET client_encoding = 'LATIN1'", NULL },
    { "RESET client_encoding", NULL },
    /* Where diff_reg leads, and as whom (left out with no_identity too):
     * diff_other.diff_reg has no unique
     * index, so that a rewrite there fails, and diff_reader may not UPDATE
     * diff_reg, so that the DO UPDATE form fails for it. No temporary table
     * of the name: when PostgreSQL looks a prepared statement's names up
     * again after one appears depends on invalidations the proxy does not
     * follow (README, Limitations; test_idem_session_identity has one). */
    { "SET search_path TO diff_other, public", NULL },
    { "SELECT set_config('search_path', 'diff_other', false)", NULL },
    { "SET LOCAL search_path TO diff_other", NULL },
    { "RESET search_path", NULL },
    { "SET ROLE diff_reader", NULL },
    { "RESET ROLE", NULL },
    /* A role for the transaction block only, asked about inside it. */
    { "SET LOCAL ROLE diff_reader", NULL },
    { "SELECT set_config('role', 'diff_reader', true)", NULL },
};
#define SIMPLE_SETTINGS 13 /* the entries at the end about settings */
#define SIMPLE_IDENTITY 8  /* of those, the ones about search_path and role */

#define DIFF_REG_INSERT "INSERT INTO diff_reg"

/* SQL that drops prepared statements makes the proxy forget them as it
 * goes, though the server may yet skip it (README, Limitations): not in
 * runs whose sessions change their search_path or role, where a statement
 * forgotten so would keep its rewritten form unseen. */
static bool drops_statements(const char *sql)
{
    return strncmp(sql, "DEALLOCATE", 10) == 0 || strncmp(sql, "DISCARD", 7) == 0;
}

/* SQL after which the proxy leaves a session's INSERTs alone until it has
 * asked the server again (README, "Following the session's role and
 * search_path"): not in runs about what the rewrite does. */
static bool may_change_identity(const char *sql)
{
    return strncmp(sql, "DISCARD", 7) == 0 || strncmp(sql, "DO ", 3) == 0 ||
           strncmp(sql, "EXECUTE", 7) == 0;
}

/* SQL that may change where diff_reg leads or as whom the session runs. */
static bool moves_identity(const char *sql)
{
    return strstr(sql, "search_path") || strstr(sql, "ROLE") || strstr(sql, "'role'") ||
           may_change_identity(sql);
}

struct prepared_sql {
    const char *sql;
    const char *by_hand; /* as in struct sql_pair */
    int params;          /* each parameter gets a key as its text */
};

/* A comment over 1 kB, to make a statement too long for a proxy that
 * reads only messages up to that (test_diff_streamed). */
#define PAD10 "padding.. "
#define PAD100 PAD10 PAD10 PAD10 PAD10 PAD10 PAD10 PAD10 PAD10 PAD10 PAD10
#define LONG_COMMENT "/* " PAD100 PAD100 PAD100 PAD100 PAD100 PAD100 PAD100 PAD100 PAD100 \
                     PAD100 PAD100 " */"

static const struct prepared_sql extended_sql[] = {
    { "SELECT $1::int", NULL, 1 },
    { "SELECT k, v FROM diff_plain WHERE k > $1 ORDER BY k", NULL, 1 },
    { "SELECT generate_series(1, 5)", NULL, 0 },
    { "INSERT INTO diff_reg (k, v) VALUES ($1, $2)", "INSERT INTO diff_reg (k, v) VALUES ($1, $2)" DN,
      2 },
    { "INSERT INTO diff_reg (k, v) VALUES ($1, $2)", "INSERT INTO diff_reg (k, v) VALUES ($1, $2)" DN,
      2 },
    { "INSERT INTO diff_reg (k, v) VALUES ($1, $2) RETURNING k",
      "INSERT INTO diff_reg (k, v) VALUES ($1, $2)" DU " RETURNING k", 2 },
    { "INSERT INTO diff_reg (k, v) VALUES ($1::bigint, 'lit') RETURNING *",
      "INSERT INTO diff_reg (k, v) VALUES ($1::bigint, 'lit')" DU " RETURNING *", 1 },
    { "INSERT INTO diff_reg (k, v) VALUES ($1, 'x'::int)",
      "INSERT INTO diff_reg (k, v) VALUES ($1, 'x'::int)" DN, 1 },
    { "INSERT INTO diff_plain (k, v) VALUES ($1, $2)", NULL, 2 },
    /* Rows for an Execute's row limit to suspend. */
    { "INSERT INTO diff_reg (k, v) VALUES ($1, 'a'), ($2::bigint, 'b') RETURNING k, v",
      "INSERT INTO diff_reg (k, v) VALUES ($1, 'a'), ($2::bigint, 'b')" DU " RETURNING k, v", 2 },
    { "INSERT INTO diff_reg (k, v) VALUES ($1, $2) " LONG_COMMENT,
      "INSERT INTO diff_reg (k, v) VALUES ($1, $2) " LONG_COMMENT DN, 2 },
    /* Its opening beyond the first bytes a proxy reads of a statement too
     * long for it: one it cannot follow by its name. */
    { LONG_COMMENT " INSERT INTO diff_reg (k, v) VALUES ($1, $2)",
      LONG_COMMENT " INSERT INTO diff_reg (k, v) VALUES ($1, $2)" DN, 2 },
    { "BEGIN", NULL, 0 },
    { "START TRANSACTION", NULL, 0 },
    { "COMMIT", NULL, 0 },
    { "ROLLBACK", NULL, 0 },
    { "SAVEPOINT a", NULL, 0 },
    /* A BEGIN only in a string: it opens no block. */
    { "SELECT 'a; BEGIN'", NULL, 0 },
    { "SELECT 1/0", NULL, 0 },
    { "SELEC 1", NULL, 0 },
    { "", NULL, 0 },
    { "COPY (SELECT k FROM diff_plain ORDER BY k) TO STDOUT", NULL, 0 },
    /* The settings last, to be left out (no_settings): where diff_reg
     * leads and as whom, changed by an Execute. */
    { "SET search_path TO diff_other, public", NULL, 0 },
    { "RESET search_path", NULL, 0 },
    { "SET LOCAL ROLE diff_reader", NULL, 0 },
};
#define EXTENDED_SETTINGS 3 /* the entries at the end about settings */

/* INSERTs whose texts may mean otherwise under another client_encoding
 * or standard_conforming_strings, prepared only under a name that is
 * not ASCII either. */
#define ACCENTED_NAME "s\xc3\xa9"
static const struct prepared_sql accented_sql[] = {
    { "INSERT INTO diff_reg (k, v) VALUES ($1, '\xc3\xa9t\xc3\xa9 ' || $2)",
      "INSERT INTO diff_reg (k, v) VALUES ($1, '\xc3\xa9t\xc3\xa9 ' || $2)" DN, 2 },
    { "INSERT INTO diff_reg (k, v) VALUES ($1, 'back\\slash ' || $2) RETURNING v",
      "INSERT INTO diff_reg (k, v) VALUES ($1, 'back\\slash ' || $2)" DU " RETURNING v", 2 },
    { "INSERT INTO diff_reg (k, v) VALUES ($1, E'tab\\there') RETURNING length(v)",
      "INSERT INTO diff_reg (k, v) VALUES ($1, E'tab\\there')" DU " RETURNING length(v)", 1 },
    { "INSERT INTO diff_reg (k, v) VALUES ($1, 'caf\xe9')",
      "INSERT INTO diff_reg (k, v) VALUES ($1, 'caf\xe9')" DN, 1 },
};

#undef DN
#undef DU

static const char *const statement_names[] = { "", "", "s1", "s2" };
static const char *const portal_names[] = { "", "", "p1" };

/* One of extended_sql, but for its settings in runs without them. */
static const struct prepared_sql *pick_extended(struct gen *g)
{
    bool none = g->no_settings || g->no_identity;
    size_t n = sizeof extended_sql / sizeof extended_sql[0] - (none ? EXTENDED_SETTINGS : 0);
    return &extended_sql[rnd(g, (uint32_t)n)];
}

static void put_parse(struct gen *g, const char *name, const struct prepared_sql *ps)
{
    const char *by_hand = g->by_hand && ps->by_hand ? ps->by_hand : ps->sql;

    g->parsed_insert |= strstr(ps->sql, DIFF_REG_INSERT) != NULL;
    g->identity_moved |= moves_identity(ps->sql);
    /* Now and then with parameter types declared, some of them left to
     * the server (0), some that the columns refuse (int4 is converted,
     * text is not). */
    static const uint32_t type_oids[] = { 0, 20, 23, 25, 1043 };
    int declared = ps->params && rnd(g, 4) == 0 ? (int)rnd(g, (uint32_t)ps->params) + 1 : 0;
    char types[64] = "";
    msg_begin(g, 'P');
    emit_str(g, name);
    emit_sides(g, ps->sql, by_hand);
    emit_u16(g, (uint16_t)declared);
    for (int i = 0; i < declared; i++) {
        uint32_t oid = type_oids[rnd(g, sizeof type_oids / sizeof type_oids[0])];
        emit_u32(g, oid);
        size_t at = strlen(types);
        snprintf(types + at, sizeof types - at, "%s%u", i ? ", " : " types ", oid);
    }
    msg_end(g);
    /* A long comment is cut short. */
    int n = 160;
    note(g, "  Parse \"%s\" \"%.*s%s\"%s\n", name, n, ps->sql,
         strlen(ps->sql) > (size_t)n ? "..." : "", types);
    if (by_hand != ps->sql)
        note(g, "        direct \"%.*s%s\"\n", n, by_hand, strlen(by_hand) > (size_t)n ? "..." : "");
}

#define LONG_VALUE_LEN 1200u

/* Parameters in text, or now and then in binary: all of them (one format
 * code) or each its own. A key in binary is eight bytes, which a bigint
 * takes and text refuses (a NUL). */
static void put_bind(struct gen *g, const char *portal, const char *name, int params)
{
    bool binary = rnd(g, 5) == 0;
    uint32_t formats = rnd(g, 8) == 0 ? 1 : rnd(g, 8) == 0 ? (uint32_t)params : 0;
    uint16_t format[8] = { 0 };

    msg_begin(g, 'B');
    emit_str(g, portal);
    emit_str(g, name);
    emit_u16(g, (uint16_t)formats);
    for (uint32_t i = 0; i < formats; i++) {
        format[i] = (uint16_t)rnd(g, 2);
        emit_u16(g, format[i]);
    }
    emit_u16(g, (uint16_t)params);
    note(g, "  Bind \"%s\" \"%s\" (", portal, name);
    for (int i = 0; i < params; i++) {
        long long key = new_key(g);
        char v[24];
        snprintf(v, sizeof v, "%lld", key);
        if (format[formats == 1 ? 0 : i]) {
            emit_u32(g, 8);
            emit_u32(g, (uint32_t)((unsigned long long)key >> 32));
            emit_u32(g, (uint32_t)key);
            note(g, "%s%s binary", i ? ", " : "", v);
            continue;
        }
        /* Now and then a second value over 1 kB, as a document would be:
         * too large for a proxy that reads no message over that. */
        if (i == 1 && rnd(g, 8) == 0) {
            static char long_value[LONG_VALUE_LEN + 1];
            memset(long_value, 'v', LONG_VALUE_LEN);
            memcpy(long_value, v, strlen(v));
            emit_u32(g, LONG_VALUE_LEN);
            emit(g, long_value, LONG_VALUE_LEN);
            note(g, ", %s%s (%u bytes)", v, "vvv...", LONG_VALUE_LEN);
            continue;
        }
        emit_u32(g, (uint32_t)strlen(v));
        emit(g, v, strlen(v));
        note(g, "%s%s", i ? ", " : "", v);
    }
    emit_u16(g, binary ? 1 : 0);
    if (binary)
        emit_u16(g, 1);
    msg_end(g);
    note(g, ")%s\n", binary ? " binary" : "");
}

static void put_named(struct gen *g, char type, char kind, const char *name)
{
    msg_begin(g, type);
    emit(g, &kind, 1);
    emit_str(g, name);
    msg_end(g);
    note(g, "  %s %c \"%s\"\n", type == 'D' ? "Describe" : "Close", kind, name);
}

static void put_execute(struct gen *g, const char *portal, uint32_t rows)
{
    msg_begin(g, 'E');
    emit_str(g, portal);
    emit_u32(g, rows);
    msg_end(g);
    note(g, "  Execute \"%s\" %u\n", portal, rows);
}

static void put_bare(struct gen *g, char type, const char *what)
{
    msg_begin(g, type);
    msg_end(g);
    note(g, "  %s\n", what);
}

static void put_copy_data(struct gen *g, const char *row)
{
    msg_begin(g, 'd');
    emit(g, row, strlen(row));
    msg_end(g);
    note(g, "  CopyData \"%.*s\"\n", (int)strlen(row) - 1, row);
}

/* The rows of a COPY FROM STDIN and its end, whether or not the server
 * takes them (outside a COPY it ignores them). */
static void put_copy_rows(struct gen *g)
{
    for (uint32_t rows = rnd(g, 3); rows > 0; rows--) {
        char row[48];
        snprintf(row, sizeof row, "%lld\tc\n", new_key(g));
        put_copy_data(g, row);
    }
    if (rnd(g, 4) == 0) {
        msg_begin(g, 'f');
        emit_str(g, "stopped by the client");
        msg_end(g);
        note(g, "  CopyFail\n");
    } else {
        put_bare(g, 'c', "CopyDone");
    }
}

static const struct prepared_sql copy_in_sql[] = {
    { "COPY diff_plain (k, v) FROM STDIN", NULL, 0 },
    { "COPY diff_reg (k, v) FROM STDIN", NULL, 0 },
};

/* A COPY FROM STDIN in a Query and what the client sends it. */
static void step_copy_in(struct gen *g)
{
    const char *copy = copy_in_sql[rnd(g, 2)].sql;
    put_query(g, copy, copy);
    put_copy_rows(g);
}

/* A COPY FROM STDIN by the extended protocol, in whatever batch is open
 * (guarded INSERTs, a statement that failed), its data sent at once; now
 * and then behind a Sync, as libpq sends one, which PostgreSQL ignores
 * while it copies and which ends the batch where it skipped the COPY.
 * Then the unnamed statement is another: a later Bind and Execute of the
 * COPY would have the server read the next messages as its data, which
 * ends the session. */
static void step_copy_extended(struct gen *g)
{
    static const struct prepared_sql after = { "SELECT 'after the copy'", NULL, 0 };

    put_parse(g, "", &copy_in_sql[rnd(g, 2)]);
    put_bind(g, "", "", 0);
    put_execute(g, "", 0);
    if (rnd(g, 2)) {
        put_bare(g, 'S', "Sync");
        g->batch_open = true; /* as far as the COPY's batch goes */
    }
    put_copy_rows(g);
    put_bare(g, 'S', "Sync");
    put_parse(g, "", &after);
}

/* What drivers send: Parse, Bind, Execute (in parts, now and then) and
 * usually a Sync, with Describes and Closes here and there. */
static void step_chain(struct gen *g)
{
    const char *name = statement_names[rnd(g, 4)];
    const char *portal = portal_names[rnd(g, 3)];
    const struct prepared_sql *ps = pick_extended(g);
    uint32_t rows = rnd(g, 4) == 0 ? 1 + rnd(g, 2) : 0;

    if (!g->text_moved && rnd(g, 6) == 0) {
        name = ACCENTED_NAME;
        ps = &accented_sql[rnd(g, sizeof accented_sql / sizeof accented_sql[0])];
    }

    put_parse(g, name, ps);
    if (rnd(g, 4) == 0)
        put_named(g, 'D', 'S', name);
    put_bind(g, portal, name, ps->params);
    if (rnd(g, 3) == 0)
        put_named(g, 'D', 'P', portal);
    put_execute(g, portal, rows);
    if (rows && rnd(g, 2))
        put_execute(g, portal, rows);
    if (rnd(g, 5) == 0)
        put_named(g, 'C', 'P', portal);
    if (rnd(g, 6) == 0)
        put_named(g, 'C', 'S', name);
    if (rnd(g, 10) < 7)
        put_bare(g, 'S', "Sync");
}

/* A FunctionCall's argument: an int4 or oid, in text or binary. */
static void emit_int_arg(struct gen *g, bool binary, long long v)
{
    char t[24];

    if (binary) {
        emit_u32(g, 4);
        emit_u32(g, (uint32_t)v);
        return;
    }
    snprintf(t, sizeof t, "%lld", v);
    emit_u32(g, (uint32_t)strlen(t));
    emit(g, t, strlen(t));
}

/* A FunctionCall, its arguments and result in text or binary. Like a
 * Query it ends with ReadyForQuery, in a batch or not, and the server
 * skips it after an error in one. Large-object calls (lo_create of a key,
 * lo_unlink of the last, which may be gone) in every run; int4pl (oid
 * 177) of two int4s and a function that does not exist only where the
 * session may change its identity (no_settings): the proxy cannot tell
 * them from set_config. */
static void step_funcall(struct gen *g)
{
    enum { LO_CREATE, LO_UNLINK, INT4PL, MISSING } call = rnd(g, g->no_settings ? 2 : 4);
    static const struct {
        const char *name;
        uint32_t oid;
        uint16_t args;
    } functions[] = {
        [LO_CREATE] = { "lo_create", 715, 1 },
        [LO_UNLINK] = { "lo_unlink", 964, 1 },
        [INT4PL] = { "int4pl", 177, 2 },
        [MISSING] = { "missing", 4000000000u, 2 },
    };
    bool binary_args = rnd(g, 2), binary_result = rnd(g, 2);
    long long a, b = rnd(g, 10) == 0 ? INT32_MAX : rnd(g, 1000);

    if (call == LO_CREATE)
        a = g->large_object = new_key(g) % 4000000000; /* an oid */
    else if (call == LO_UNLINK)
        a = g->large_object;
    else
        a = rnd(g, 1000);
    msg_begin(g, 'F');
    emit_u32(g, functions[call].oid);
    emit_u16(g, 1);
    emit_u16(g, binary_args);
    emit_u16(g, functions[call].args);
    emit_int_arg(g, binary_args, a);
    if (functions[call].args == 2)
        emit_int_arg(g, binary_args, b);
    emit_u16(g, binary_result);
    msg_end(g);
    note(g, "  FunctionCall %s(%lld", functions[call].name, a);
    if (functions[call].args == 2)
        note(g, ", %lld", b);
    note(g, ")%s%s\n", binary_args ? " binary" : "", binary_result ? " binary result" : "");
}

/* One extended message on its own, in any order: what a broken or very
 * clever client sends. Not to the unnamed portal: PostgreSQL 15.18 itself
 * crashes (SIGSEGV) on an Execute of it after a Query whose savepoint
 * command failed in a block and an INSERT Query, that portal being the
 * failed Query's, left behind with its memory freed. */
static void step_single(struct gen *g)
{
    const char *name = statement_names[rnd(g, 4)];
    const char *portal = "p1";

    switch (rnd(g, 8)) {
    case 0:
        put_parse(g, name, pick_extended(g));
        break;
    case 1:
        if (g->identity_moved && g->batch_open)
            put_bare(g, 'H', "Flush");
        else
            put_bind(g, portal, name, (int)rnd(g, 3));
        break;
    case 2: {
        bool statement = rnd(g, 2);
        if (statement && g->identity_moved && g->batch_open)
            put_bare(g, 'H', "Flush");
        else
            put_named(g, 'D', statement ? 'S' : 'P', rnd(g, 2) ? name : portal);
        break;
    }
    case 3:
        put_execute(g, portal, rnd(g, 3));
        break;
    case 4:
        put_named(g, 'C', rnd(g, 2) ? 'S' : 'P', rnd(g, 2) ? name : portal);
        break;
    case 5:
        put_bare(g, 'H', "Flush");
        break;
    default:
        put_bare(g, 'S', "Sync");
        break;
    }
}

/* A statement prepared by an earlier sequence, bound again first thing
 * (as drivers do with their statement caches): the rules may have changed
 * since it was prepared. */
static void step_bind_again(struct gen *g, const char *name)
{
    put_bind(g, "", name, 2);
    put_execute(g, "", 0);
    put_bare(g, 'S', "Sync");
}

/* s1 prepared as an INSERT into diff_reg outside any block, as the last
 * thing before a reload, for the next sequence to bind again. */
static void step_prepare_for_reload(struct gen *g)
{
    put_query(g, "ROLLBACK", "ROLLBACK");
    put_parse(g, "s1", &extended_sql[3]); /* INSERT INTO diff_reg ... ($1, $2) */
    put_bare(g, 'S', "Sync");
}

/* A Query of simple_sql; with insert_only, one of its INSERTs into
 * diff_reg. */
static void step_simple(struct gen *g, bool insert_only)
{
    static char sql[SQL_CAP], by_hand[SQL_CAP];
    size_t n = sizeof simple_sql / sizeof simple_sql[0] - (g->no_settings   ? SIMPLE_SETTINGS
                                                           : g->no_identity ? SIMPLE_IDENTITY
                                                                            : 0);
    const struct sql_pair *pair;

    do
        pair = &simple_sql[rnd(g, (uint32_t)n)];
    while ((insert_only && strncmp(pair->sql, DIFF_REG_INSERT, strlen(DIFF_REG_INSERT)) != 0) ||
           (g->parsed_insert && strstr(pair->sql, "ISOLATION LEVEL")) ||
           (g->identity_moved && strncmp(pair->sql, "SET TRANSACTION", 15) == 0) ||
           (g->batch_open && strstr(pair->sql, "ISOLATION LEVEL")) ||
           (!g->no_settings && drops_statements(pair->sql)) ||
           (g->no_settings && may_change_identity(pair->sql)));
    expand(g, pair, sql, by_hand, sizeof sql);
    put_query(g, sql, by_hand);
    g->identity_moved |= moves_identity(sql);
    g->text_moved |= strstr(sql, "client_encoding") || strstr(sql, "standard_conforming_strings");
}

/* A batch that fails midway, with a guarded INSERT before the failure or
 * not, and what the server then skips up to the Sync: a Query (an INSERT
 * the proxy would guard, a COPY and its data), a FunctionCall or more
 * extended messages. */
static void step_failed_batch(struct gen *g)
{
    static const struct prepared_sql failing = { "SELECT 1/0", NULL, 0 };

    if (rnd(g, 2)) {
        put_parse(g, "", &extended_sql[3]); /* INSERT INTO diff_reg ... ($1, $2) */
        put_bind(g, "", "", 2);
        put_execute(g, "", 0);
    }
    put_parse(g, "", &failing);
    put_bind(g, "", "", 0);
    put_execute(g, "", 0);
    switch (rnd(g, 5)) {
    case 0:
        step_simple(g, true);
        break;
    case 1:
        step_copy_in(g);
        break;
    case 2:
        step_copy_extended(g);
        break;
    case 3:
        step_funcall(g);
        break;
    default:
        step_chain(g);
        break;
    }
    if (rnd(g, 2))
        put_bare(g, 'S', "Sync");
}

static void generate(struct gen *g)
{
    g->parsed_insert = false;
    g->identity_moved = false;
    g->batch_open = false;
    /* Only a sequence's first message has nothing outstanding before it,
     * as a simple INSERT must for the proxy to run it as its shape's
     * prepared statement (README). */
    if (g->around_reload == RELOAD_AFTER)
        step_bind_again(g, "s1");
    else if (rnd(g, 3) == 0)
        step_bind_again(g, !g->text_moved && rnd(g, 5) == 0 ? ACCENTED_NAME
                                                             : statement_names[rnd(g, 4)]);
    else if (rnd(g, 3) == 0)
        step_simple(g, true);
    for (uint32_t steps = 1 + rnd(g, 10); steps > 0; steps--) {
        uint32_t r = rnd(g, 23);
        if (r < 9) {
            step_simple(g, false);
        } else if (r < 15) {
            step_chain(g);
        } else if (r < 17) {
            step_copy_in(g);
        } else if (r < 18) {
            step_copy_extended(g);
        } else if (r < 19) {
            step_failed_batch(g);
        } else if (r < 20) {
            step_funcall(g);
        } else {
            step_single(g);
        }
    }
    if (g->around_reload == RELOAD_BEFORE)
        step_prepare_for_reload(g);
}

/* Ends any extended batch and block, then asks for a row that marks the
 * end of this sequence's replies. In the extended protocol, on a statement
 * of its own: a Query would drop the unnamed statement, which the next
 * sequence may bind again. */
static void put_fence(struct gen *g, int n)
{
    char sql[64];
    snprintf(sql, sizeof sql, "SELECT 'fence %d'", n);
    const struct prepared_sql rollback = { "ROLLBACK", NULL, 0 }, fence = { sql, NULL, 0 };

    put_bare(g, 'S', "Sync");
    put_parse(g, "fence", &rollback);
    put_bind(g, "", "fence", 0);
    put_execute(g, "", 0);
    put_named(g, 'C', 'S', "fence");
    put_parse(g, "fence", &fence);
    put_bind(g, "", "fence", 0);
    put_execute(g, "", 0);
    put_named(g, 'C', 'S', "fence");
    put_bare(g, 'S', "Sync");
}

/* ---- the sessions' connections ----------------------------------------- */

/* A session's connection: plain, or TLS (the proxied side of the TLS run). */
struct link {
    int fd;
    SSL *ssl;
};

static bool link_send(const struct link *l, const void *buf, size_t len)
{
    if (!l->ssl)
        return itest_raw_send(l->fd, buf, len);
    return SSL_write(l->ssl, buf, (int)len) == (int)len;
}

/* One backend message into m (free it with itest_msg_free); false on EOF,
 * a timeout or a bad length. */
static bool link_read_msg(const struct link *l, struct itest_msg *m)
{
    if (!l->ssl)
        return itest_raw_read_msg(l->fd, m, READ_TIMEOUT_MS) == ITEST_READ_OK;
    uint8_t head[5];
    if (!itest_ssl_read_all(l->ssl, head, sizeof head))
        return false;
    uint32_t len = (uint32_t)head[1] << 24 | (uint32_t)head[2] << 16 | (uint32_t)head[3] << 8 |
                   head[4];
    if (len < 4 || len > 1u << 30)
        return false;
    m->type = (char)head[0];
    m->len = len - 4;
    m->body = malloc(m->len + 1);
    assert_non_null(m->body);
    m->body[m->len] = 0;
    if (!itest_ssl_read_all(l->ssl, m->body, m->len)) {
        itest_msg_free(m);
        return false;
    }
    return true;
}

/* Whether a reply can be read within ms. */
static bool link_readable(const struct link *l, int ms)
{
    struct pollfd pfd = { .fd = l->fd, .events = POLLIN };

    return (l->ssl && SSL_pending(l->ssl) > 0) || poll(&pfd, 1, ms) > 0;
}

static void link_close(struct link *l)
{
    if (l->ssl)
        SSL_free(l->ssl);
    itest_raw_close(l->fd);
    l->fd = -1;
    l->ssl = NULL;
}

/* ---- the replies ------------------------------------------------------- */

struct replies {
    struct itest_msg *msgs;
    size_t n, cap;
    size_t ready; /* of them, ReadyForQuery */
};

static void replies_free(struct replies *r)
{
    for (size_t i = 0; i < r->n; i++)
        itest_msg_free(&r->msgs[i]);
    free(r->msgs);
    memset(r, 0, sizeof *r);
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Takes the server's source location (fields F, L and R) out of an error
 * or notice: which of the server's functions raised it is no promise to a
 * client, and the proxy may meet it on another path (its Describe ahead of
 * a statement prepared again raises the Bind's 26000 there). */
static void drop_source_location(struct itest_msg *m)
{
    uint32_t out = 0;

    if (m->len == 0)
        return;
    for (uint32_t i = 0; i < m->len && m->body[i];) {
        const uint8_t *end = memchr(m->body + i + 1, 0, m->len - i - 1);
        if (!end)
            return;
        uint32_t n = (uint32_t)(end - (m->body + i)) + 1;
        if (!strchr("FLR", m->body[i])) {
            memmove(m->body + out, m->body + i, n);
            out += n;
        }
        i += n;
    }
    m->body[out++] = 0;
    m->len = out;
}

/* Takes out what differs between any two sessions. */
static void normalize(struct itest_msg *m)
{
    if (m->type == 'E' || m->type == 'N')
        drop_source_location(m);
    if (m->type == 'T' && m->len >= 2) {
        size_t at = 2;
        for (unsigned f = 0; f < ((unsigned)m->body[0] << 8 | m->body[1]); f++) {
            const uint8_t *nul = memchr(m->body + at, 0, m->len - at);
            if (!nul || (size_t)(nul - m->body) + 1 + 18 > m->len)
                return;
            at = (size_t)(nul - m->body) + 1;
            memset(m->body + at, 0, 4); /* the table's OID */
            at += 18;
        }
    }
    if (m->type == 'A' && m->len >= 4)
        memset(m->body, 0, 4); /* the notifying backend's PID */
}

static bool is_fence_row(const struct itest_msg *m, const char *fence)
{
    size_t n = strlen(fence);
    return m->type == 'D' && m->len == 2 + 4 + n && get_u32(m->body + 2) == n &&
           memcmp(m->body + 6, fence, n) == 0;
}

/* Reads one reply onto r. */
static bool read_reply(const struct link *l, struct replies *r)
{
    struct itest_msg m;

    if (!link_read_msg(l, &m))
        return false;
    normalize(&m);
    if (r->n == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 64;
        r->msgs = realloc(r->msgs, r->cap * sizeof *r->msgs);
        assert_non_null(r->msgs);
    }
    r->msgs[r->n++] = m;
    r->ready += m.type == 'Z';
    return true;
}

/* Reads onto r until the session has answered the requests sent: until
 * ready ReadyForQuery in all, or a CopyInResponse (the server waits for
 * the data, not sent yet), and what has come with them. Short of them, a
 * session that stays quiet for a while after a ReadyForQuery has skipped
 * some (a Sync while it copies, a Query after an error in a batch): they
 * are added to lost, which the next wait takes off. */
static bool read_until_answered(const struct link *l, struct replies *r, size_t ready,
                                size_t *lost)
{
    ready = ready > *lost ? ready - *lost : 0;
    for (;;) {
        char last = r->n > 0 ? r->msgs[r->n - 1].type : 0;
        bool answered = r->ready >= ready || last == 'G';
        if (!link_readable(l, answered ? 0 : last == 'Z' ? 5 : 50)) {
            if (!answered)
                *lost += ready - r->ready;
            return true;
        }
        if (!read_reply(l, r))
            return false;
    }
}

/* Reads onto r up to the fence row's ReadyForQuery. False on EOF or a
 * timeout, which the comparison then reports with what came. */
static bool read_replies(const struct link *l, const char *fence, struct replies *r)
{
    for (bool fenced = false;;) {
        if (!read_reply(l, r))
            return false;
        const struct itest_msg *m = &r->msgs[r->n - 1];
        if (is_fence_row(m, fence))
            fenced = true;
        else if (fenced && m->type == 'Z')
            return true;
    }
}

static void describe(const struct itest_msg *m, char *out, size_t cap)
{
    switch (m->type) {
    case 'E':
    case 'N': {
        /* Every field (normalize took out the source location). */
        size_t at = (size_t)snprintf(out, cap, "%s", m->type == 'E' ? "ErrorResponse" : "NoticeResponse");
        for (uint32_t i = 0; i < m->len && m->body[i] && at + 8 < cap;) {
            const char *value = (const char *)m->body + i + 1;
            if (!memchr(value, 0, m->len - i - 1))
                break;
            at += (size_t)snprintf(out + at, cap - at, " %c=%s", m->body[i], value);
            i += 1 + (uint32_t)strlen(value) + 1;
        }
        break;
    }
    case 'C':
        snprintf(out, cap, "CommandComplete %.*s", (int)(m->len ? m->len - 1 : 0),
                 (const char *)m->body);
        break;
    case 'Z':
        snprintf(out, cap, "ReadyForQuery %c", m->len ? m->body[0] : '?');
        break;
    default: {
        size_t at = (size_t)snprintf(out, cap, "'%c' %u bytes:", m->type, m->len);
        for (uint32_t i = 0; i < m->len && i < 40 && at + 4 < cap; i++)
            at += (size_t)snprintf(out + at, cap - at, " %02x", m->body[i]);
        break;
    }
    }
}

static bool same_msg(const struct itest_msg *a, const struct itest_msg *b)
{
    return a->type == b->type && a->len == b->len && memcmp(a->body, b->body, a->len) == 0;
}

static void report(const struct gen *g, uint64_t seed, int seq, const struct replies *direct,
                   const struct replies *proxied, size_t first)
{
    /* Not print_message, which cuts what it prints at a kilobyte. */
    printf("seed %llu, sequence %d: replies differ at message %zu\nsent:\n%s",
           (unsigned long long)seed, seq, first + 1, g->script);
    size_t n = direct->n > proxied->n ? direct->n : proxied->n;
    for (size_t i = 0; i < n; i++) {
        char a[512] = "-", b[512] = "-";
        if (i < direct->n)
            describe(&direct->msgs[i], a, sizeof a);
        if (i < proxied->n)
            describe(&proxied->msgs[i], b, sizeof b);
        print_message("%c %3zu direct:  %s\n      proxied: %s\n", i == first ? '>' : ' ', i + 1, a,
                      b);
    }
}

/* ---- the runs ---------------------------------------------------------- */

static void create_tables(const char *db)
{
    char extra[64];
    snprintf(extra, sizeof extra, "dbname=%s", db);
    PGconn *c = itest_connect_ok(itest_pg_port(), extra);
    itest_exec_ok(c, "CREATE TABLE diff_reg (k bigint PRIMARY KEY, v text NOT NULL)");
    itest_exec_ok(c, "CREATE TABLE diff_plain (k bigint PRIMARY KEY, v text)");
    itest_exec_ok(c, "INSERT INTO diff_plain VALUES (1, 'one'), (2, 'two'), (3, NULL)");
    itest_exec_ok(c, "GRANT ALL ON diff_reg, diff_plain TO " ITEST_SCRAM_USER);
    itest_exec_ok(c, "CREATE SCHEMA diff_other");
    itest_exec_ok(c, "CREATE TABLE diff_other.diff_reg (k bigint, v text)");
    itest_exec_ok(c, "GRANT ALL ON SCHEMA diff_other TO PUBLIC");
    itest_exec_ok(c, "GRANT ALL ON diff_other.diff_reg TO PUBLIC");
    itest_exec_ok(c, "GRANT SELECT, INSERT ON diff_reg, diff_plain TO diff_reader");
    itest_finish(c);
}

/* Fresh databases for each run of the binary; the tests share them, their
 * seeds' keys apart. */
static void create_databases(void)
{
    static bool created;
    if (created)
        return;
    itest_server_exec("DROP DATABASE IF EXISTS " DB_DIRECT " WITH (FORCE)");
    itest_server_exec("DROP DATABASE IF EXISTS " DB_PROXY " WITH (FORCE)");
    itest_server_exec("DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = "
                      "'diff_reader') THEN CREATE ROLE diff_reader; END IF; END$$");
    itest_server_exec("GRANT diff_reader TO " ITEST_SCRAM_USER);
    itest_server_exec("CREATE DATABASE " DB_DIRECT);
    itest_server_exec("CREATE DATABASE " DB_PROXY);
    create_tables(DB_DIRECT);
    create_tables(DB_PROXY);
    created = true;
}

static int sequences_per_seed(void)
{
    const char *s = getenv("IDEM_DIFF_SEQUENCES");
    int n = s ? atoi(s) : 300;
    return n > 0 ? n : 300;
}

/* What each test's seeds are moved by: another set of sequences for a long
 * run than the check's. */
static uint64_t seed_shift(void)
{
    const char *s = getenv("IDEM_DIFF_SEED_SET");
    long n = s ? atol(s) : 0;
    return n > 0 && n < 1000000 ? (uint64_t)n * 100 : 0;
}

/* How a test runs its seeds. */
struct diff_run {
    const char *config;           /* the proxy's keys and sections */
    const uint64_t *seeds;
    size_t nseeds;
    const char *const *reloads;   /* configurations reloaded in turn, one
                                     every tenth sequence; or NULL */
    size_t nreloads;
    int visit;                    /* sequences per pair of sessions; 0: one
                                     pair for all of a seed's */
    bool scram;                   /* log in as ITEST_SCRAM_USER with SCRAM */
    bool tls;                     /* the proxied sessions over TLS */
    uint32_t dup_keys;            /* keys drawn from this many per seed, the
                                     direct side writing ON CONFLICT by hand;
                                     0: every key new */
    bool settings;                /* with reloads: the sessions change their
                                     settings, search_path and role too */
    bool no_identity;             /* the sessions keep their search_path and
                                     role */
};

/* A session over TLS (SSLRequest, then a handshake checking the proxy's
 * certificate against the test CA), logged in as a trusted user. */
static struct link login_tls(int port, const char *db)
{
    static const uint8_t ssl_request[] = { 0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f };
    struct link l = { itest_raw_connect(port), NULL };

    assert_true(l.fd >= 0);
    assert_true(itest_raw_send(l.fd, ssl_request, sizeof ssl_request));
    assert_int_equal(itest_raw_read_byte(l.fd, READ_TIMEOUT_MS), 'S');
    l.ssl = itest_ssl_connect(l.fd, NULL);
    assert_non_null(l.ssl);

    uint8_t pkt[256];
    size_t len = itest_build_startup(pkt, sizeof pkt, itest_pg_user(), db, "diff");
    assert_true(link_send(&l, pkt, len));
    for (char type = 0; type != 'Z';) {
        struct itest_msg m;
        assert_true(link_read_msg(&l, &m));
        type = m.type;
        itest_msg_free(&m);
        assert_true(type != 'E');
    }
    return l;
}

static struct link login(int port, const char *db, bool scram, bool tls)
{
    if (tls)
        return login_tls(port, db);
    struct link l = { itest_raw_connect(port), NULL };
    assert_true(l.fd >= 0);
    if (!scram) {
        itest_raw_login_db(l.fd, itest_pg_user(), db, "diff");
        return l;
    }
    uint8_t pkt[256];
    char types[64];
    struct itest_msg none;
    size_t len = itest_build_startup(pkt, sizeof pkt, ITEST_SCRAM_USER, db, "diff");
    itest_raw_scram_login(l.fd, pkt, len, ITEST_SCRAM_PASSWORD, types, sizeof types, 0, &none);
    itest_msg_free(&none);
    return l;
}

/* How many of the messages in data before end are answered by a
 * ReadyForQuery of their own, unless the server skips them. */
static size_t requests_before(const uint8_t *data, size_t end)
{
    size_t n = 0;

    for (size_t at = 0; at + 5 <= end; at += 1 + get_u32(data + at + 1))
        n += data[at] == 'S' || data[at] == 'Q' || data[at] == 'F';
    return n;
}

/* The first start of a batch (see struct gen) past at, or 0. */
static size_t batch_start_after(const struct gen *g, size_t at)
{
    for (size_t i = 0; i < g->nbatch_starts; i++)
        if (g->batch_starts[i] > at)
            return g->batch_starts[i];
    return 0;
}

/* Sends the proxied side's bytes, now and then in pieces: cut anywhere (in
 * a message's head too) with a pause of up to 2 ms after it, where the
 * proxy meets a message in parts; or where a batch begins, once the
 * replies to what went before are in (read onto r), so that the proxy
 * meets the batch with nothing outstanding, what it knows most about. Now
 * and then every batch so, as a client that waits for each answer sends
 * them. PostgreSQL, the reference, gets them at once. */
static bool send_in_pieces(struct gen *g, const struct link *l, const uint8_t *data, size_t len,
                           struct replies *r)
{
    bool by_batch = rnd(g, 16) == 0;
    size_t pieces = by_batch ? g->nbatch_starts + 1 : rnd(g, 4) == 0 ? 2 + rnd(g, 5) : 1, at = 0;
    size_t lost = 0;

    if (by_batch)
        note(g, "  (sent batch by batch, each once the replies before it are in)\n");
    else if (pieces > 1)
        note(g, "  (sent in %zu pieces, cut at", pieces);
    for (size_t i = 1; i <= pieces; i++) {
        size_t batch = by_batch || rnd(g, 2) ? batch_start_after(g, at) : 0;
        size_t end = i == pieces || (by_batch && !batch) ? len
                     : batch                              ? batch
                                                          : at + rnd(g, (uint32_t)(len - at + 1));
        if (i < pieces && !by_batch)
            note(g, " %zu%s%s", end, batch ? " (a batch)" : "", i + 1 == pieces ? ")\n" : "");
        if (end > at && !link_send(l, data + at, end - at))
            return false;
        at = end;
        if (at == len)
            break;
        if (batch) {
            if (!read_until_answered(l, r, requests_before(data, at), &lost))
                return false;
        } else {
            struct timespec pause = { 0, (long)rnd(g, 2000) * 1000 };
            nanosleep(&pause, NULL);
        }
    }
    return true;
}

/* Sends one sequence both ways and fails the test, saying why, when the
 * replies differ or the proxy lost track of the requests. */
static void compare_one(struct itest_proxy *p, struct gen *g, uint64_t seed, int seq,
                        const struct link *direct, const struct link *proxied)
{
    char fence[32];

    g->out[PROXIED].len = g->out[DIRECT].len = 0;
    g->nbatch_starts = 0;
    g->script_len = 0;
    g->script[0] = '\0';
    generate(g);
    put_fence(g, seq);
    snprintf(fence, sizeof fence, "fence %d", seq);
    struct replies a = { 0 }, b = { 0 };
    assert_true(link_send(direct, g->out[DIRECT].data, g->out[DIRECT].len));
    bool b_ok = send_in_pieces(g, proxied, g->out[PROXIED].data, g->out[PROXIED].len, &b);
    if (getenv("IDEM_DIFF_TRACE"))
        printf("seed %llu, sequence %d:\n%s", (unsigned long long)seed, seq, g->script);

    bool a_ok = read_replies(direct, fence, &a);
    b_ok = b_ok && read_replies(proxied, fence, &b);
    size_t first = 0;
    while (first < a.n && first < b.n && same_msg(&a.msgs[first], &b.msgs[first]))
        first++;
    /* The same replies, and the proxy read them as it should: it says so
     * when it lost track of the requests on the way. */
    bool warned = itest_proxy_log_contains(p, "out of step");
    bool same = a_ok && b_ok && first == a.n && first == b.n && !warned;
    if (!same) {
        report(g, seed, seq, &a, &b, first);
        if (!a_ok)
            print_message("the direct session stopped answering\n");
        if (!b_ok)
            print_message("the proxied session stopped answering\n");
        itest_proxy_dump_log(p, 30);
    }
    replies_free(&a);
    replies_free(&b);
    if (!same)
        fail_msg("the proxy's replies differ from PostgreSQL's, or it warned");
}

/* Returns the proxy, for the test to ask its log. */
static struct itest_proxy *run(const struct diff_run *r)
{
    create_databases();
    struct itest_proxy *p = itest_proxy_start_with("debug", r->config);
    int per_seed = sequences_per_seed(), reloaded = 0;
    uint64_t shift = seed_shift();
    struct gen *g = calloc(1, sizeof *g);

    assert_non_null(g);
    for (size_t s = 0; s < r->nseeds; s++) {
        struct link direct = { -1, NULL }, proxied = { -1, NULL };
        uint64_t seed = r->seeds[s] + shift;
        g->rng = seed * 0x9E3779B97F4A7C15ull + 1;
        g->next_key = g->key_base = (long long)seed * 10000000;
        g->dup_keys = r->dup_keys;
        g->by_hand = r->dup_keys > 0;
        g->no_settings = r->dup_keys > 0 || (r->nreloads > 0 && !r->settings);
        g->no_identity = r->no_identity;
        for (int seq = 0; seq < per_seed; seq++) {
            if (direct.fd < 0) {
                direct = login(itest_pg_port(), DB_DIRECT, r->scram, false);
                proxied = login(p->port, DB_PROXY, r->scram, r->tls);
                g->text_moved = false;
            }
            g->around_reload = !r->nreloads    ? RELOAD_NONE
                               : seq % 10 == 8 ? RELOAD_BEFORE
                               : seq % 10 == 9 ? RELOAD_AFTER
                                               : RELOAD_NONE;
            if (g->around_reload == RELOAD_AFTER)
                itest_proxy_reload(p, r->reloads[(seq / 10) % r->nreloads], ++reloaded);
            compare_one(p, g, seed, seq, &direct, &proxied);
            if (seq + 1 == per_seed || (r->visit && (seq + 1) % r->visit == 0)) {
                link_close(&direct);
                link_close(&proxied);
            }
        }
    }
    free(g->out[PROXIED].data);
    free(g->out[DIRECT].data);
    free(g);
    /* The reloads reached statements prepared under other rules (where
     * the sessions' settings do not keep the rewrite away meanwhile). */
    if (r->nreloads && !r->settings)
        assert_true(itest_proxy_log_contains(p, "prepared again for the rules now in force"));
    return p;
}

static void test_diff_rewriting(void **state)
{
    static const uint64_t seeds[] = { 1, 2, 3, 4 };
    (void)state;
    run(&(struct diff_run){ .config = "[table public.diff_reg]\nconflict = k\n",
                            .seeds = seeds, .nseeds = sizeof seeds / sizeof seeds[0] });
}

/* One cached statement at a time: each simple INSERT of another text
 * closes the last one's. RETURNING as the existing row (DO UPDATE). */
static void test_diff_small_cache(void **state)
{
    static const uint64_t seeds[] = { 11, 12 };
    (void)state;
    run(&(struct diff_run){ .config = "max_cached_statements = 1\n[table public.diff_reg]\n"
                                      "conflict = k\naction = return_existing\n",
                            .seeds = seeds, .nseeds = sizeof seeds / sizeof seeds[0] });
}

/* The rules change under the sessions: each statement they prepared is
 * prepared again for the rules in force at its next Bind, and the catalog
 * is asked again every second. */
static void test_diff_reloads(void **state)
{
    static const uint64_t seeds[] = { 21, 22 };
    static const char *const configs[] = {
        "catalog_check_interval = 1\n[table public.diff_reg]\nconflict = k\naction = do_nothing\n",
        "catalog_check_interval = 1\n",
        "catalog_check_interval = 1\n[table public.diff_reg]\nconflict = k\n"
        "action = return_existing\n",
        "catalog_check_interval = 1\n[table public.diff_reg]\nconflict = k\naction = none\n",
    };
    (void)state;
    run(&(struct diff_run){ .config = "[table public.diff_reg]\nconflict = k\n",
                            .seeds = seeds, .nseeds = sizeof seeds / sizeof seeds[0],
                            .reloads = configs,
                            .nreloads = sizeof configs / sizeof configs[0] });
}

/* The same reloads under sessions that also change their encoding, their
 * string setting, search_path and role: each statement prepared again
 * for new rules, or where its table leads now, in a text that means what
 * the client meant. */
static void test_diff_reloads_settings(void **state)
{
    static const uint64_t seeds[] = { 71, 72 };
    static const char *const configs[] = {
        "catalog_check_interval = 1\n[table public.diff_reg]\nconflict = k\naction = none\n",
        "catalog_check_interval = 1\n[table public.diff_reg]\nconflict = k\n",
    };
    (void)state;
    run(&(struct diff_run){ .config = "[table public.diff_reg]\nconflict = k\n",
                            .seeds = seeds, .nseeds = sizeof seeds / sizeof seeds[0],
                            .reloads = configs, .nreloads = sizeof configs / sizeof configs[0],
                            .settings = true });
}

/* Clients that come and go, each handed the server the one before left
 * (server_reuse): each must find it as a fresh login would, nothing of the
 * last session's statements, portals, settings or LISTENs left. */
static void test_diff_reused_servers(void **state)
{
    static const uint64_t seeds[] = { 31, 32 };
    char config[256];
    (void)state;
    snprintf(config, sizeof config,
             "auth_type = scram-sha-256\nauth_user = %s\nserver_reuse = on\nworkers = 1\n"
             "[table public.diff_reg]\nconflict = k\n",
             itest_pg_user());
    struct itest_proxy *p = run(&(struct diff_run){ .config = config, .seeds = seeds,
                                                    .nseeds = sizeof seeds / sizeof seeds[0],
                                                    .visit = 7, .scram = true });
    assert_true(itest_proxy_log_count(p, "logged in on a kept server") > 10);
}

/* The application unchanged behind the proxy against the application
 * rewritten by hand: keys come from a dozen per seed, so most INSERTs meet
 * a row already there, and the direct side's INSERTs into diff_reg carry
 * the ON CONFLICT clause the default action splices in. Every reply must
 * be the same: tags, RETURNING rows, errors and their positions, the
 * state of the block. */
static void test_diff_duplicates(void **state)
{
    static const uint64_t seeds[] = { 41, 42, 43 };
    (void)state;
    run(&(struct diff_run){ .config = "[table public.diff_reg]\nconflict = k\n", .seeds = seeds,
                            .nseeds = sizeof seeds / sizeof seeds[0], .dup_keys = 12 });
}

/* A proxy that reads no message over 1 kB: longer ones (a document in a
 * Query, a Parse with a long comment, a Bind of a long value) stream
 * through unread, whatever they do to the statements the proxy knew. What
 * the proxy forgets behind them keeps its form where the search_path or
 * role changes later (README, Limitations): the sessions keep theirs. */
static void test_diff_streamed(void **state)
{
    static const uint64_t seeds[] = { 61, 62 };
    (void)state;
    struct itest_proxy *p =
        run(&(struct diff_run){ .config = "max_held_message = 1kB\n[table public.diff_reg]\n"
                                          "conflict = k\n",
                                .seeds = seeds, .nseeds = sizeof seeds / sizeof seeds[0],
                                .no_identity = true });
    assert_true(itest_proxy_log_contains(p, "'P' message of"));
    assert_true(itest_proxy_log_contains(p, "'B' message of"));
}

/* Clients on TLS, and the proxy on TLS to the server: records carry the
 * messages in other cuts than the segments of a plain socket. */
static void test_diff_tls(void **state)
{
    static const uint64_t seeds[] = { 51, 52 };
    char config[2048];
    const char *certs = itest_env("IDEM_TEST_CERTS");
    (void)state;
    snprintf(config, sizeof config,
             "client_tls_sslmode = require\nclient_tls_cert_file = %s/proxy.crt\n"
             "client_tls_key_file = %s/proxy.key\nserver_tls_sslmode = require\n"
             "[table public.diff_reg]\nconflict = k\n",
             certs, certs);
    run(&(struct diff_run){ .config = config, .seeds = seeds,
                            .nseeds = sizeof seeds / sizeof seeds[0], .tls = true });
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        ITEST(test_diff_rewriting),
        ITEST(test_diff_small_cache),
        ITEST(test_diff_reloads),
        ITEST(test_diff_reloads_settings),
        ITEST(test_diff_reused_servers),
        ITEST(test_diff_duplicates),
        ITEST(test_diff_tls),
        ITEST(test_diff_streamed),
    };
    return itest_main(argc, argv, "idemproxy against PostgreSQL", tests,
                      sizeof tests / sizeof tests[0]);
}
