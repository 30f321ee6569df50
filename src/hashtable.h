#ifndef IDEM_HASHTABLE_H
#define IDEM_HASHTABLE_H

/* uthash with xxHash's XXH3 as its hash function. Every hash table of the
 * proxy includes this instead of <uthash.h>: the keys that matter are SQL
 * texts of a hundred bytes and more (the decision cache, the statement
 * cache), looked up at every Query and Parse, and XXH3 reads them a word
 * at a time where uthash's own function takes a dozen instructions a byte.
 * Neither is seeded, so the tables' exposure to chosen colliding keys is
 * what it was. */

#define XXH_INLINE_ALL
#include <xxhash.h>

#define HASH_FUNCTION(keyptr, keylen, hashv) \
    ((hashv) = (unsigned)XXH3_64bits((keyptr), (size_t)(keylen)))

#include <uthash.h>

#endif
