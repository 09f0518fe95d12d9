#!/usr/bin/env bash
# The report's browser tests drive Debian's Chromium (Playwright cannot download its own
# browser offline). Install it when we can (root with apt-get); otherwise say how, and
# the browser tests skip, except under ONTASK_REQUIRE_BROWSER=1 (CI), where they fail.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || [ -n "${ONTASK_CHROMIUM:-}" ]; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's chromium for the report's browser tests..."
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
else
  echo "note: no chromium; the report's browser tests will skip (sudo apt-get install chromium, or set ONTASK_CHROMIUM=/path/to/chrome)"
fi
