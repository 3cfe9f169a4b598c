#!/usr/bin/env bash
# Runs on each TPU worker: a job in the background whose pid and exit code land in a state
# directory, so that the launcher reads the job's state instead of guessing from process names.
#
#   launch/job.sh start STATE_DIR LOG -- COMMAND [ARGS...]   start COMMAND, output to LOG
#   launch/job.sh state STATE_DIR     prints: running | exited CODE | lost (died without a code,
#                                     e.g. killed) | none (never started here)
set -u
action=${1:?usage: job.sh start|state STATE_DIR ...}
dir=${2:?usage: job.sh start|state STATE_DIR ...}
case "$action" in
  start)
    log=${3:?usage: job.sh start STATE_DIR LOG -- COMMAND...}
    [ "${4:-}" = "--" ] || { echo "job.sh: expected -- before the command" >&2; exit 2; }
    shift 4
    mkdir -p "$dir"
    rm -f "$dir/exit_code" "$dir/pid"
    nohup "$0" _run "$dir" "$@" > "$log" 2>&1 < /dev/null &
    echo $! > "$dir/pid"
    ;;
  _run)
    shift 2
    "$@"
    code=$?
    echo "$code" > "$dir/exit_code.tmp" && mv "$dir/exit_code.tmp" "$dir/exit_code"
    exit "$code"
    ;;
  state)
    if [ -f "$dir/exit_code" ]; then
      echo "exited $(cat "$dir/exit_code")"
    elif [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
      echo running
    elif [ -f "$dir/pid" ]; then
      echo lost
    else
      echo none
    fi
    ;;
  *)
    echo "job.sh: unknown action '$action' (start or state)" >&2
    exit 2
    ;;
esac
