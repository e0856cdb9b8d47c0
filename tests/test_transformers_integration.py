"""tokenset inside Hugging Face models, offline, on tiny randomly initialised configs (CLIP vision 32 wide, 3 layers,
image 32, patch 8 -> 16 patches + [CLS]; Llama 64 wide, 2 layers, 4 heads, 2 key heads): the attention hook records
the q / k of an eager forward while SDPA runs, and the LLaVA reducer shortens the prompt, keeps outputs equal to the
unpruned model when it keeps everything, and generates for batches with different images and keep counts."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import tokenset  # noqa: E402
from tokenset.integrations.transformers import VisualTokenReducer, layer_stacks, record_attention  # noqa: E402
from tokenset.integrations.transformers.hook import NAME  # noqa: E402

IMAGE = 127
PATCHES = 16


def tiny_llava(seed: int = 0, attn: str = "sdpa"):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                              image_size=32, patch_size=8)
    text = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=128)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=IMAGE, image_seq_length=PATCHES)
    config._attn_implementation = attn
    return LlavaForConditionalGeneration(config).eval()


def prompts(batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for b in range(batch):
        before = torch.randint(1, 100, (2 + b,), generator=g)
        after = torch.randint(1, 100, (3,), generator=g)
        rows.append(torch.cat([before, torch.full((PATCHES,), IMAGE), after]))
    width = max(len(r) for r in rows)
    ids = torch.zeros(batch, width, dtype=torch.long)
    mask = torch.zeros(batch, width, dtype=torch.long)
    for b, r in enumerate(rows):  # left padding, as generation wants
        ids[b, width - len(r):] = r
        mask[b, width - len(r):] = 1
    return ids, mask, torch.randn(batch, 3, 32, 32, generator=g)


@pytest.fixture(scope="module")
def model():
    return tiny_llava()


# ---- the hook --------------------------------------------------------------------------------------------------------
def test_recorded_q_k_equal_an_eager_forward_and_rows_equal_its_attention_weights(model):
    ids, mask, px = prompts(1)
    eager = tiny_llava(attn="eager")
    with torch.no_grad():
        with record_attention(model, {"vision": [0, -1], "language": [0, 1]}) as fused:
            model(input_ids=ids, pixel_values=px)
        with record_attention(eager, {"vision": [0, -1], "language": [0, 1]}) as slow:
            out = eager(input_ids=ids, pixel_values=px, output_attentions=True)
    assert model.config.text_config._attn_implementation == "sdpa"
    for key in fused.qk:
        for a, b in zip(fused.last(*key), slow.last(*key)):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    # rows from q / k equal the eager attention matrix (what VisionZip / FastV switch layers to eager for)
    weights = out.attentions  # the language model's, per layer [B, H, L, L]
    q, k = fused.last("language", 1)
    torch.testing.assert_close(tokenset.attention_scores(q, k, rows="last", causal=True, reduce="none"),
                               weights[1][:, :, -1], atol=2e-6, rtol=2e-5)
    torch.testing.assert_close(tokenset.attention_scores(q, k, rows="mean", causal=True, reduce="none"),
                               weights[1].mean(-2), atol=2e-6, rtol=2e-5)


def test_hook_leaves_outputs_and_implementations_unchanged_and_unregisters(model):
    from transformers.modeling_utils import AttentionInterface

    ids, mask, px = prompts(2)
    with torch.no_grad():
        before = model(input_ids=ids, pixel_values=px, attention_mask=mask).logits
        with record_attention(model, [("vision", 1), ("language", -1)], rows="cls") as outer:
            with record_attention(model, {"language": 0}, rows="mean", keep_qk=False) as inner:
                during = model(input_ids=ids, pixel_values=px, attention_mask=mask).logits
            assert model.config._attn_implementation == NAME  # the outer recorder is still on
    torch.testing.assert_close(during, before)
    assert model.config._attn_implementation == "sdpa"
    assert model.config.vision_config._attn_implementation == "sdpa"
    assert NAME not in AttentionInterface._global_mapping
    assert outer.scores[("vision", 1)][0].shape == (2, PATCHES + 1)
    assert inner.scores[("language", 0)][0].shape == (2, ids.shape[1]) and inner.qk[("language", 0)] == []
    with pytest.raises(KeyError, match="keep_qk=True"):
        inner.last("language", 0)


def test_hook_bad_input(model):
    assert list(layer_stacks(model)) == ["model.vision_tower.encoder.layers", "model.language_model.layers"]
    with pytest.raises(ValueError, match="matches 2 of the model's stacks"):
        record_attention(model, {"layers": [0]})
    with pytest.raises(ValueError, match="out of range"):
        record_attention(model, {"vision": [3]})
    with pytest.raises(TypeError, match="PreTrainedModel"):
        record_attention(torch.nn.Linear(2, 2), {"vision": [0]})


# ---- the LLaVA reducer -----------------------------------------------------------------------------------------------
EVERYTHING = [("divprune", {}), ("kcenter", {"metric": "l2"}), ("tome", {}), ("dpc_knn", {}),
              ("vtc_cls", {"start": 0}), ("hiprune", {"object_layer": 1}), ("fastv", {})]


@pytest.mark.parametrize("method,options", EVERYTHING)
def test_keeping_everything_equals_the_unpruned_model(model, method, options):
    ids, mask, px = prompts(2)
    with torch.no_grad():
        want = model(input_ids=ids, pixel_values=px, attention_mask=mask).logits
        reducer = VisualTokenReducer(model, method, keep=1.0, **options)
        got = reducer(ids, px, mask).logits
    assert reducer.kept == [PATCHES, PATCHES]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    tokens = model.generate(input_ids=ids, pixel_values=px, attention_mask=mask, max_new_tokens=4, do_sample=False)
    new = reducer.generate(ids, px, mask, max_new_tokens=4, do_sample=False)
    assert torch.equal(new, tokens[:, ids.shape[1]:])


@pytest.mark.parametrize("method,options", EVERYTHING + [("visionzip", {"contextual": 2})])
def test_batches_with_different_keep_counts_shorten_and_match_each_prompt_alone(model, method, options):
    ids, mask, px = prompts(2, seed=1)
    keep = [4, 8] if method not in ("fastv",) else 0.25
    reducer = VisualTokenReducer(model, method, keep=keep, **options)
    with torch.no_grad():
        inputs = reducer.prepare(ids, px, mask)
        batch = model(**inputs).logits
        kept = list(reducer.kept)
        for b in range(2):
            real = mask[b].bool()
            alone = VisualTokenReducer(model, method, keep=keep[b] if isinstance(keep, list) else keep, **options)
            logits = alone(ids[b:b + 1, real], px[b:b + 1]).logits
            assert alone.kept == [kept[b]]
            torch.testing.assert_close(batch[b, -1], logits[0, -1], atol=1e-4, rtol=1e-4)
    want = [4, 8] if isinstance(keep, list) else [4, 4]
    assert kept == want
    assert inputs["inputs_embeds"].shape[1] == int(mask.sum(1).max()) - PATCHES + max(want)
    assert reducer.generate(ids, px, mask, max_new_tokens=3, do_sample=False).shape == (2, 3)


def test_fastv_keeps_original_positions_with_gaps(model):
    ids, mask, px = prompts(1)
    reducer = VisualTokenReducer(model, "fastv", keep=0.25)
    inputs = reducer.prepare(ids, px, mask)
    positions = inputs["position_ids"][0].tolist()
    kept = reducer.indices[0]
    assert positions[:2] == [0, 1] and positions[2:6] == (2 + kept).tolist()
    assert positions[6:] == [18, 19, 20]  # the text after the image keeps its place
    renumbered = VisualTokenReducer(model, "fastv", keep=0.25, keep_positions=False).prepare(ids, px, mask)
    assert renumbered["position_ids"][0].tolist() == list(range(9))


def test_reducer_bad_input(model):
    ids, mask, px = prompts(2)
    with pytest.raises(ValueError, match="not a LLaVA-style model"):
        VisualTokenReducer(model.model.language_model, "divprune")
    with pytest.raises(ValueError, match="unknown method"):
        VisualTokenReducer(model, "random")
    with pytest.raises(ValueError, match="keep as a ratio"):
        VisualTokenReducer(model, "divprune", keep=1.5).prepare(ids, px, mask)
    with pytest.raises(ValueError, match="3 images"):
        VisualTokenReducer(model, "divprune").prepare(ids, torch.cat([px, px[:1]]), mask)
    short = ids.clone()
    short[0, -4] = 5  # the last placeholder of the first prompt's image: a run of 15
    with pytest.raises(ValueError, match="do not match the 16 features"):
        VisualTokenReducer(model, "divprune").prepare(short, px, mask)
    with pytest.raises(ValueError, match="select none"):
        VisualTokenReducer(model, "vtc_cls").prepare(ids, px, mask)  # start 16 of a 3-layer tower
    with pytest.raises(ValueError, match="object_layer=9"):
        VisualTokenReducer(model, "hiprune").prepare(ids, px, mask)
    with pytest.raises(ValueError, match="fastv_layer"):
        VisualTokenReducer(model, "fastv", fastv_layer=5)
