#!/usr/bin/env bash
# Validate X12 files with pyx12 (an independent, strict TR3 validator).
#
# Usage: .ci/x12-check.sh DIR_OR_FILE...
#   A directory stands for every *.x12 file directly inside it; it is an error if it has none.
#   A file's verdict is the LAST line of `x12valid FILE`: it must end in ": OK".
#   (x12valid exits 1 even on success, so its exit status is not used.)
#
# The venv lives at target/ci-venv-x12 (relative to the repository root) unless X12_VENV is set.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${X12_VENV:-$repo_root/target/ci-venv-x12}"

if [[ $# -eq 0 ]]; then
    echo "usage: $0 DIR_OR_FILE..." >&2
    exit 2
fi

files=()
for arg in "$@"; do
    if [[ -d "$arg" ]]; then
        found=0
        while IFS= read -r -d '' f; do
            files+=("$f")
            found=1
        done < <(find "$arg" -maxdepth 1 -type f -name '*.x12' -print0 | sort -z)
        if [[ $found -eq 0 ]]; then
            echo "x12-check: no *.x12 files in directory $arg" >&2
            exit 1
        fi
    elif [[ -f "$arg" ]]; then
        files+=("$arg")
    else
        echo "x12-check: no such file or directory: $arg" >&2
        exit 1
    fi
done

if [[ ${#files[@]} -eq 0 ]]; then
    echo "x12-check: nothing to check" >&2
    exit 1
fi

if [[ ! -x "$venv/bin/x12valid" ]]; then
    echo "x12-check: creating venv $venv" >&2
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check pyx12
fi

failed=0
for f in "${files[@]}"; do
    # x12valid exits non-zero even when the file is valid: capture and judge the last line.
    out="$("$venv/bin/x12valid" "$f" 2>&1 || true)"
    last="$(printf '%s\n' "$out" | sed -e '/^[[:space:]]*$/d' | tail -n 1)"
    if [[ "$last" == *": OK" ]]; then
        echo "x12-check: PASS $f"
    else
        echo "x12-check: FAIL $f (last line: ${last:-<no output>})"
        echo "----- pyx12 output for $f -----"
        printf '%s\n' "$out"
        echo "----- end of pyx12 output for $f -----"
        failed=1
    fi
done

if [[ $failed -ne 0 ]]; then
    echo "x12-check: FAILED" >&2
    exit 1
fi
echo "x12-check: all ${#files[@]} file(s) OK"
