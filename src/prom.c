#include "prom.h"

#include <inttypes.h>
#include <string.h>

void prom_escape(struct evbuffer *out, const char *value)
{
    const char *run = value;

    for (const char *p = value; *p; p++) {
        const char *esc = *p == '\\' ? "\\\\" : *p == '"' ? "\\\"" : *p == '\n' ? "\\n" : NULL;
        if (!esc)
            continue;
        evbuffer_add(out, run, (size_t)(p - run));
        evbuffer_add(out, esc, 2);
        run = p + 1;
    }
    evbuffer_add(out, run, strlen(run));
}

void prom_family(struct evbuffer *out, const char *name, const char *type, const char *help)
{
    evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void sample_head(struct evbuffer *out, const char *name, const char *const *labels)
{
    evbuffer_add(out, name, strlen(name));
    if (!labels || !labels[0])
        return;
    evbuffer_add(out, "{", 1);
    for (size_t i = 0; labels[i] && labels[i + 1]; i += 2) {
        evbuffer_add_printf(out, "%s%s=\"", i ? "," : "", labels[i]);
        prom_escape(out, labels[i + 1]);
        evbuffer_add(out, "\"", 1);
    }
    evbuffer_add(out, "}", 1);
}

void prom_sample(struct evbuffer *out, const char *name, const char *const *labels,
                 uint64_t value)
{
    sample_head(out, name, labels);
    evbuffer_add_printf(out, " %" PRIu64 "\n", value);
}

void prom_sample_double(struct evbuffer *out, const char *name, const char *const *labels,
                        double value)
{
    sample_head(out, name, labels);
    evbuffer_add_printf(out, " %.9g\n", value);
}
