# Sourced by data/download_refuge.sh and data/download_btcv.sh: the steps both take.
#
#   fetch_dataset URL NAME EXPECTED_SUBDIR... -- [--dir DIR] [--keep-zip]
#
# Downloads NAME.zip (resumable, size-checked: checkpoints/download_ckpts.sh's fetch), unzips it
# into DIR (default: data/), checks the expected sub-directories exist, and removes the zip.
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../checkpoints/download_ckpts.sh
source "$HERE/../checkpoints/download_ckpts.sh"  # fetch, die

fetch_dataset() {
  local url="$1" name="$2"; shift 2
  local expect=()
  while [[ $# -gt 0 && "$1" != "--" ]]; do expect+=("$1"); shift; done
  [[ $# -gt 0 ]] && shift
  local dir="$HERE" keep=0
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --dir) [[ $# -ge 2 ]] || EXIT_CODE=2 die "--dir needs a value"; dir="$2"; shift ;;
      --keep-zip) keep=1 ;;
      -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
      *) EXIT_CODE=2 die "unknown option $1 (try --help)" ;;
    esac
    shift
  done
  mkdir -p "$dir"
  local zip="$dir/$name.zip"
  fetch "$url" "$zip" "${MEDSAM2_DATA_MIN_BYTES:-1000000}"
  echo "unzipping $zip into $dir"
  if command -v unzip >/dev/null 2>&1; then
    unzip -q -o "$zip" -d "$dir" || die "$zip: not a valid zip archive; delete it and run again"
  else
    python3 -m zipfile -e "$zip" "$dir" || die "$zip: not a valid zip archive; delete it and run again"
  fi
  local sub
  for sub in "${expect[@]}"; do
    [[ -d "$dir/$name/$sub" ]] || die "$dir/$name/$sub is missing after unzipping: not the layout data/README.md describes"
  done
  [[ "$keep" == 1 ]] || rm -f "$zip"
  echo "ok       $dir/$name ($(find "$dir/$name" -type f | wc -l | tr -d ' ') files)"
}
