#!/usr/bin/env bash
# Produce the figures of benchmarks/README.md:
#
#   benchmarks/run.sh NAME [extra pytest arguments]     e.g.  benchmarks/run.sh cpu
#
# Runs the whole suite from the repository root with pytest-benchmark's default rounds, keeps
# the full JSON in benchmarks/results/NAME.json, a --benchmark-save copy under
# benchmarks/results/<machine>/ (what --benchmark-compare diffs against), and writes the
# Markdown report (means, side-by-side ratios, targets met or missed, peak memory, machine and
# versions) to benchmarks/results/NAME.md. Run it on a quiet machine: nothing else training.
set -euo pipefail
cd "$(dirname "$0")/.."
name="${1:?usage: benchmarks/run.sh NAME [extra pytest arguments]}"
shift
python=${PYTHON:-python}
"$python" -m pytest benchmarks --benchmark-json="benchmarks/results/$name.json" --benchmark-save="$name" "$@"
"$python" benchmarks/report.py "benchmarks/results/$name.json" | tee "benchmarks/results/$name.md"
