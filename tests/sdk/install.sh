#!/usr/bin/env bash
# Installs the official Segment SDKs that the SDK tests drive:
#   node     @segment/analytics-node  -> tests/sdk/node/node_modules     (npm ci, from package-lock.json)
#   browser  @segment/analytics-next  -> tests/sdk/browser/node_modules  (npm ci, from package-lock.json)
#   python   segment-analytics-python -> target/sdk-venv                 (pip, from requirements.txt)
# tests/segment_sdks.rs uses node and python, tests/browser.rs uses browser
# (analytics.js, whose dist/umd build it serves to Chromium).
#
# Usage: tests/sdk/install.sh [node|browser|python]...   (no argument: all three)
#
# Idempotent: each part is (re)installed only when missing or when its lock
# file changed since the last install. Safe to run from concurrent test
# processes (serialized with flock). Exits non-zero with a clear message when a
# tool is missing or a registry cannot be reached: the SDK tests must fail,
# not skip.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"

node_dir="tests/sdk/node"
browser_dir="tests/sdk/browser"
py_req="tests/sdk/python/requirements.txt"
venv="target/sdk-venv"

die() {
    echo "error: $*" >&2
    exit 1
}

want_node=false want_browser=false want_python=false
[ $# -eq 0 ] && set -- node browser python
for part in "$@"; do
    case "$part" in
        node) want_node=true ;;
        browser) want_browser=true ;;
        python) want_python=true ;;
        *) die "unknown part '$part': expected node, browser or python" ;;
    esac
done

tools=(sha256sum)
if $want_node || $want_browser; then tools+=(node npm); fi
if $want_python; then tools+=(python3); fi
for tool in "${tools[@]}"; do
    command -v "$tool" >/dev/null || die "$tool is not installed; the Segment SDK tests need Node.js (with npm) and Python 3"
done

mkdir -p target
exec 9>target/.sdk-install.lock
if command -v flock >/dev/null; then
    flock 9
fi

digest() { sha256sum "$@" | sha256sum | cut -d' ' -f1; }

# npm_install DIR PACKAGE: `npm ci` in DIR unless its stamp matches the lock.
npm_install() {
    local dir="$1" package="$2"
    local want stamp
    want="$(digest "$dir/package.json" "$dir/package-lock.json")"
    stamp="$dir/node_modules/.onepd-installed"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "installing $package into $dir/node_modules (npm ci)" >&2
        if ! npm ci --prefix "$dir" --no-audit --no-fund >&2; then
            die "npm ci in $dir failed: is the npm registry reachable? (the Segment SDK tests cannot run without $package)"
        fi
        echo "$want" >"$stamp"
    fi
}

installed=()

# Node: @segment/analytics-node.
if $want_node; then
    npm_install "$node_dir" @segment/analytics-node
    (cd "$node_dir" && node --input-type=module -e "import '@segment/analytics-node'") ||
        die "@segment/analytics-node does not load from $node_dir/node_modules"
    installed+=("@segment/analytics-node $(cd "$node_dir" && node -p "require('@segment/analytics-node/package.json').version")")
fi

# Browser: @segment/analytics-next. Its UMD build needs a window, so the
# check is that the bundle the browser test serves is there and parses.
if $want_browser; then
    npm_install "$browser_dir" @segment/analytics-next
    umd="$browser_dir/node_modules/@segment/analytics-next/dist/umd/index.js"
    [ -f "$umd" ] || die "$umd is missing: @segment/analytics-next no longer ships its UMD build there"
    node --check "$umd" || die "$umd does not parse"
    installed+=("@segment/analytics-next $(cd "$browser_dir" && node -p "require('@segment/analytics-next/package.json').version")")
fi

# Python: segment-analytics-python in a virtualenv.
if $want_python; then
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
    installed+=("segment-analytics-python $("$venv/bin/python" -c 'import segment.analytics as a; print(a.VERSION)')")
fi

summary="$(printf '%s, ' "${installed[@]}")"
echo "Segment SDKs installed: ${summary%, }"
