#!/usr/bin/env bash
# The lent-GPU procedure (DEVELOPERS.md, "Every session"), from the repository root:
#
#   experiments/device.sh prepare          wheels the GPU machine lacks + dataset archives (git-ignored),
#                                          checks the carry fits 64 MiB, prints the ONE device call to make
#   experiments/device.sh unpack FILES_AT  after the call: results.tgz over results/, tables, docs/results.md
#   experiments/device.sh carry-size       bytes the device call would carry (prepares the wheels if missing)
#
# The GPU machine has torch, numpy, pandas, pyarrow, pyyaml, scikit-learn, tqdm but not optuna, plotly,
# moocore or e2cnn: ../shared/tools/device-wheels --no-ray fetches those (~21 MB) into .dw1/. The search
# runs on the Optuna backend there, so ray stays behind. Datasets: cifar10.tar.gz always; mnist.tar.gz
# only once the queue's C3 item can run (it waits for the faithful rot-MNIST models).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"

LIMIT=$((64 * 1024 * 1024))
TIME_LIMIT=${TIME_LIMIT:-480}   # seconds the gpu command plans for; the device command may run 600
CARRY='[".dw1", ".data"]'

shared_dir() {
  for d in "${REPNAS_SHARED:-}" ../shared /work/shared; do
    if [ -n "$d" ] && [ -d "$d/datasets" ]; then echo "$d"; return 0; fi
  done
  echo "device.sh: no shared folder with datasets/ (set REPNAS_SHARED)" >&2
  return 1
}

python_bin() {
  if [ -x .venv/bin/python ]; then echo .venv/bin/python; else command -v python3; fi
}

c3_ready() {  # exit 0 when the queue's C3 item may run (the registry's rep_cnn_c4 is the authors')
  PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$(python_bin)" -c \
    'import sys; from repnas.experiments._gpu_queue import GATES; sys.exit(0 if GATES["faithful_rotmnist"]() is None else 1)'
}

tree_bytes() {  # what travels without carry: tracked and untracked-not-ignored files
  git ls-files -co --exclude-standard -z | xargs -0 -r stat -c %s -- 2>/dev/null | awk '{s += $1} END {print s + 0}'
}

dir_bytes() {
  if [ -d "$1" ]; then find "$1" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}'; else echo 0; fi
}

wheels() {
  local shared tmp
  shared=$(cd "$(shared_dir)" && pwd)
  if [ -d .git ]; then
    "$shared/tools/device-wheels" --no-ray
  else  # a git worktree (.git is a file): the tool edits .git/info/exclude, so run it in a scratch repo
    tmp=$(mktemp -d)
    git init -q "$tmp"
    (cd "$tmp" && "$shared/tools/device-wheels" --no-ray)
    rm -rf .dw1 && mv "$tmp/.dw1" .dw1 && rm -rf "$tmp"
  fi
}

data() {
  local shared
  shared=$(shared_dir)
  mkdir -p .data
  cp -u "$shared/datasets/cifar10.tar.gz" .data/
  if c3_ready; then
    cp -u "$shared/datasets/mnist.tar.gz" .data/
  else
    rm -f .data/mnist.tar.gz  # C3 waits: 15 MB less to carry
  fi
}

carry_bytes() {
  echo $(( $(tree_bytes) + $(dir_bytes .dw1) + $(dir_bytes .data) ))
}

command_line() {
  printf '%s' "mkdir -p /tmp/dw && cp .dw1/* /tmp/dw/ && bash /tmp/dw/install.sh && " \
    "export PYTHONPATH=/tmp/site:\$PWD PYTHONUNBUFFERED=1 && " \
    "python3 -m repnas.experiments gpu --device cuda --data-dir .data --time-limit $TIME_LIMIT " \
    "--archive \"\$OUT/results.tgz\""
}

case "${1:-}" in
  prepare)
    [ -d .dw1 ] && [ -f .dw1/install.sh ] || wheels
    data
    size=$(carry_bytes)
    if [ "$size" -gt "$LIMIT" ]; then
      echo "device.sh: the call would carry $size bytes, over 64 MiB; remove untracked files or data" >&2
      exit 1
    fi
    echo "carry: $size bytes of 64 MiB ($(tree_bytes) tree, $(dir_bytes .dw1) wheels, $(dir_bytes .data) data)"
    echo
    echo "Make ONE device call (tool 'run'):"
    echo "  command:   $(command_line)"
    echo "  carry:     $CARRY"
    echo "  timeout_s: 600"
    echo "Then: experiments/device.sh unpack FILES_AT  (FILES_AT: the folder the reply names), commit"
    echo "results/ and docs/results.md, and give the machine back (tool 'give_back')."
    ;;
  carry-size)
    [ -d .dw1 ] && [ -f .dw1/install.sh ] || wheels >&2
    data
    echo "$(carry_bytes) bytes"
    ;;
  unpack)
    from=${2:?usage: experiments/device.sh unpack FILES_AT}
    archive="$from/results.tgz"
    [ -f "$archive" ] || { echo "device.sh: no $archive (did the device call finish?)" >&2; exit 1; }
    mkdir -p results
    tar xzf "$archive" -C results
    echo "unpacked $(tar tzf "$archive" | grep -vc '/$') files into results/"
    PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$(python_bin)" -m repnas.experiments tables
    git status --short results docs/results.md
    echo "now: git add results docs/results.md && git commit -m 'GPU session results'"
    ;;
  *)
    sed -n '2,12p' "$0"
    exit 2
    ;;
esac
