/*
 * prom: the Prometheus text exposition format, version 0.0.4.
 *
 * Only what the proxy's /metrics needs: a family's HELP and TYPE lines and
 * samples with labels, values escaped as the format requires. Pure: it
 * appends text to an evbuffer and does nothing else.
 */
#ifndef IDEM_PROM_H
#define IDEM_PROM_H

#include <stdint.h>

#include <event2/buffer.h>

/* "# HELP name help" and "# TYPE name type" (counter, gauge, histogram). */
void prom_family(struct evbuffer *out, const char *name, const char *type, const char *help);

/* One sample: name{labels} value. labels holds pairs of label name and
 * value (NULL-terminated; NULL or {NULL} for none); values are escaped. */
void prom_sample(struct evbuffer *out, const char *name, const char *const *labels,
                 uint64_t value);

/* The same with a value that is not a whole number (seconds). */
void prom_sample_double(struct evbuffer *out, const char *name, const char *const *labels,
                        double value);

/* Appends value escaped for a label: \ " and newline become \\ \" \n. */
void prom_escape(struct evbuffer *out, const char *value);

#endif
