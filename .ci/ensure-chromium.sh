#!/bin/sh
# Make sure headless Chromium is on PATH for the live page's browser test
# (tests/connectors/test_live_page.py): Debian's `chromium` package, installed when missing.
# Browser downloads (Playwright's own builds and the like) are not reachable from CI.
# Idempotent, and it never fails the build: when Chromium cannot be installed it says why
# and the browser test skips with that reason.
set -u

have() { command -v "$1" >/dev/null 2>&1; }
say() { echo "ensure-chromium: $*" >&2; }

for b in chromium chromium-browser google-chrome google-chrome-stable; do
    if have "$b"; then
        exit 0
    fi
done

if ! have apt-get; then
    say "chromium is missing and there is no apt-get (not Debian/Ubuntu): the live page's browser test will be skipped"
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif have sudo && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
else
    say "chromium is missing and installing it needs root (not root, no passwordless sudo): the live page's browser test will be skipped"
    exit 0
fi

# sudo resets the environment: env passes the frontend through it
APT="env DEBIAN_FRONTEND=noninteractive apt-get"
apt_install() { $SUDO $APT install -y -q chromium; }
say "installing Debian's chromium package (apt-get install -y -q chromium)"
if ! apt_install; then
    say "install failed; refreshing the package lists (apt-get update) and trying again"
    $SUDO $APT update -q || say "apt-get update failed"
    if ! apt_install; then
        say "could not install chromium (see apt-get's messages above): the live page's browser test will be skipped"
        exit 0
    fi
fi
if have chromium; then
    say "installed: $(command -v chromium)"
else
    say "apt-get succeeded but no chromium on PATH: the live page's browser test will be skipped"
fi
exit 0
