#!/usr/bin/env bash
# Regenerate every baseline: run the small version of each configs/*.yaml and rewrite
# tests/baselines/<name>.json. Review the diff before committing it.
set -euo pipefail
cd "$(dirname "$0")/../.."
for cfg in configs/*.yaml; do
  name=$(basename "$cfg" .yaml)
  sets=()
  while IFS= read -r line; do
    case "$line" in ''|'#'*) continue;; esac
    sets+=(--set "$line")
  done < "tests/baselines/$name.set"
  out=$(mktemp -d)
  .venv/bin/mmusim run "$cfg" --out "$out" --quiet "${sets[@]}"
  .venv/bin/mmusim check "$out/results.json" --baseline "tests/baselines/$name.json" --update
  rm -rf "$out"
done
