#!/usr/bin/env bash
# Build and package the extension: npm ci (when package-lock.json changed), tsc, vsce package.
# Usage: scripts/build.sh [OUTPUT.vsix]   (default: editor_clients/vscode/tricode.vsix)
# Offline once the npm cache holds the packages; set npm_config_cache to keep the cache out of $HOME.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-$PWD/tricode.vsix}"
stamp=node_modules/.tricode-lock
if [ ! -f "$stamp" ] || ! cmp -s package-lock.json "$stamp"; then
    npm ci --no-audit --no-fund --loglevel=error
    cp package-lock.json "$stamp"
fi
rm -rf out
npx --no-install tsc -p ./
npx --no-install vsce package --skip-license --allow-missing-repository -o "$out" >&2
echo "$out"
