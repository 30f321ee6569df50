/* libFuzzer target: every parser of wire bytes, on arbitrary input. */
#include <stddef.h>
#include <stdint.h>

#include "pgproto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

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
        if (msg.type == 'E' || msg.type == 'N')
            pg_error_parse(msg.body, msg.body_len, &err);
        else if (msg.type == 'Z')
            pg_ready_status(msg.body, msg.body_len);
        off += used;
    }
    return 0;
}
