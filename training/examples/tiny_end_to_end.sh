#!/usr/bin/env bash
# Tiny end-to-end run on CPU (about a minute on 2 cores): a random tiny bundle and a synthetic
# multimodal dataset -> validate -> precompute -> train -> export -> chat with the new bundle.
#   bash training/examples/tiny_end_to_end.sh [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
work="${1:-$(mktemp -d)}"
export TOKENIZERS_PARALLELISM=false

python -m training.synthetic "$work"  # a random tiny bundle + 32 synthetic records

args=(
  --config training/configs/tiny.yaml
  --set "bundle=$work/bundle"
  --set "data=[{path: $work/data/train.jsonl}]"
  --set "feature_cache=$work/features"
  --set "output_dir=$work/run"
)
python -m training validate "${args[@]}"
python -m training precompute "${args[@]}"
python -m training train "${args[@]}"
python -m training export "${args[@]}" --output "$work/finetuned" --reference

python - "$work" <<'PY'
import sys
from pathlib import Path

from langchain_core.messages import HumanMessage
from langchain_core.messages.content import create_image_block, create_text_block

from langchain_pandagpt.chat_models import ChatPandaGPT

work = Path(sys.argv[1])
chat = ChatPandaGPT(model=str(work / "finetuned"), device="cpu", max_tokens=16)
image = work / "data" / "media" / "0000.png"
question = HumanMessage(
    content_blocks=[
        create_image_block(url=image.resolve().as_uri()),
        create_text_block("What colour is this picture?"),
    ]
)
print("answer:", chat.invoke([question]).content)
chat.engine.close()  # stop the engine's worker thread before the interpreter exits
PY
