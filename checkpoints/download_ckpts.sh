#!/usr/bin/env bash
# Download SAM2 (072824) and SAM2.1 (092824) checkpoints from Meta's public site.
#
#   bash checkpoints/download_ckpts.sh                      # all eight files into checkpoints/
#   bash checkpoints/download_ckpts.sh --sam2 --models tiny,small
#   bash checkpoints/download_ckpts.sh --sam2.1 --dir /scratch/me/ckpts
#
# Re-running resumes an interrupted download (curl -C -, or wget -c) and skips finished files.
# A file counts as finished when its size equals the server's Content-Length and is at least
# the known minimum for that model (an HTML error page never passes for a checkpoint).
# Compute nodes are often offline: run this on a login node, or copy the .pt files over.
#
# Environment: MEDSAM2_CKPT_BASE_URL (a mirror with the same 072824/ and 092824/ folders),
# MEDSAM2_CKPT_MIN_BYTES (override every minimum size), MEDSAM2_CONNECT_TIMEOUT (seconds, 20).
# The data download scripts source this file for its fetch function.
set -euo pipefail

CKPT_BASE_URL="${MEDSAM2_CKPT_BASE_URL:-https://dl.fbaipublicfiles.com/segment_anything_2}"
CONNECT_TIMEOUT="${MEDSAM2_CONNECT_TIMEOUT:-20}"
ALL_MODELS="tiny small base_plus large"

die() { echo "$(basename "$0"): $*" >&2; exit "${EXIT_CODE:-1}"; }

file_size() { if [[ -f "$1" ]]; then wc -c <"$1" | tr -d ' '; else echo 0; fi; }

# Minimum sizes, about 80% of Meta's files (tiny 156 MB, small 184 MB, base_plus 324 MB, large 898 MB).
min_bytes() {
  if [[ -n "${MEDSAM2_CKPT_MIN_BYTES:-}" ]]; then echo "$MEDSAM2_CKPT_MIN_BYTES"; return; fi
  case "$1" in
    tiny) echo 120000000 ;; small) echo 150000000 ;; base_plus) echo 260000000 ;; large) echo 720000000 ;;
  esac
}

# Content-Length of URL after redirects; empty when the server gives none. Fails when unreachable.
remote_size() {
  local headers
  if command -v curl >/dev/null 2>&1; then
    headers=$(curl -sfIL --connect-timeout "$CONNECT_TIMEOUT" "$1") || return $?
  else
    headers=$(wget -q -S --spider --timeout="$CONNECT_TIMEOUT" "$1" 2>&1) || return $?
  fi
  printf '%s\n' "$headers" | tr -d '\r' | awk 'tolower($1) == "content-length:" { n = $2 } END { print n }'
}

unreachable() {  # url, tool exit code
  case "$2" in
    6|7|28|35|4) die "cannot reach $1 (exit $2): this machine looks offline. Run the download where" \
                     "there is internet access (a login node) and copy the files, or point the" \
                     "MEDSAM2_*_URL variables at a mirror." ;;
    *) die "cannot download $1 (exit $2): the server refused it or the file is not there." ;;
  esac
}

# fetch URL DEST MIN_BYTES: resumable download into DEST.part, checked, then renamed to DEST.
fetch() {
  local url="$1" dest="$2" min="$3" part="$2.part" size rc=0
  size=$(remote_size "$url") || unreachable "$url" $?
  if [[ -f "$dest" ]]; then
    if [[ "$(file_size "$dest")" == "${size:-$(file_size "$dest")}" && "$(file_size "$dest")" -ge "$min" ]]; then
      echo "ok       $dest (already complete)"
      return 0
    fi
    mv -f "$dest" "$part"  # shorter than the server's copy: resume it
  fi
  if [[ -z "$size" || "$(file_size "$part")" != "$size" ]]; then
    echo "fetching $url"
    if command -v curl >/dev/null 2>&1; then
      curl -fL --retry 3 --connect-timeout "$CONNECT_TIMEOUT" -C - -o "$part" "$url" || rc=$?
      if [[ "$rc" == 33 ]]; then  # the server cannot resume: start again
        rm -f "$part"; rc=0
        curl -fL --retry 3 --connect-timeout "$CONNECT_TIMEOUT" -o "$part" "$url" || rc=$?
      fi
    else
      wget -c --timeout="$CONNECT_TIMEOUT" -O "$part" "$url" || rc=$?
    fi
    [[ "$rc" == 0 ]] || unreachable "$url" "$rc"
  fi
  local have; have=$(file_size "$part")
  if [[ -n "$size" && "$have" != "$size" ]]; then
    die "$part: $have bytes, the server announced $size; run the script again to resume."
  fi
  if (( have < min )); then
    rm -f "$part"
    die "$url: only $have bytes (expected at least $min): not the file we want, removed."
  fi
  mv -f "$part" "$dest"
  echo "ok       $dest ($have bytes)"
}

usage() {
  sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
}

main() {
  local dir generations="" models="$ALL_MODELS"
  dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --sam2) generations="$generations sam2" ;;
      --sam2.1) generations="$generations sam2.1" ;;
      --models) [[ $# -ge 2 ]] || EXIT_CODE=2 die "--models needs a value (tiny,small,base_plus,large)"
                models="${2//,/ }"; shift ;;
      --dir) [[ $# -ge 2 ]] || EXIT_CODE=2 die "--dir needs a value"; dir="$2"; shift ;;
      -h|--help) usage; return 0 ;;
      *) EXIT_CODE=2 die "unknown option $1 (try --help)" ;;
    esac
    shift
  done
  for m in $models; do
    [[ " $ALL_MODELS " == *" $m "* ]] || EXIT_CODE=2 die "--models: '$m' is not one of ${ALL_MODELS// /,}"
  done
  mkdir -p "$dir"
  for gen in ${generations:-sam2 sam2.1}; do
    local folder=072824
    [[ "$gen" == sam2.1 ]] && folder=092824
    for m in $models; do
      fetch "$CKPT_BASE_URL/$folder/${gen}_hiera_${m}.pt" "$dir/${gen}_hiera_${m}.pt" "$(min_bytes "$m")"
    done
  done
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  main "$@"
fi
