#!/usr/bin/env bash
# Fuzz the C API and the Python API for a bounded time, half each:
#   fuzz/fuzz_core.c  the C API under AddressSanitizer + UndefinedBehaviorSanitizer (+ leaks):
#                     a libFuzzer target built with clang (coverage-guided), or, where no clang
#                     with libFuzzer can be had, the same target with its built-in random driver
#                     built with $CC (gcc; not coverage-guided)
#   fuzz/fuzz_api.py  the Python API against greedyprune.reference: atheris (coverage-guided
#                     over greedyprune's Python code) when installed, else its random driver
# Usage: bash fuzz/run.sh                    about 2 minutes in all (what .ci/run runs)
#        FUZZ_SECONDS=3600 bash fuzz/run.sh  an hour
# Settings: FUZZ_SECONDS (120), FUZZ_SEED (1: runs are reproducible), PYTHON (.venv/bin/python),
# CC (gcc, for the fallback), FUZZ_INSTALL=0 (never apt-get install clang when it is missing).
#
# The coverage-guided engines are expected in CI (CI set) and where this runs as root with
# apt-get (it installs clang, LLVM's OpenMP and the compiler runtime that holds libFuzzer and the
# sanitizers): there, failing to build them is an error, not a fallback. Elsewhere the fallback
# says so on the first line of its part.
#
# Each part first names its engine, then prints its calls, calls per second and, for the
# coverage-guided engines, the coverage reached (cov: edges, ft: features) and corpus size.
# Every run starts from the committed seeds (fuzz/seeds/core, fuzz/seeds/python) and adds what
# it finds to fuzz/corpus/ (not committed, grows across local runs). A failing input is saved as
# fuzz/out/crash-* (C) or fuzz/out/python/crash-* (Python), with the command that replays it;
# the exit status is then non-zero.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"
seconds="${FUZZ_SECONDS:-120}"
seed="${FUZZ_SEED:-1}"
python="${PYTHON:-.venv/bin/python}"
out="fuzz/out"
corpus="fuzz/corpus"
seeds="fuzz/seeds"
mkdir -p "$out/bin" "$out/python" "$corpus/core" "$corpus/python"
c_seconds=$((seconds / 2))
py_seconds=$((seconds - c_seconds))

# An allocation beyond 1 GiB fails (returns NULL) as on a small machine: the C core must then
# report GP_ENOMEM, and a view that repeats elements beyond any memory cannot take the machine's.
asan="allocator_may_return_null=1:max_allocation_size_mb=1024:detect_leaks=1"
export ASAN_OPTIONS="$asan${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"

can_install() {
    [ "${FUZZ_INSTALL:-1}" != 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null
}
expected=""
if [ -n "${CI:-}" ]; then
    expected="CI is set"
elif can_install; then
    expected="this runs as root with apt-get"
fi

# "libFuzzer, coverage-guided, ..." line summing up a libFuzzer or atheris log: the last status
# line (cov: edges, ft: features, corp: inputs) and the final stats.
summary() {
    local log="$1" line runs rate
    line=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -1 || true)
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    printf '%s calls, %s calls/s, cov: %s edges, ft: %s features, corpus %s inputs' \
        "${runs:-?}" "${rate:-?}" "$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$line")" \
        "$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$line")" \
        "$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' <<<"$line")"
}

fail_expected() {
    echo "fuzz: FAILED: the coverage-guided $1 was expected ($expected) but $2"
    exit 1
}

# --- the C target --------------------------------------------------------------------------

# 0 if $1 builds a libFuzzer program with the flags that follow.
builds_fuzzer() {
    local compiler="$1"
    shift
    printf '%s\n' '#include <stddef.h>' '#include <stdint.h>' \
        'int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }' |
        "$compiler" -x c - -fsanitize=fuzzer,address,undefined "$@" -o "$out/bin/probe" \
            >>"$out/probe.log" 2>&1
}

find_clang() {
    local candidate
    for candidate in clang clang-19 clang-18 clang-17 clang-16 clang-15 clang-14; do
        if command -v "$candidate" >/dev/null && builds_fuzzer "$candidate"; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

# Install clang, LLVM's OpenMP and clang's runtime (libFuzzer and the sanitizers: Debian's
# libclang-rt-N-dev, which --no-install-recommends would leave out) with apt-get.
install_clang() {
    local major
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 apt-get update -qq || true
    timeout 600 apt-get install -y -qq --no-install-recommends clang libomp-dev || return 1
    major=$(clang --version | sed -n 's/.*clang version \([0-9]*\).*/\1/p' | head -1)
    if apt-cache show "libclang-rt-$major-dev" >/dev/null 2>&1; then
        timeout 600 apt-get install -y -qq --no-install-recommends "libclang-rt-$major-dev"
    fi
}

: >"$out/probe.log"
installed=""
clang_cc=$(find_clang || true)
if [ -z "$clang_cc" ] && can_install; then
    install_clang >"$out/install.log" 2>&1 || true
    clang_cc=$(find_clang || true)
    installed="; clang installed with apt-get (log $out/install.log)"
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
        openmp="OpenMP"
    elif [ -n "$expected" ]; then
        fail_expected "C build" "$clang_cc has no OpenMP (install libomp-dev); see $out/probe.log"
    else
        openmp="WITHOUT OpenMP: install libomp-dev"
    fi
    compiler="$clang_cc-$("$clang_cc" -dumpversion | cut -d. -f1)"
    engine="libFuzzer ($compiler, coverage-guided, ASan+UBSan, $openmp)"
elif [ -n "$expected" ]; then
    fail_expected "C build" "no clang builds a libFuzzer program (clang and its runtime, \
libclang-rt-N-dev on Debian); see $out/probe.log${installed:+ and $out/install.log}"
else
    clang_cc="${CC:-gcc}"
    flags=(-DGP_FUZZ_MAIN -fsanitize=address,undefined -fno-sanitize-recover=all
           -fno-omit-frame-pointer -fopenmp)
    engine="built-in random driver ($clang_cc, NOT coverage-guided: no clang with libFuzzer \
here; install clang and its runtime, or run as root), ASan+UBSan"
fi
echo "fuzz C API: $engine for ${c_seconds} s$installed"
"$clang_cc" "${common[@]}" "${flags[@]}" -o "$core"

status=0
log="$out/core.log"
if [[ "$engine" == libFuzzer* ]]; then
    "$core" -seed="$seed" -max_total_time="$c_seconds" -max_len=512 -timeout=30 \
        -rss_limit_mb=2560 -malloc_limit_mb=2560 -print_final_stats=1 \
        -artifact_prefix="$out/" "$corpus/core" "$seeds/core" >"$log" 2>&1 || status=$?
    result=$(summary "$log")
else
    "$core" "$seeds"/core/* >"$log" 2>&1 &&
        "$core" -seed="$seed" -max_total_time="$c_seconds" -artifact_prefix="$out/" \
            >>"$log" 2>&1 || status=$?
    result="$(sed -n 's/^fuzz_core: Done \([0-9]*\) runs.*/\1/p' "$log") calls"
fi
if [ "$status" -ne 0 ]; then
    grep -v 'WARNING: AddressSanitizer failed to allocate' "$log" | tail -40
    echo "fuzz C API: FAILED (exit $status); log $log; replay the saved input with:"
    grep -Eo "$out/(crash|leak|timeout|oom)-[0-9a-f]+" "$log" | sort -u | sed "s|^|  $core |"
else
    echo "fuzz C API: ok: $result"
fi

# --- the Python API ------------------------------------------------------------------------

if "$python" -c 'import atheris' 2>/dev/null; then
    py_engine=atheris
    echo "fuzz Python API: atheris (libFuzzer, coverage-guided over greedyprune's Python code)" \
        "for ${py_seconds} s"
elif [ -n "$expected" ] && "$python" -c 'import platform, sys; sys.exit(not (sys.platform ==
        "linux" and platform.machine() == "x86_64" and sys.version_info < (3, 14)))'; then
    fail_expected "Python engine" "atheris (requirements-dev.txt) is not installed in $python"
else
    py_engine=random
    echo "fuzz Python API: built-in random driver (NOT coverage-guided: atheris is not" \
        "installed) for ${py_seconds} s"
fi
py_status=0
py_log="$out/python.log"
"$python" fuzz/fuzz_api.py --engine "$py_engine" --seconds "$py_seconds" --seed "$seed" \
    --artifacts "$out/python/" --corpus "$corpus/python" --seeds "$seeds/python" \
    >"$py_log" 2>&1 || py_status=$?
if [ -f "$out/python/current-input" ]; then # the random driver died on this input
    crash="$out/python/crash-$(sha1sum "$out/python/current-input" | cut -c1-40)"
    mv "$out/python/current-input" "$crash"
    echo "fuzz_api: reproducer written to $crash" >>"$py_log"
fi
if [ "$py_status" -ne 0 ]; then
    tail -40 "$py_log"
    echo "fuzz Python API: FAILED (exit $py_status); log $py_log; replay the saved input with:"
    grep -Eo "$out/python/(crash|leak|timeout|oom)-[0-9a-f]+" "$py_log" | sort -u |
        sed "s|^|  $python fuzz/fuzz_api.py |"
    status=1
elif [ "$py_engine" = atheris ]; then
    echo "fuzz Python API: ok: $(summary "$py_log")"
else
    echo "fuzz Python API: ok: $(sed -n 's/^fuzz_api: Done \([0-9]*\) runs.*/\1/p' "$py_log") calls"
fi
exit "$status"
