/* libFuzzer target: every parser of wire bytes, on arbitrary input. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pgproto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* An error with a context becomes the one the proxy writes for a value a
 * Bind could not convert: the context's last line out, a position in. The
 * cut must fall inside the context, and the result be an error again. */
static void splice_context(const struct pg_msg *msg, const struct pg_error *err)
{
    size_t kept;
    pg_context_param(err->where, &kept);
    if (kept > strlen(err->where))
        __builtin_trap();
    char *context = strndup(err->where, kept);
    if (!context)
        return;
    const char *values[] = { "1", context };
    size_t need = pg_fields_splice(NULL, 0, 'E', msg->body, msg->body_len, 'W', "PW", values,
                                   kept > 0 ? 2 : 1);
    uint8_t *out = need != SIZE_MAX ? malloc(need) : NULL;
    struct pg_msg spliced;
    struct pg_error again;
    size_t used;
    if (out && (pg_fields_splice(out, need, 'E', msg->body, msg->body_len, 'W', "PW", values,
                                 kept > 0 ? 2 : 1) != need ||
                pg_msg_next(out, need, &spliced, &used) != PG_NEXT_OK || used != need ||
                !pg_error_parse(spliced.body, spliced.body_len, &again) ||
                !again.position))
        __builtin_trap();
    free(out);
    free(context);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct pg_startup su;
    const char *why;
    if (pg_startup_parse(data, size, &su, &why) == PG_STARTUP_MESSAGE) {
        uint8_t answer[PG_STARTUP_MAX_LEN + 16];
        size_t need = pg_build_negotiation(answer, sizeof(answer), data, 2);
        if (need > sizeof(answer))
            __builtin_trap();
    }

    struct pg_msg msg;
    size_t used, off = 0;
    while (pg_msg_next(data + off, size - off, &msg, &used) == PG_NEXT_OK) {
        struct pg_error err;
        if ((msg.type == 'E' || msg.type == 'N') && pg_error_parse(msg.body, msg.body_len, &err) &&
            err.where)
            splice_context(&msg, &err);
        else if (msg.type == 'Z')
            pg_ready_status(msg.body, msg.body_len);
        off += used;
    }
    return 0;
}
