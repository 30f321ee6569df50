/* libFuzzer target: the auth_file parser on arbitrary text. */
#include <stddef.h>
#include <stdint.h>

#include "authfile.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[CONFIG_ERR_LEN];
    struct auth_file *f = authfile_parse((const char *)data, size, "fuzz.txt", err);
    enum auth_secret_kind kind;

    if (f)
        (void)authfile_secret(f, "postgres", &kind);
    authfile_unref(f);
    return 0;
}
