#!/usr/bin/env bash
# Re-creates src/usertrail/web/static/vendor/rrweb-player/ from the npm registry: the prebuilt,
# minified browser bundle and stylesheet of rrweb-player at a pinned version, checked against its
# pinned integrity hash, plus the MIT notices the npm tarball does not carry. Same approach as
# scripts/vendor-rrweb.sh. 2.1.7 (npm's `latest`) cannot be installed: it depends on
# @rrweb/packer and @rrweb/replay 2.1.7, which were never published. Needs node/npm at vendoring
# time only; the server never downloads anything at run time. Usage: scripts/vendor-rrweb-player.sh
set -euo pipefail

PACKAGE="rrweb-player"
VERSION="2.1.6"
INTEGRITY="sha512-b/RAp32d93btucB5bX5VFxYS+Zm34B0n2ARFcLMAgrtqsECUqpIaHpQLHHf8rJwhMCEeNvW0BHV9BpF5aE6jtg=="
BUNDLE="package/umd/rrweb-player.min.js"
STYLE="package/dist/style.min.css"

cd "$(dirname "$0")/.."
DEST=src/usertrail/web/static/vendor/rrweb-player
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

(cd "$WORK" && npm pack --silent "$PACKAGE@$VERSION" >/dev/null)
TARBALL=$(ls "$WORK"/*.tgz)
ACTUAL="sha512-$(openssl dgst -sha512 -binary "$TARBALL" | base64 -w0)"
if [ "$ACTUAL" != "$INTEGRITY" ]; then
  echo "integrity mismatch for $PACKAGE@$VERSION: got $ACTUAL" >&2
  exit 1
fi
tar -xzf "$TARBALL" -C "$WORK" "$BUNDLE" "$STYLE" package/package.json
mkdir -p "$DEST"
cp "$WORK/$BUNDLE" "$DEST/rrweb-player.min.js"
# The stylesheet's last line points at a source map that is not vendored.
sed '/sourceMappingURL/d' "$WORK/$STYLE" >"$DEST/style.min.css"
# package.json says MIT but the tarball has no LICENSE file; the first notice is upstream's
# (github.com/rrweb-io/rrweb, LICENSE). The bundle also carries its dependencies, listed after it.
cat >"$DEST/LICENSE" <<NOTICE
$PACKAGE $VERSION (npm, $INTEGRITY)
vendored as rrweb-player.min.js (the package's prebuilt $BUNDLE: UMD, global \`rrwebPlayer\`)
and style.min.css (the package's $STYLE, source-map comment removed).

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

The bundle also embeds, each under the MIT licence (the text above, with its own copyright line):
@rrweb/replay, rrweb, rrweb-snapshot, rrdom, @rrweb/packer (Sentry and contributors, as above);
svelte (Copyright (c) 2016-24 [these people](https://github.com/sveltejs/svelte/graphs/contributors));
postcss (Copyright 2013 Andrey Sitnik <andrey@sitnik.ru>); mitt (Copyright (c) 2021 Jason Miller);
@xstate/fsm (Copyright (c) 2015 David Khourshid); base64-arraybuffer (Copyright (c) 2012 Niklas von Hertzen);
fflate (Copyright (c) 2023 Arjun Barrett). It also embeds tslib (Copyright (c) Microsoft Corporation,
0BSD licence, header kept in the file).
NOTICE
echo "$VERSION" >"$DEST/VERSION"
echo "vendored $PACKAGE@$VERSION into $DEST ($(wc -c <"$DEST/rrweb-player.min.js") bytes)"
