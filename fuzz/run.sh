#!/usr/bin/env bash
# Fuzz the C API and the Python API for a bounded time, half each:
#   fuzz/fuzz_core.c  the C API under AddressSanitizer + UndefinedBehaviorSanitizer (+ leaks):
#                     a libFuzzer target built with clang, or, where no clang with libFuzzer can
#                     be had, the same target with its built-in random driver built with $CC (gcc)
#   fuzz/fuzz_api.py  the Python API against greedyprune.reference: atheris (coverage-guided)
#                     when installed, else its built-in random driver
# Usage: bash fuzz/run.sh                    about 2 minutes in all (what .ci/run runs)
#        FUZZ_SECONDS=3600 bash fuzz/run.sh  an hour
# Settings: FUZZ_SECONDS (120), FUZZ_SEED (1: runs are reproducible), PYTHON (.venv/bin/python),
# CC (gcc, for the fallback), FUZZ_INSTALL=0 (never apt-get install clang when it is missing).
# Each part prints the number of calls it made. A failing input is saved as fuzz/out/crash-*
# (C) or fuzz/out/python/crash-* (Python), with the command that replays it; the exit status is
# non-zero. Corpora grow in fuzz/corpus/ across local runs; fuzz/out/ and fuzz/corpus/ are not
# committed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"
seconds="${FUZZ_SECONDS:-120}"
seed="${FUZZ_SEED:-1}"
python="${PYTHON:-.venv/bin/python}"
out="fuzz/out"
corpus="fuzz/corpus"
mkdir -p "$out/bin" "$out/python" "$corpus/core" "$corpus/python"
c_seconds=$((seconds / 2))
py_seconds=$((seconds - c_seconds))

# An allocation beyond 1 GiB fails (returns NULL) as on a small machine: the C core must then
# report GP_ENOMEM, and a view that repeats elements beyond any memory cannot take the machine's.
asan="allocator_may_return_null=1:max_allocation_size_mb=1024:detect_leaks=1"
export ASAN_OPTIONS="$asan${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"

# --- the C target --------------------------------------------------------------------------

# 0 if $1 builds a libFuzzer program with the flags that follow.
builds_fuzzer() {
    local compiler="$1"
    shift
    printf '%s\n' '#include <stddef.h>' '#include <stdint.h>' \
        'int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }' |
        "$compiler" -x c - -fsanitize=fuzzer,address "$@" -o "$out/bin/probe" >/dev/null 2>&1
}

# Install clang (and LLVM's OpenMP) with apt-get, quietly, where this runs as root on a
# Debian-like system; FUZZ_INSTALL=0 turns this off.
install_clang() {
    [ "${FUZZ_INSTALL:-1}" != 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || return 1
    echo "fuzz: installing clang with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 apt-get update -qq >/dev/null 2>&1 || true
    timeout 600 apt-get install -y -qq --no-install-recommends clang libomp-dev >/dev/null 2>&1
}

clang_cc=""
for candidate in clang clang-19 clang-18 clang-17 clang-16 clang-15 clang-14; do
    if command -v "$candidate" >/dev/null && builds_fuzzer "$candidate"; then
        clang_cc="$candidate"
        break
    fi
done
if [ -z "$clang_cc" ] && install_clang && builds_fuzzer clang; then
    clang_cc=clang
fi

common=(-std=c99 -g -O2 -Wall -Wextra -Icsrc csrc/greedyprune.c fuzz/fuzz_core.c -lm -pthread)
core="$out/bin/fuzz_core"
if [ -n "$clang_cc" ]; then
    # trace-cmp (libFuzzer's comparison tracing) costs five times the run time in the core's
    # inner loops and finds nothing there that the edge coverage does not.
    flags=(-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
           -fno-sanitize-coverage=trace-cmp)
    if builds_fuzzer "$clang_cc" -fopenmp; then
        flags+=(-fopenmp)
        openmp="with OpenMP"
    else
        openmp="WITHOUT OpenMP (no libomp for $clang_cc: install libomp-dev)"
    fi
    engine="libFuzzer, $clang_cc, $openmp"
else
    cc="${CC:-gcc}"
    flags=(-DGP_FUZZ_MAIN -fsanitize=address,undefined -fno-sanitize-recover=all
           -fno-omit-frame-pointer -fopenmp)
    engine="built-in random driver, $cc (no clang with libFuzzer here)"
    clang_cc="$cc"
fi
"$clang_cc" "${common[@]}" "${flags[@]}" -o "$core"

# Seeds: inputs that reached defects of the past (the layout of an input is in fuzz_core.c).
# A (1, 4096, 1024) float16 view, columns repeated (stride 0), k = 4, lam = 0, 2 threads, called
# from inside a 4-thread parallel region:
printf '\362\020\001\004\000\000\000\000\003\000\000\000' >"$corpus/core/seed-nested-parallel"
# A (1, (3*2^61+1)/7, 1) float32 view of one element with saliency: its buffer sizes wrap size_t.
printf '\364\001\001\000\002\000\000\000\000\000\000\000\000' >"$corpus/core/seed-huge-view"

echo "fuzz: C API for ${c_seconds} s ($engine)"
status=0
log="$out/core.log"
if [[ "$engine" == libFuzzer* ]]; then
    "$core" -seed="$seed" -max_total_time="$c_seconds" -max_len=512 -timeout=30 \
        -rss_limit_mb=2560 -malloc_limit_mb=2560 -print_final_stats=1 \
        -artifact_prefix="$out/" "$corpus/core" >"$log" 2>&1 || status=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
else
    "$core" "$corpus"/core/seed-* >"$log" 2>&1 &&
        "$core" -seed="$seed" -max_total_time="$c_seconds" -artifact_prefix="$out/" \
            >>"$log" 2>&1 || status=$?
    runs=$(sed -n 's/^fuzz_core: Done \([0-9]*\) runs.*/\1/p' "$log")
fi
if [ "$status" -ne 0 ]; then
    grep -v 'WARNING: AddressSanitizer failed to allocate' "$log" | tail -40
    echo "fuzz: C API FAILED (exit $status); log $log; replay the saved input with:"
    grep -Eo "$out/(crash|leak|timeout|oom)-[0-9a-f]+" "$log" | sort -u | sed "s|^|  $core |"
else
    echo "fuzz: C API ok: ${runs:-?} calls"
fi

# --- the Python API ------------------------------------------------------------------------

echo "fuzz: Python API for ${py_seconds} s"
py_status=0
py_log="$out/python.log"
"$python" fuzz/fuzz_api.py --seconds "$py_seconds" --seed "$seed" --artifacts "$out/python/" \
    --corpus "$corpus/python" >"$py_log" 2>&1 || py_status=$?
if [ -f "$out/python/current-input" ]; then # the random driver died on this input
    crash="$out/python/crash-$(sha1sum "$out/python/current-input" | cut -c1-40)"
    mv "$out/python/current-input" "$crash"
    echo "fuzz_api: reproducer written to $crash" >>"$py_log"
fi
if [ "$py_status" -ne 0 ]; then
    tail -40 "$py_log"
    echo "fuzz: Python API FAILED (exit $py_status); log $py_log; replay the saved input with:"
    grep -Eo "$out/python/(crash|leak|timeout|oom)-[0-9a-f]+" "$py_log" | sort -u |
        sed "s|^|  $python fuzz/fuzz_api.py |"
    status=1
else
    runs=$(sed -n -e 's/^stat::number_of_executed_units: *//p' \
        -e 's/^fuzz_api: Done \([0-9]*\) runs.*/\1/p' "$py_log")
    engine=$(grep -q '^stat::' "$py_log" && echo atheris || echo "built-in random driver")
    echo "fuzz: Python API ok: ${runs:-?} calls ($engine)"
fi
exit "$status"
