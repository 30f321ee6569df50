/* Unit tests of the Prometheus text format helpers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "prom.h"

/* The evbuffer's text, NUL-terminated, malloc'ed; the buffer is freed. */
static char *text_of(struct evbuffer *b)
{
    size_t len = evbuffer_get_length(b);
    char *s = malloc(len + 1);
    assert_non_null(s);
    evbuffer_remove(b, s, len);
    s[len] = '\0';
    evbuffer_free(b);
    return s;
}

static void test_escape(void **state)
{
    (void)state;
    struct evbuffer *b = evbuffer_new();
    prom_escape(b, "plain");
    prom_escape(b, "|a\"b\\c\nd|");
    prom_escape(b, "");
    char *s = text_of(b);
    assert_string_equal(s, "plain|a\\\"b\\\\c\\nd|");
    free(s);
}

static void test_samples(void **state)
{
    (void)state;
    struct evbuffer *b = evbuffer_new();
    prom_family(b, "x_total", "counter", "what x counts");
    prom_sample(b, "x_total", NULL, 0);
    prom_sample(b, "x_total", (const char *[]){ NULL }, 1);
    prom_sample(b, "x_total", (const char *[]){ "table", "public.\"Odd\"", "reason", "r", NULL },
                18446744073709551615u);
    prom_sample_double(b, "x_seconds_sum", (const char *[]){ "direction", "to_server", NULL },
                       0.25);
    char *s = text_of(b);
    assert_string_equal(s, "# HELP x_total what x counts\n"
                           "# TYPE x_total counter\n"
                           "x_total 0\n"
                           "x_total 1\n"
                           "x_total{table=\"public.\\\"Odd\\\"\",reason=\"r\"} 18446744073709551615\n"
                           "x_seconds_sum{direction=\"to_server\"} 0.25\n");
    free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_escape),
        cmocka_unit_test(test_samples),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
