/* libFuzzer target: the configuration parser on arbitrary text. */
#include <stddef.h>
#include <stdint.h>

#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[CONFIG_ERR_LEN];
    struct config *cfg = config_parse((const char *)data, size, "fuzz.ini", err);
    config_unref(cfg);
    return 0;
}
