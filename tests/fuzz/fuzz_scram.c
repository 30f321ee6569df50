/* libFuzzer target: SCRAM messages from an untrusted peer, both ways. The
 * input is split at the first NUL: a client-first-message and a
 * client-final-message for the proxy as server, then the same bytes as a
 * server-first and server-final for the proxy as client. Nothing may crash,
 * leak, or succeed without the right proof. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "scram.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint8_t salt[16] = "idemproxy-fuzz!";
    static const uint8_t cb[32] = { 1, 2, 3 };
    /* PBKDF2 once, not per input. */
    static struct scram_secret secret;
    static bool have_secret;
    const uint8_t *nul = memchr(data, '\0', size);
    const char *first = (const char *)data, *second = nul ? (const char *)nul + 1 : "";
    size_t first_len = nul ? (size_t)(nul - data) : size;
    size_t second_len = nul ? size - first_len - 1 : 0;
    const char *why;
    char *out = NULL;

    if (!have_secret &&
        !(have_secret = scram_secret_from_password("pencil", salt, sizeof(salt), 4096, &secret)))
        return 0;

    struct scram_server s;
    scram_server_init(&s, &secret, true, cb, sizeof(cb));
    if (scram_server_first(&s, first_len & 1 ? SCRAM_MECHANISM_PLUS : SCRAM_MECHANISM, first,
                           first_len, &out, &why) == SCRAM_CONTINUE) {
        free(out);
        out = NULL;
        /* A guessed proof must never pass. */
        if (scram_server_final(&s, second, second_len, &out, &why) == SCRAM_DONE)
            abort();
    }
    free(out);
    out = NULL;
    scram_server_free(&s);

    struct scram_client c;
    uint8_t key[SCRAM_KEY_LEN] = { 0 };
    if (scram_client_init(&c, key, &secret, SCRAM_MECHANISM, false, NULL, 0, &out)) {
        free(out);
        out = NULL;
        if (scram_client_final(&c, first, first_len, &out, &why) == SCRAM_CONTINUE)
            (void)scram_client_verify(&c, second, second_len, &why);
        free(out);
        scram_client_free(&c);
    }
    return 0;
}
