#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 600) one after another, on this
# stable toolchain (no sanitizer). Logs go to fuzz/logs/<target>.log.
set -u
cd "$(dirname "$0")"
seconds=${1:-600}
mkdir -p logs
for target in $(cargo fuzz list); do
  dict=()
  case $target in client_message|publish_body|envelope) dict=(-dict=dict/json.dict) ;; esac
  cargo fuzz run --sanitizer none "$target" -- -max_total_time="$seconds" -print_final_stats=1 "${dict[@]}" \
    > "logs/$target.log" 2>&1
  echo "$target: exit $? ($(grep -E '^stat::number_of_executed_units|cov:' "logs/$target.log" | tail -1))"
done
