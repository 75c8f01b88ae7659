#!/usr/bin/env bash
# Install Debian's chromium for the browser test. Needs root (or passwordless sudo); without either,
# the browser test is skipped and says why.
set -euo pipefail
if [ "$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
  echo "install_chromium: not root and no passwordless sudo; the browser test will be skipped" >&2; exit 0; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq chromium >/dev/null
command -v chromium
