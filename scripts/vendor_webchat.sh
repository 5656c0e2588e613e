#!/bin/sh
# Vendors the web chat widget's JavaScript libraries from the npm registry at pinned versions
# (no CDN at run time), then checks them against the committed checksums.
# Usage: scripts/vendor_webchat.sh          (fetch, copy, verify)
#        scripts/vendor_webchat.sh --update (fetch, copy, rewrite the checksum file)
set -eu
MARKED_VERSION=15.0.12
DOMPURIFY_VERSION=3.2.6
here=$(cd "$(dirname "$0")/.." && pwd)
dest="$here/apps/connectors/static/webchat/vendor"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$dest"
cd "$work"
npm pack --silent "marked@$MARKED_VERSION" "dompurify@$DOMPURIFY_VERSION" >/dev/null
tar -xzf "marked-$MARKED_VERSION.tgz" && mv package marked
tar -xzf "dompurify-$DOMPURIFY_VERSION.tgz" && mv package dompurify
cp marked/marked.min.js "$dest/marked.min.js"
cp marked/LICENSE.md "$dest/marked-LICENSE.md"
cp dompurify/dist/purify.min.js "$dest/purify.min.js"
cp dompurify/LICENSE "$dest/dompurify-LICENSE"
cd "$dest"
if [ "${1:-}" = "--update" ]; then
    sha256sum marked.min.js purify.min.js > SHA256SUMS
fi
sha256sum -c SHA256SUMS
