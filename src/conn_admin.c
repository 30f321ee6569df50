/* conn_admin: the admin console (see conn_int.h). */
#include "conn_int.h"

#include <string.h>

#include "admin.h"

/* The largest command the console reads: within the usual read limit. */
#define ADMIN_QUERY_MAX READ_CHUNK

/* The client authenticated to the admin console: the proxy finishes the
 * login itself, with what a PostgreSQL client expects to be told. */
void admin_begin(struct conn *c)
{
    static const char *const params[][2] = {
        { "server_version", "15.0 (idemproxy " PACKAGE_VERSION ")" },
        { "server_encoding", "UTF8" },
        { "client_encoding", "UTF8" },
        { "DateStyle", "ISO, MDY" },
        { "integer_datetimes", "on" },
        { "standard_conforming_strings", "on" },
        { "application_name", "" },
    };
    struct evbuffer *out = sock_output(c->client);
    uint8_t msg[128];

    evbuffer_add(out, msg, pg_build_auth(msg, sizeof(msg), 0, NULL, 0));
    for (size_t i = 0; i < sizeof(params) / sizeof(params[0]); i++) {
        size_t body = strlen(params[i][0]) + strlen(params[i][1]) + 2;
        uint8_t head[PG_HEAD_LEN] = { 'S' };
        pg_put_u32(head + 1, (uint32_t)body + 4);
        evbuffer_add(out, head, sizeof(head));
        evbuffer_add(out, params[i][0], strlen(params[i][0]) + 1);
        evbuffer_add(out, params[i][1], strlen(params[i][1]) + 1);
    }
    evbuffer_add(out, "Z\0\0\0\5I", 6);
    sock_flush(c->client);
    c->state = CONN_ADMIN;
    if (c->login_timer) {
        event_free(c->login_timer);
        c->login_timer = NULL;
    }
    conn_log(LOG_INFO, c, "admin console");
}

void admin_read(struct conn *c)
{
    struct pg_msg_head head;
    const uint8_t *msg;

    while (c->state == CONN_ADMIN) {
        enum own_msg got = next_own_msg(c, ADMIN_QUERY_MAX, &head, &msg);
        if (got == OWN_MSG_NONE)
            return;
        if (got == OWN_MSG_BAD) {
            fail_client(c, "08P01", "invalid message to the admin console",
                        "protocol violation by client");
            return;
        }
        if (head.type == 'X') {
            close_pair(c, "client disconnected");
            return;
        }
        if (head.type != 'Q') {
            fail_client(c, "08P01", "the admin console speaks the simple query protocol only",
                        "protocol violation by client");
            return;
        }
        size_t at = 0, len = 0;
        enum admin_cmd cmd = ADMIN_UNKNOWN;
        if (pg_statement_text('Q', msg + PG_HEAD_LEN, head.len - 4, &at, &len)) {
            const char *text = (const char *)msg + PG_HEAD_LEN + at;
            cmd = admin_parse(text, len);
            conn_log(LOG_INFO, c, "admin: %.*s", len > LOG_TEXT_MAX ? LOG_TEXT_MAX : (int)len,
                     text);
        }
        evbuffer_drain(sock_input(c->client), (size_t)head.len + 1);
        admin_run(c->worker, cmd, sock_output(c->client));
        evbuffer_add(sock_output(c->client), "Z\0\0\0\5I", 6);
        sock_flush(c->client);
    }
}
