#!/usr/bin/env bash
# Re-creates src/usertrail/web/static/vendor/rrweb/ from the npm registry: the prebuilt, minified
# browser bundle of @rrweb/record at a pinned version, checked against its pinned integrity hash,
# plus the MIT notice the npm tarball does not carry. Needs node/npm at vendoring time only; the
# server never downloads anything at run time. Usage: scripts/vendor-rrweb.sh
set -euo pipefail

PACKAGE="@rrweb/record"
VERSION="2.1.6"
INTEGRITY="sha512-dHOrWa97l3C+BBsUd+zgLtErTZavzudJunu1HN2bV6WhTBLGk7z8BY1fWw0QerYK7qJJyrBE9D6XHcISVdVGQQ=="
BUNDLE="package/umd/record.min.js"

cd "$(dirname "$0")/.."
DEST=src/usertrail/web/static/vendor/rrweb
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

(cd "$WORK" && npm pack --silent "$PACKAGE@$VERSION" >/dev/null)
TARBALL=$(ls "$WORK"/*.tgz)
ACTUAL="sha512-$(openssl dgst -sha512 -binary "$TARBALL" | base64 -w0)"
if [ "$ACTUAL" != "$INTEGRITY" ]; then
  echo "integrity mismatch for $PACKAGE@$VERSION: got $ACTUAL" >&2
  exit 1
fi
tar -xzf "$TARBALL" -C "$WORK" "$BUNDLE" package/package.json
mkdir -p "$DEST"
cp "$WORK/$BUNDLE" "$DEST/record.min.js"
# package.json says MIT but the tarball has no LICENSE file; the notice below is upstream's
# (github.com/rrweb-io/rrweb, LICENSE).
cat >"$DEST/LICENSE" <<NOTICE
$PACKAGE $VERSION (npm, $INTEGRITY)
vendored as record.min.js: the package's prebuilt $BUNDLE (UMD, global \`rrwebRecord\`).

MIT License

Copyright (c) 2023 Sentry (https://sentry.io) and individual contributors

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.

The bundle also embeds tslib (Copyright (c) Microsoft Corporation, 0BSD licence, header kept in the file).
NOTICE
echo "$VERSION" >"$DEST/VERSION"
echo "vendored $PACKAGE@$VERSION into $DEST ($(wc -c <"$DEST/record.min.js") bytes)"
