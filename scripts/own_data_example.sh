#!/usr/bin/env bash
# Own data end to end, as a user would: img2dataset shards -> data split -> steps 1..2 -> report.
#   bash scripts/own_data_example.sh [WORK_DIR]      (needs img2dataset: pip install img2dataset)
# Steps 1 and 2 of the demo preset on 2 gloo ranks; the URL list points at a local HTTP server.
set -euo pipefail
WORK=${1:-/tmp/growclip_own}
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$REPO/.venv/bin/python}
I2D=${IMG2DATASET:-img2dataset}
export PATH="$(dirname "$PY"):$PATH"   # the venv's ninja: the one scripts/setup.sh built DeepSpeed's CPU op with
command -v nvidia-smi >/dev/null || export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}   # no GPU: DeepSpeed on the CPU
mkdir -p "$WORK"
"$PY" "$REPO/scripts/own_data_example.py" "$WORK/www" --per-year 300 --port 8765 --benchmarks "$WORK/bench"
( cd "$WORK/www" && exec "$PY" -m http.server 8765 --bind 127.0.0.1 ) > "$WORK/http.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
sleep 1
"$I2D" --url_list "$WORK/www/urls.parquet" --input_format parquet --url_col url --caption_col caption \
    --save_additional_columns '["year"]' --output_format webdataset --output_folder "$WORK/shards" \
    --image_size 64 --resize_mode center_crop --number_sample_per_shard 100 --processes_count 1 \
    --thread_count 8 --enable_wandb False
"$PY" -m growclip_train.cli data split "$WORK/shards" --by year --holdout 80 --vocab-size 512
# the sets data split carved (retrieval: test and selection) plus the two zero-shot benchmarks
cat > "$WORK/own.json" <<JSON
{"preset": "demo", "data": {"root": "$WORK/shards", "eval": [
  {"name": "retrieval", "path": "test/retrieval", "kind": "retrieval", "role": "test"},
  {"name": "retrieval", "path": "selection/retrieval", "kind": "retrieval", "role": "selection"},
  {"name": "colour", "path": "$WORK/bench/colour", "kind": "zeroshot", "role": "test"},
  {"name": "shape", "path": "$WORK/bench/shape", "kind": "zeroshot", "role": "test"}]}}
JSON
# steps 1 and 2 on 2 local ranks (growclip_train/local_launch.py builds the command), then the report
"$PY" -m growclip_train.cli demo --config "$WORK/own.json" --steps 2 --ranks 2 --run-dir "$WORK/run"
