#!/usr/bin/env bash
# CPython 3.12 Linux x86-64 wheels of bench/gpu_requirements.txt in .whl/ (ignored by git): what
# bench/gpu_check.py needs on a device machine whose image has torch but none of the workflow's
# other packages and no registry. Binary wheels are downloaded for that target; a package that
# publishes only a source archive (pure Python here) is built into a wheel by this machine's pip.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=${PIP:-.venv/bin/python -m pip}
rm -rf .whl && mkdir -p .whl
while read -r req; do
  [[ -z "$req" || "$req" == \#* ]] && continue
  $PIP download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d .whl "$req" 2>/dev/null \
    || $PIP wheel --quiet --no-deps -w .whl "$req"
done < bench/gpu_requirements.txt
n=$(ls .whl | wc -l); want=$(grep -cv '^#' bench/gpu_requirements.txt)
[[ "$n" == "$want" ]] || { echo "gpu-wheels: $n wheels for $want requirements" >&2; exit 1; }
du -sh .whl
