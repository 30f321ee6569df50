/*
 * authfile: the auth_file, in PgBouncer's userlist format.
 *
 * One entry per line: "user" "secret", each in double quotes (a quote
 * inside is doubled); blank lines and lines starting with ';' are ignored.
 * The secret is a SCRAM secret (SCRAM-SHA-256$...), an md5 hash ("md5" and
 * 32 hex digits) or a password in plain text. Like the configuration it is
 * an immutable snapshot: parse builds it whole or reports FILE:LINE: why.
 * Pure: text in, snapshot out.
 */
#ifndef IDEM_AUTHFILE_H
#define IDEM_AUTHFILE_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"

enum auth_secret_kind {
    AUTH_SECRET_SCRAM,
    AUTH_SECRET_MD5,
    AUTH_SECRET_PLAIN,
};

struct auth_file;

/* Parses text (len bytes, need not be NUL-terminated); filename only names
 * the source in messages. NULL with err "FILE:LINE: why" when malformed (a
 * user twice, an unterminated quote, a SCRAM secret that does not parse...). */
struct auth_file *authfile_parse(const char *text, size_t len, const char *filename,
                                 char err[CONFIG_ERR_LEN]);

/* Reads and parses a file; errors as for authfile_parse(). */
struct auth_file *authfile_load(const char *path, char err[CONFIG_ERR_LEN]);

/* The secret for user, or NULL; *kind says what it is. */
const char *authfile_secret(const struct auth_file *f, const char *user,
                            enum auth_secret_kind *kind);

size_t authfile_count(const struct auth_file *f);

/* Shared read-only by every worker thread: authfile_ref() adds a
 * reference, authfile_unref() drops one and frees with the last. */
struct auth_file *authfile_ref(struct auth_file *f);
void authfile_unref(struct auth_file *f);

#endif
