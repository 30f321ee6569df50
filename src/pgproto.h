/*
 * pgproto: the PostgreSQL v3 wire format, as pure functions over bytes.
 *
 * Nothing here touches a socket. The connection code feeds these functions
 * the bytes it has and acts on what they return, so the unit tests and the
 * fuzzers can drive every corner without a server.
 */
#ifndef IDEM_PGPROTO_H
#define IDEM_PGPROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A regular message: one type byte, then a 4-byte big-endian length that
 * counts itself and the body but not the type byte. */
#define PG_HEAD_LEN 5

/* The packets a client sends before it has a type byte. */
#define PG_STARTUP_MIN_LEN 8     /* length + protocol code */
#define PG_STARTUP_MAX_LEN 10000 /* the server's own limit */
#define PG_CANCEL_KEY_MAX 256    /* protocol 3.2 keys are 4..256 bytes */
/* A BackendKeyData body: the backend's process ID, then its key. */
#define PG_BACKEND_KEY_MIN (4 + 4)
#define PG_BACKEND_KEY_MAX (4 + PG_CANCEL_KEY_MAX)

#define PG_PROTOCOL(major, minor) (((uint32_t)(major) << 16) | (uint32_t)(minor))
#define PG_CANCEL_REQUEST_CODE PG_PROTOCOL(1234, 5678)
#define PG_SSL_REQUEST_CODE PG_PROTOCOL(1234, 5679)
#define PG_GSSENC_REQUEST_CODE PG_PROTOCOL(1234, 5680)

struct pg_msg_head {
    char type;
    uint32_t len; /* the length field: body + 4 */
};

enum pg_next {
    PG_NEXT_MORE, /* not enough bytes yet for a whole head (or message) */
    PG_NEXT_OK,
    PG_NEXT_BAD,  /* the length field is below 4: the stream is corrupt */
};

/* Decodes the head at the start of buf. PG_NEXT_OK fills *head. */
enum pg_next pg_msg_head(const uint8_t *buf, size_t len, struct pg_msg_head *head);

/* A whole message in contiguous memory. body points into the caller's
 * buffer and is valid as long as it is. */
struct pg_msg {
    char type;
    const uint8_t *body;
    size_t body_len;
};

/* Takes the next whole message from buf; *used is the number of bytes it
 * spans (0 unless PG_NEXT_OK). */
enum pg_next pg_msg_next(const uint8_t *buf, size_t len, struct pg_msg *msg, size_t *used);

/* Where the SQL text of a Query ('Q') or Parse ('P') body is: *at and *len
 * (the text's own NUL follows it at body[*at + *len]). False when the body is
 * not a well-formed message of that type. */
bool pg_statement_text(char type, const uint8_t *body, size_t len, size_t *at, size_t *text_len);

/* Reads a ParameterStatus body: name and value point into it. False when
 * malformed. */
bool pg_param_status(const uint8_t *body, size_t len, const char **name, const char **value);

enum pg_startup_kind {
    PG_STARTUP_INVALID,
    PG_STARTUP_SSL_REQUEST,
    PG_STARTUP_GSSENC_REQUEST,
    PG_STARTUP_CANCEL,
    PG_STARTUP_MESSAGE,
};

/* A parsed startup-phase packet. Strings point into the packet. */
struct pg_startup {
    enum pg_startup_kind kind;
    uint32_t protocol;          /* PG_STARTUP_MESSAGE: the requested version */
    const char *user;           /* NULL when absent */
    const char *database;       /* NULL when absent (the server then uses user) */
    const char *application_name;
    bool replication;           /* a "replication" parameter was present */
    uint32_t cancel_pid;        /* PG_STARTUP_CANCEL */
    size_t cancel_key_len;
};

/* Length check for the first four bytes of a startup-phase packet, before the
 * rest has arrived: true when the packet may be read at all. */
bool pg_startup_len_ok(uint32_t len);

/* Classifies and validates a whole startup-phase packet (length field
 * included). On PG_STARTUP_INVALID, *why says what is wrong in words fit for
 * an ErrorResponse. */
enum pg_startup_kind pg_startup_parse(const uint8_t *pkt, size_t len,
                                      struct pg_startup *out, const char **why);

/* The fields of an ErrorResponse or NoticeResponse body that the proxy uses.
 * Strings point into the body; absent fields are NULL. */
struct pg_error {
    const char *severity; /* 'V': never translated, unlike 'S' */
    const char *code;     /* 'C': the SQLSTATE */
    const char *message;  /* 'M' */
    const char *schema;   /* 's' */
    const char *table;    /* 't' */
    const char *constraint; /* 'n' */
    const char *datatype; /* 'd' */
    const char *position; /* 'P': 1-based character offset into the statement text */
    const char *where;    /* 'W': the context, when raised inside a function or trigger */
};

/* Returns false when the body is not a well-formed field list. */
bool pg_error_parse(const uint8_t *body, size_t len, struct pg_error *out);

/* Writes a complete message of the given type whose body is the field list
 * body with the first field of type field taken out and, in its place, n
 * fields: types[i] with values[i]. Returns the bytes it needs; when that
 * exceeds cap nothing is written. SIZE_MAX when body is not a well-formed
 * field list or has no such field. */
size_t pg_fields_splice(uint8_t *buf, size_t cap, char type, const uint8_t *body, size_t len,
                        char field, const char *types, const char *const values[], size_t n);

/* The same with field's value replaced by value. */
size_t pg_fields_replace(uint8_t *buf, size_t cap, char type, const uint8_t *body, size_t len,
                         char field, const char *value);

/* A Bind's parameter count is an Int16. */
#define PG_MAX_PARAMS 65535

/* The parameter an error in a Bind is about. PostgreSQL ends the context
 * (field W) of an error in converting a parameter's value with a line
 * naming it, "unnamed portal parameter $2 = '...'" (in the server's
 * language, the number as it is). Returns that number, 0 when the last
 * line names none; *kept is the length of the context before that line,
 * without the newline (0: the line was all of it). */
size_t pg_context_param(const char *where, size_t *kept);

/* Terminate ('X'), whole. */
extern const uint8_t PG_TERMINATE[5];

/* A message of type whose body is the n parts, written at buf + at when it
 * fits in cap (buf may be NULL with cap 0 to measure). Returns at plus the
 * message's size. */
size_t pg_put_msg(uint8_t *buf, size_t cap, size_t at, char type, const void *const parts[],
                  const size_t lens[], size_t n);

/* Builders of messages the proxy sends on its own. Each writes a complete
 * message (or sequence) into buf and returns the bytes it needs; when that
 * exceeds cap nothing is written. */

/* A Query ('Q'). */
size_t pg_build_query(uint8_t *buf, size_t cap, const char *sql);

/* A CommandComplete ('C') with the given tag, such as "INSERT 0 0". */
size_t pg_build_command_complete(uint8_t *buf, size_t cap, const char *tag);

/* Runs sql inside the client's extended batch without touching its unnamed
 * statement or portal: Parse, Bind and Execute on name (used for both the
 * statement and the portal), then Close of both (the message types in
 * PG_EXTENDED_RUN_MESSAGES, for the caller's request tracking). Its replies
 * are ParseComplete, BindComplete, CommandComplete, CloseComplete twice. */
#define PG_EXTENDED_RUN_MESSAGES "PBECC"
#define PG_EXTENDED_RUN_REPLIES "12C33"
size_t pg_build_extended_run(uint8_t *buf, size_t cap, const char *name, const char *sql);

/* Runs the statements sql[0..n) as a request of their own between the
 * client's, leaving the client's unnamed statement alone, as a Query would
 * not: a Close of name's statement (a run that failed midway leaves it),
 * the extended run of each statement in turn on name, a Sync; one implicit
 * transaction, so that what one statement sets LOCAL holds for the next
 * and ends with the run. Its messages are PG_STANDALONE_RUN_FIRST, the
 * PG_EXTENDED_RUN_MESSAGES of each statement, PG_STANDALONE_RUN_LAST; its
 * replies CloseComplete, the PG_EXTENDED_RUN_REPLIES of each statement
 * (with its DataRows before its CommandComplete) and ReadyForQuery. After
 * an error the server skips the rest up to the Sync. */
#define PG_STANDALONE_RUN_FIRST 'C'
#define PG_STANDALONE_RUN_LAST 'S'
size_t pg_build_standalone_run(uint8_t *buf, size_t cap, const char *name,
                               const char *const sql[], size_t n);

/* Authentication request codes (the first int32 of an 'R' body). */
#define PG_AUTH_OK 0
#define PG_AUTH_CLEARTEXT 3
#define PG_AUTH_MD5 5
#define PG_AUTH_SASL 10
#define PG_AUTH_SASL_CONTINUE 11
#define PG_AUTH_SASL_FINAL 12

/* An Authentication ('R') message with code and data after it (for SASL:
 * the mechanism list, or the server's SCRAM message). */
size_t pg_build_auth(uint8_t *buf, size_t cap, uint32_t code, const void *data, size_t len);

/* The NegotiateProtocolVersion ('v') that an end speaking protocol 3.0 up
 * to 3.newest_minor owes the client of startup (a StartupMessage that
 * pg_startup_parse accepted, length field included): when it asked for a
 * newer minor version, or for protocol options (names starting "_pq_."),
 * none of which are known. It names the version used and lists the
 * options. Returns the bytes it needs, 0 when none is owed; when that
 * exceeds cap nothing is written. */
size_t pg_build_negotiation(uint8_t *buf, size_t cap, const uint8_t *startup,
                            uint16_t newest_minor);

/* The client's SASLInitialResponse ('p'): mechanism, then data. */
size_t pg_build_sasl_initial(uint8_t *buf, size_t cap, const char *mechanism, const void *data,
                             size_t len);

/* The client's SASLResponse ('p'): data. */
size_t pg_build_sasl_response(uint8_t *buf, size_t cap, const void *data, size_t len);

/* Reads an 'R' body: its code, and the data after it. */
bool pg_auth_request(const uint8_t *body, size_t len, uint32_t *code, const uint8_t **data,
                     size_t *data_len);

/* Reads a SASLInitialResponse body: the mechanism and the client's data
 * (*data is NULL when the client sent none). */
bool pg_sasl_initial(const uint8_t *body, size_t len, const char **mechanism,
                     const uint8_t **data, size_t *data_len);

/* Reads ReadyForQuery's transaction status ('I', 'T' or 'E'); 0 if malformed. */
char pg_ready_status(const uint8_t *body, size_t len);

/* Writes a complete ErrorResponse message (severity both as S and V) into
 * buf. Returns the number of bytes it needs; when that exceeds cap nothing
 * is written. */
size_t pg_error_build(uint8_t *buf, size_t cap, const char *severity,
                      const char *sqlstate, const char *message);

static inline uint32_t pg_get_u32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline void pg_put_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static inline void pg_put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

#endif
