#!/usr/bin/env bash
# Installs the LibreTranslate clients precis is checked against, from their
# registries, into target/libretranslate-clients: the Python client
# (`libretranslatepy`, PyPI, in a virtualenv) and the npm `libretranslate`
# package. Prints the shell lines that point the tests at them:
#
#   eval "$(scripts/libretranslate-clients.sh)"
#   cargo test --features test-backend --test libretranslate_clients
#
# Needs python3 (with venv) and npm; pins the versions checked.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="$PWD/target/libretranslate-clients"
mkdir -p "$dir"
if [ ! -x "$dir/venv/bin/python" ]; then
  python3 -m venv "$dir/venv" >&2
fi
"$dir/venv/bin/python" -m pip install -q --disable-pip-version-check "libretranslatepy==2.1.4" >&2
if [ ! -f "$dir/node_modules/libretranslate/package.json" ]; then
  (cd "$dir" && npm install --silent --no-audit --no-fund "libretranslate@1.0.1" >&2)
fi
echo "export PRECIS_TEST_LT_PYTHON='$dir/venv/bin/python'"
echo "export PRECIS_TEST_LT_NODE_MODULES='$dir/node_modules'"
