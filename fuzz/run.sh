#!/usr/bin/env bash
# Runs both fuzz targets for SECONDS each (default 60), starting from the committed seeds.
#   fuzz/run.sh [SECONDS]
# Exits non-zero when a target crashes, hangs (-timeout), runs out of memory (-rss_limit_mb)
# or leaves a new file in fuzz/artifacts/<target>/. Needs a nightly toolchain
# (`rustup toolchain install nightly`); installs cargo-fuzz when it is missing.
# Set CARGO_BUILD_JOBS=1 on a small machine; FUZZ_TARGETS="x12_reader" to run only one;
# FUZZ_ARGS="..." for further libFuzzer flags (appended, so they win).
set -uo pipefail

# ASan keeps freed memory in a quarantine (256 MB by default), which alone brings the RSS near
# the 512 MB limit; 64 MB leaves the limit to catch growth in the code under test.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}quarantine_size_mb=64"

seconds="${1:-60}"
case "$seconds" in
    '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;;
esac
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here" || exit 2

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked || exit 2
fi

failed=()
for target in ${FUZZ_TARGETS:-x12_reader remit835}; do
    mkdir -p "corpus/$target" "artifacts/$target"
    before="$(find "artifacts/$target" -type f | wc -l)"
    echo "== $target: ${seconds}s" >&2
    cargo +nightly fuzz run "$target" "corpus/$target" "seeds/$target" -- \
        -dict=x12.dict -max_len=8192 -timeout=10 -rss_limit_mb=512 \
        -max_total_time="$seconds" -print_final_stats=1 ${FUZZ_ARGS:-}
    rc=$?
    after="$(find "artifacts/$target" -type f | wc -l)"
    if [ "$rc" -ne 0 ] || [ "$after" -gt "$before" ]; then
        echo "== $target FAILED (exit $rc; artifacts in fuzz/artifacts/$target)" >&2
        failed+=("$target")
    else
        echo "== $target: no crash" >&2
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "crashes in: ${failed[*]}" >&2
    exit 1
fi
echo "no crash in ${FUZZ_TARGETS:-x12_reader remit835}" >&2
