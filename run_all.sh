#!/usr/bin/env bash
# Re-run the paper's experiments and build every table, figure and the reported-vs-reproduced report.
#
#   ./run_all.sh [--profile smoke|mini|paper] [--only NN[,NN...]] [--dry-run] [--launcher local|slurm] [--nproc N]
#
# Profiles (experiments/profiles.yaml): smoke = everything in miniature on synthetic data (CI, minutes);
# mini (default) = real Imagenette at 64 px on a CPU (under an hour on 2 cores); paper = 224 px on GPUs.
# Experiments 01..07 run in order, then analysis.tables, analysis.figures and analysis.compare. Each run
# lives in its own folder named from its config: interrupt and re-run, and finished runs are skipped
# while interrupted ones resume from their checkpoint. A run that fails does not stop the others; the
# script then exits 1 at the end (bad input, such as a missing data set, stops at once with exit 2).
# Environment: SGDROP_DATA_ROOT (default ../shared/data when it exists), SGDROP_IMAGENET_ROOT (paper
# profile: adds the ImageNet runs), SGDROP_SLURM_PARTITION (--launcher slurm), SGDROP_RESULTS (default
# results/) and SGDROP_FIGURES (default figures/).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"

usage="usage: ./run_all.sh [--profile smoke|mini|paper] [--only NN[,NN...]] [--dry-run] [--launcher local|slurm] [--nproc N]"
die() { echo "error: $*" >&2; exit 2; }

PROFILE=mini ONLY="" DRY=() LAUNCHER=local NPROC=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --profile) [[ $# -ge 2 ]] || die "--profile needs a value ($usage)"; PROFILE="$2"; shift 2 ;;
    --profile=*) PROFILE="${1#*=}"; shift ;;
    --only) [[ $# -ge 2 ]] || die "--only needs a value such as 02 ($usage)"; ONLY="$ONLY,$2"; shift 2 ;;
    --only=*) ONLY="$ONLY,${1#*=}"; shift ;;
    --dry-run) DRY=(--dry-run); shift ;;
    --launcher) [[ $# -ge 2 ]] || die "--launcher needs a value ($usage)"; LAUNCHER="$2"; shift 2 ;;
    --launcher=*) LAUNCHER="${1#*=}"; shift ;;
    --nproc) [[ $# -ge 2 ]] || die "--nproc needs a value ($usage)"; NPROC=(--nproc "$2"); shift 2 ;;
    --nproc=*) NPROC=(--nproc "${1#*=}"); shift ;;
    -h|--help) echo "$usage"; exit 0 ;;
    *) die "unknown option '$1' ($usage)" ;;
  esac
done

PROFILES="$(grep -oE '^[A-Za-z0-9_-]+:' experiments/profiles.yaml | tr -d ':' | paste -sd' ')"
[[ " $PROFILES " == *" $PROFILE "* ]] || die "unknown profile '$PROFILE' (choose one of: $PROFILES)"
[[ "$LAUNCHER" =~ ^(local|slurm|submitit-local)$ ]] || die "unknown launcher '$LAUNCHER' (choose local or slurm)"
if [[ ${#NPROC[@]} -gt 0 ]]; then
  [[ "${NPROC[1]}" =~ ^[1-9][0-9]*$ ]] || die "--nproc expects a positive integer, got '${NPROC[1]}'"
fi
for nn in ${ONLY//,/ }; do
  [[ "$nn" =~ ^0[1-7]$ ]] || die "--only expects experiment numbers 01..07, got '$nn'"
done

source scripts/ensure_env.sh

if [[ -z "${SGDROP_DATA_ROOT:-}" && -d "$ROOT/../shared/data" ]]; then
  export SGDROP_DATA_ROOT="$(cd "$ROOT/../shared/data" && pwd)"
fi
RESULTS="${SGDROP_RESULTS:-results}"  # runs, tables and the report go here
FIGURES="${SGDROP_FIGURES:-figures}"
START=$SECONDS
FAILED=()

echo "[run_all] profile $PROFILE, launcher $LAUNCHER${DRY:+, dry run}; data root ${SGDROP_DATA_ROOT:-(engine default)}; results in $RESULTS/"
for nn in 01 02 03 04 05 06 07; do
  if [[ -n "$ONLY" && ",$ONLY," != *",$nn,"* ]]; then continue; fi
  script="$(ls experiments/"$nn"_*.py 2>/dev/null | head -n 1 || true)"
  if [[ -z "$script" ]]; then
    echo "[run_all] experiment $nn: no experiments/${nn}_*.py, skipped"
    continue
  fi
  args=(--profile "$PROFILE" --results "$RESULTS/runs" "${DRY[@]}")
  if [[ "$nn" != 06 ]]; then args+=(--launcher "$LAUNCHER" "${NPROC[@]}"); fi
  echo "[run_all] === $script ($(( (SECONDS - START) / 60 ))m$(( (SECONDS - START) % 60 ))s elapsed) ==="
  status=0
  python "$script" "${args[@]}" || status=$?
  if [[ $status -eq 130 ]]; then
    echo "[run_all] interrupted; run the same command again to continue where it stopped" >&2
    exit 130
  elif [[ $status -eq 2 ]]; then
    echo "[run_all] $script stopped on bad input (exit 2); fix it and re-run: finished runs are kept" >&2
    exit 2
  elif [[ $status -ne 0 ]]; then
    FAILED+=("$script")
  fi
done

if [[ ${#DRY[@]} -eq 0 ]]; then
  for step in tables figures compare; do
    if [[ -f "analysis/$step.py" ]]; then
      out="$RESULTS/tables"
      [[ "$step" == figures ]] && out="$FIGURES"
      echo "[run_all] === python -m analysis.$step --results $RESULTS --out $out ==="
      python -m "analysis.$step" --results "$RESULTS" --out "$out" || FAILED+=("analysis.$step")
    else
      echo "[run_all] analysis/$step.py not found, skipped"
    fi
  done
fi

ELAPSED=$(( SECONDS - START ))
printf '[run_all] total wall time %dm%02ds (profile %s)\n' $(( ELAPSED / 60 )) $(( ELAPSED % 60 )) "$PROFILE"
if [[ ${#FAILED[@]} -gt 0 ]]; then
  echo "[run_all] failed: ${FAILED[*]}; re-run the same command to resume" >&2
  exit 1
fi
