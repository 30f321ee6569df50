#include "translate.h"

#include <string.h>

static const char *const reason_names[TR_COUNT] = {
    [TR_TRANSLATED] = "translated",
    [TR_NOT_UNIQUE] = "not_unique_violation",
    [TR_NOT_RECOGNISED] = "not_recognised",
    [TR_IN_ROUTINE] = "in_function_or_trigger",
    [TR_OTHER_TABLE] = "other_table",
    [TR_DISABLED] = "disabled",
    [TR_RETURNING] = "returning",
    [TR_NOT_ALONE] = "not_alone",
    [TR_NOT_GUARDED] = "not_guarded",
    [TR_FAILED_BLOCK] = "failed_block",
    [TR_NOT_SYNC] = "not_followed_by_sync",
    [TR_ROLLBACK_FAILED] = "rollback_failed",
};

const char *translate_reason_name(enum translate_reason reason)
{
    return reason < TR_COUNT ? reason_names[reason] : "unknown";
}

static enum translate_verdict pass(enum translate_reason reason, enum translate_reason *why)
{
    *why = reason;
    return TRANSLATE_PASS;
}

enum translate_verdict translate_decide(const struct translate_request *req,
                                        const struct translate_error *err,
                                        enum translate_reason *why)
{
    if (!err->sqlstate || strcmp(err->sqlstate, "23505") != 0)
        return pass(TR_NOT_UNIQUE, why);
    if (req->table < 0)
        return pass(TR_NOT_RECOGNISED, why);
    /* A trigger's or a function's INSERT is not the statement's, even into
     * the same table: the statement's own row may well be new. */
    if (err->in_routine)
        return pass(TR_IN_ROUTINE, why);
    if (err->table != req->table)
        return pass(TR_OTHER_TABLE, why);
    if (!req->enabled)
        return pass(TR_DISABLED, why);
    /* A skipped row of INSERT ... RETURNING answers with a RowDescription
     * and no rows; in the simple protocol none has come yet, and only the
     * server knows it. (Extended clients have it from Describe.) */
    if (req->returning && !req->extended)
        return pass(TR_RETURNING, why);
    *why = TR_TRANSLATED;
    if (req->guarded)
        return TRANSLATE_ROLLBACK;
    switch (req->txn_status) {
    case 'I':
        /* The implicit transaction holds this statement alone: rolling it
         * back undid nothing else. */
        if (req->statements != 1)
            return pass(TR_NOT_ALONE, why);
        /* After an extended error the server skips to Sync: anything the
         * client sent before it would be silently lost. */
        return req->extended ? TRANSLATE_AWAIT : TRANSLATE_COMPLETE;
    case 'T':
        return pass(TR_NOT_GUARDED, why);
    default:
        return pass(TR_FAILED_BLOCK, why);
    }
}

enum translate_verdict translate_await(char next_type, enum translate_reason *why)
{
    if (next_type != 'S')
        return pass(TR_NOT_SYNC, why);
    *why = TR_TRANSLATED;
    return TRANSLATE_COMPLETE;
}

bool translate_guard(const struct translate_request *req, bool certain)
{
    return certain && req->table >= 0 && req->enabled && req->txn_status == 'T' &&
           (req->extended || (req->statements == 1 && !req->returning));
}
