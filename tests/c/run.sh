#!/usr/bin/env bash
# Build and run the C core's tests (tests/c/test_core.c) in several configurations:
#   asan-omp     -O1, OpenMP, AddressSanitizer + UndefinedBehaviorSanitizer (+ LeakSanitizer)
#   asan-serial  the same without OpenMP (the #ifdef _OPENMP paths off)
#   O2-omp       plain optimized build, OpenMP, target_clones dispatch active
#   O2-omp-noclones  the same with -DGP_NO_TARGET_CLONES
#   O2-serial    optimized, no OpenMP
# Every build uses -std=c99 -Wall -Wextra -Werror. Binaries go to tests/c/bin/ (gitignored).
# Usage: tests/c/run.sh [config ...]   (default: all of them); CC selects the compiler (gcc).
# Exit status is non-zero if any build or any test fails.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="$here/bin"
cc="${CC:-gcc}"
mkdir -p "$bin"

common=(-std=c99 -Wall -Wextra -Werror -I"$root/csrc")
sources=("$root/csrc/greedyprune.c" "$here/test_core.c")
sanitize=(-O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer)

flags_for() {
    case "$1" in
        asan-omp) echo "${sanitize[*]} -fopenmp" ;;
        asan-serial) echo "${sanitize[*]}" ;;
        O2-omp) echo "-O2 -fopenmp" ;;
        O2-omp-noclones) echo "-O2 -fopenmp -DGP_NO_TARGET_CLONES" ;;
        O2-serial) echo "-O2" ;;
        *) echo "unknown configuration: $1" >&2; return 1 ;;
    esac
}

configs=("$@")
if [ ${#configs[@]} -eq 0 ]; then
    configs=(asan-omp asan-serial O2-omp O2-omp-noclones O2-serial)
fi

export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
# Only if libgomp's thread pool is ever reported as leaked on some system: suppress libgomp
# alone, never greedyprune code.
if [ -f "$here/lsan.supp" ]; then
    export LSAN_OPTIONS="suppressions=$here/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
fi

failed=()
for config in "${configs[@]}"; do
    read -r -a flags <<<"$(flags_for "$config")"
    exe="$bin/test_core-$config"
    echo "== $config: $cc ${flags[*]}"
    start=$(date +%s.%N)
    if ! "$cc" "${common[@]}" "${flags[@]}" "${sources[@]}" -lm -o "$exe"; then
        echo "== $config: BUILD FAILED"
        failed+=("$config")
        continue
    fi
    if "$exe"; then
        status=ok
    else
        status="FAILED (exit $?)"
        failed+=("$config")
    fi
    end=$(date +%s.%N)
    printf '== %s: %s (%.1f s build + run)\n' "$config" "$status" "$(echo "$end - $start" | bc)"
done

if [ ${#failed[@]} -ne 0 ]; then
    echo "C core tests FAILED in: ${failed[*]}"
    exit 1
fi
echo "C core tests passed in: ${configs[*]}"
