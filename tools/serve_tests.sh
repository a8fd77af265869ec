#!/usr/bin/env bash
# The Python tests of `qwen-run serve` (tests/serve_py): the real `openai` client, 64 concurrent streams,
# the web page in Debian's headless Chromium (selenium). Installs on first use, then reuses:
#   - Debian's chromium + chromium-driver (apt-get; as root, as on CI),
#   - a venv with pinned openai, selenium and pytest in $QWEN_TOOLS/serve (default /tmp/qwen-ci-tools).
# Builds target/debug/qwen-run if needed (as the Rust tests do). Loopback only; every loop is bounded. Screenshot:
# target/serve-artifacts/web_chat.png. Extra arguments go to pytest (e.g. -k openai).
set -euo pipefail
cd "$(dirname "$0")/.."

T=${QWEN_TOOLS:-/tmp/qwen-ci-tools}
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q chromium chromium-driver >/dev/null
fi
if [ ! -f "$T/serve/ok-1" ]; then
  rm -rf "$T/serve"
  python3 -m venv "$T/serve"
  "$T/serve/bin/pip" install -q --progress-bar off openai==3.60.0 selenium==4.51.0 pytest==9.2.0
  touch "$T/serve/ok-1"
fi

# Builds target/debug/qwen-run as the Rust tests do (same features, so after `cargo test --all-targets`
# nothing is rebuilt; a plain `cargo build` would rebuild the crate without the dev-dependency features).
cargo test --no-run --test serve
export QWEN_RUN="$PWD/target/debug/qwen-run"
export SERVE_ARTIFACTS="$PWD/target/serve-artifacts"
mkdir -p "$SERVE_ARTIFACTS"
exec "$T/serve/bin/python" -m pytest -q -p no:cacheprovider tests/serve_py "$@"
