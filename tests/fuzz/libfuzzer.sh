#!/bin/bash
# A short coverage-guided run of every fuzz target under libFuzzer, with
# AddressSanitizer and UBSan: `make check` runs it when ./configure found a
# clang that can build fuzzers. The targets and the pure core they call are
# compiled here with clang, since coverage needs the core instrumented too.
#
# Environment (set by make check): CLANG, SRCDIR (the source tree), FUZZ_LIBS (to
# link the core), FUZZ_SECONDS (per target, default 10).
# A crash leaves its input in the work directory, which is then kept and
# named.
set -euo pipefail

: "${CLANG:?CLANG must name clang}"
: "${SRCDIR:?SRCDIR must name the source tree}"
seconds=${FUZZ_SECONDS:-10}
work=$(mktemp -d "${TMPDIR:-/tmp}/idemproxy-fuzz.XXXXXX")
keep=no
trap '[ $keep = yes ] || rm -rf "$work"' EXIT

core=(pgproto track config rewrite shape params catalog rules translate session scram authfile tls login log)
flags=(-g -O1 -std=gnu11 -D_GNU_SOURCE -I"$SRCDIR/src" -fsanitize=fuzzer-no-link,address,undefined
       -fno-sanitize-recover=undefined)
objs=()
for name in "${core[@]}"; do
    "$CLANG" "${flags[@]}" -c "$SRCDIR/src/$name.c" -o "$work/$name.o"
    objs+=("$work/$name.o")
done

failed=0
for src in "$SRCDIR"/tests/fuzz/fuzz_*.c; do
    target=$(basename "$src" .c)
    corpus=$SRCDIR/tests/fuzz/corpus/${target#fuzz_}
    "$CLANG" "${flags[@]}" -fsanitize=fuzzer "$src" "${objs[@]}" ${FUZZ_LIBS:-} -o "$work/$target"
    # libFuzzer adds what it learns to the first corpus directory: a copy,
    # so the seeds in the tree stay as they are.
    mkdir -p "$work/$target.corpus"
    cp "$corpus"/* "$work/$target.corpus/" 2>/dev/null || true
    echo "libfuzzer.sh: $target for $seconds s"
    if ! (cd "$work" && "./$target" -max_total_time="$seconds" -print_final_stats=1 \
            -artifact_prefix="$work/$target-" "$target.corpus" >"$target.log" 2>&1); then
        echo "libfuzzer.sh: FAILED: $target; its log and crash inputs are in $work" >&2
        tail -40 "$work/$target.log"
        failed=1
        keep=yes
    else
        grep -E '^stat::number_of_executed_units|^stat::new_units_added' "$work/$target.log" | \
            sed "s/^/libfuzzer.sh: $target: /"
    fi
done
exit $failed
