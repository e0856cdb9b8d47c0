"""Forward-pass time of a LLaVA-style model with its visual tokens reduced by tokenset.integrations.transformers
(issue 20), against the unpruned model in the same process, at 10%, 25% and 50% keep.

Two randomly initialised, offline configs (no weights to download):
* tiny: the test suite's (CLIP vision 32 wide, 3 layers, image 32, patch 8 -> 16 patches; Llama 64 wide, 2 layers);
* small: 576 patches like LLaVA-1.5 (CLIP 64 wide, 4 layers, image 336, patch 14; Llama 256 wide, 4 layers, 8 heads,
  2 key heads), a 40-token text prompt around the image, batch 4.
The time is one forward pass from input ids and pixels to logits (vision tower, selection, language model);
"divprune" reduces the projected features, "visionzip" merges in the vision space, "fastv" runs the first 2 language
layers on the full prompt to choose.

    python benchmarks/bench_vlm_prune.py      # writes benchmarks/results/vlm-prune-<machine>-<date>.*
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import tokenset  # noqa: E402
from _common import time_interleaved, write_results  # noqa: E402
from tokenset.integrations.transformers import VisualTokenReducer  # noqa: E402

IMAGE = 127


def build(kind: str):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(0)
    if kind == "tiny":
        vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                                  image_size=32, patch_size=8)
        text = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=128)
        patches, batch, side = 16, 1, 32
    else:
        vision = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                                  image_size=336, patch_size=14)
        text = LlamaConfig(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
                           num_key_value_heads=2, vocab_size=128)
        patches, batch, side = 576, 4, 336
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=IMAGE, image_seq_length=patches)
    model = LlavaForConditionalGeneration(config).eval()
    ids = torch.cat([torch.randint(1, 100, (batch, 20)), torch.full((batch, patches), IMAGE),
                     torch.randint(1, 100, (batch, 20))], dim=1)
    return model, ids, torch.randn(batch, 3, side, side), patches


def main() -> None:
    threads = tokenset.get_num_threads()
    torch.set_num_threads(threads)
    rows = []
    for kind in ("tiny", "small"):
        model, ids, px, patches = build(kind)
        with torch.no_grad():
            full = {"unpruned": lambda: model(input_ids=ids, pixel_values=px).logits}
            for method, options in (("divprune", {}), ("visionzip", {"contextual": 2}), ("fastv", {})):
                for keep in (0.10, 0.25, 0.50):
                    count = max(3, round(keep * patches)) if method == "visionzip" else keep
                    reducer = VisualTokenReducer(model, method, keep=count, **options)
                    fns = dict(full, **{"reduced": lambda r=reducer: r(ids, px).logits})
                    times = time_interleaved(fns, 5, budget_s=20.0)
                    row = {"model": kind, "method": method, "keep": keep, "tokens": reducer.kept[0],
                           "patches": patches, "times_s": times, "speedup": times["unpruned"] / times["reduced"]}
                    rows.append(row)
                    print(f"{kind:>5} {method:>9} keep {keep:.0%} ({reducer.kept[0]} of {patches}): "
                          f"{times['reduced'] * 1e3:.1f} ms vs {times['unpruned'] * 1e3:.1f} ms unpruned, "
                          f"x{row['speedup']:.2f}", flush=True)
    table = ["| model | method | keep | visual tokens | reduced | unpruned | speedup |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        t = r["times_s"]
        table.append(f"| {r['model']} | {r['method']} | {r['keep']:.0%} | {r['tokens']} of {r['patches']} | "
                     f"{t['reduced'] * 1e3:.1f} ms | {t['unpruned'] * 1e3:.1f} ms | x{r['speedup']:.2f} |")
    table.append(f"\nOne forward pass (vision tower, selection, language model), float32, {threads} threads, torch "
                 f"{torch.__version__}; batch 1 (tiny) and 4 (small), randomly initialised weights.")
    print("\n".join(table))
    path = write_results("vlm-prune", "cpu", {"threads": threads, "torch": torch.__version__, "rows": rows},
                         "\n".join(table))
    print(f"wrote {path}.json / .md")


if __name__ == "__main__":
    main()
