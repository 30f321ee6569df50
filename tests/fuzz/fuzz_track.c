/* libFuzzer target: the request queue fed an arbitrary exchange. Each byte
 * pair is (direction, type): the queue must never crash or leak, whatever
 * order client and server messages come in. */
#include <stddef.h>
#include <stdint.h>

#include "track.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct track t;
    track_init(&t, NULL, NULL);
    for (size_t i = 0; i + 1 < size; i += 2) {
        char type = (char)data[i + 1];
        if (data[i] & 1)
            track_server_msg(&t, type, "ITE"[data[i] % 3]);
        else
            track_client_msg(&t, type, NULL);
        (void)track_idle(&t);
    }
    track_free(&t);
    return 0;
}
