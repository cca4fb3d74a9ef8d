#!/usr/bin/env bash
# Installs the official Segment SDKs that tests/segment_sdks.rs drives:
#   @segment/analytics-node   -> tests/sdk/node/node_modules  (npm ci, from package-lock.json)
#   segment-analytics-python  -> target/sdk-venv              (pip, from requirements.txt)
# Idempotent: each half is (re)installed only when missing or when its lock file
# changed since the last install. Safe to run from concurrent test processes
# (serialized with flock). Exits non-zero with a clear message when a tool is
# missing or a registry cannot be reached: the SDK tests must fail, not skip.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"

node_dir="tests/sdk/node"
py_req="tests/sdk/python/requirements.txt"
venv="target/sdk-venv"

die() {
    echo "error: $*" >&2
    exit 1
}

for tool in node npm python3 sha256sum; do
    command -v "$tool" >/dev/null || die "$tool is not installed; the Segment SDK tests need Node.js (with npm) and Python 3"
done

mkdir -p target
exec 9>target/.sdk-install.lock
if command -v flock >/dev/null; then
    flock 9
fi

digest() { sha256sum "$@" | sha256sum | cut -d' ' -f1; }

# Node: @segment/analytics-node.
node_want="$(digest "$node_dir/package.json" "$node_dir/package-lock.json")"
node_stamp="$node_dir/node_modules/.onepd-installed"
if [ ! -f "$node_stamp" ] || [ "$(cat "$node_stamp")" != "$node_want" ]; then
    echo "installing @segment/analytics-node into $node_dir/node_modules (npm ci)" >&2
    if ! npm ci --prefix "$node_dir" --no-audit --no-fund >&2; then
        die "npm ci in $node_dir failed: is the npm registry reachable? (the Segment SDK tests cannot run without @segment/analytics-node)"
    fi
    echo "$node_want" >"$node_stamp"
fi
(cd "$node_dir" && node --input-type=module -e "import '@segment/analytics-node'") ||
    die "@segment/analytics-node does not load from $node_dir/node_modules"

# Python: segment-analytics-python in a virtualenv.
py_want="$(digest "$py_req")"
py_stamp="$venv/.onepd-installed"
if [ ! -x "$venv/bin/python" ] || [ ! -f "$py_stamp" ] || [ "$(cat "$py_stamp")" != "$py_want" ]; then
    echo "installing segment-analytics-python into $venv (pip)" >&2
    if [ ! -x "$venv/bin/python" ]; then
        rm -rf "$venv"
        python3 -m venv "$venv" >&2 ||
            die "python3 -m venv $venv failed (on Debian: apt-get install python3-venv)"
    fi
    if ! "$venv/bin/pip" install --disable-pip-version-check -q -r "$py_req" >&2; then
        die "pip install -r $py_req failed: is PyPI reachable? (the Segment SDK tests cannot run without segment-analytics-python)"
    fi
    echo "$py_want" >"$py_stamp"
fi
"$venv/bin/python" -c "import segment.analytics" ||
    die "segment-analytics-python does not import from $venv"

echo "Segment SDKs installed: @segment/analytics-node $(cd "$node_dir" && node -p "require('@segment/analytics-node/package.json').version"), segment-analytics-python $("$venv/bin/python" -c 'import segment.analytics as a; print(a.VERSION)')"
