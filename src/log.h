/*
 * log: leveled log lines to stderr or a file.
 *
 * One line per event, with a timestamp and level. Connection code prefixes
 * its lines with the connection's id, peer, user and database through
 * the conn_log macro (conn_int.h); this module only formats and writes.
 */
#ifndef IDEM_LOG_H
#define IDEM_LOG_H

#include <stdbool.h>

enum log_level {
    LOG_ERROR,
    LOG_WARNING,
    LOG_INFO,
    LOG_DEBUG,
};

/* Parses "error", "warning", "info" or "debug"; false otherwise. */
bool log_level_parse(const char *s, enum log_level *out);
const char *log_level_name(enum log_level level);

void log_set_level(enum log_level level);
bool log_enabled(enum log_level level);

/* Sends further lines to path (appending), or to stderr when path is NULL.
 * Returns false, leaving the old destination, when the file cannot be
 * opened. */
bool log_set_file(const char *path);

void log_msg(enum log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warning(...) log_msg(LOG_WARNING, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) \
    do { if (log_enabled(LOG_DEBUG)) log_msg(LOG_DEBUG, __VA_ARGS__); } while (0)

#endif
