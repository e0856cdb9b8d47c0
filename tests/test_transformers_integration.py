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
            assert model.config._attn_implementation == NAME + "_sdpa"  # the outer recorder is still on
    torch.testing.assert_close(during, before)
    assert model.config._attn_implementation == "sdpa"
    assert model.config.vision_config._attn_implementation == "sdpa"
    assert not [name for name in AttentionInterface._global_mapping if name.startswith(NAME)]
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
    real = mask.bool()  # padding positions hold zeros here, the pad token's embedding there
    torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=1e-5)
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
    with pytest.raises(ValueError, match="2 images' placeholders but pixel_values has 3 images"):
        VisualTokenReducer(model, "divprune").prepare(ids, torch.cat([px, px[:1]]), mask)
    short = ids.clone()
    short[0, -4] = 5  # the last placeholder of the first prompt's image: a run of 15
    with pytest.raises(ValueError, match="a run of 15 image placeholders does not match the 16 features"):
        VisualTokenReducer(model, "divprune").prepare(short, px, mask)
    with pytest.raises(ValueError, match="no image placeholder"):
        VisualTokenReducer(model, "divprune").prepare(torch.ones(1, 5, dtype=torch.long), px[:1])
    with pytest.raises(ValueError, match="select none"):
        VisualTokenReducer(model, "vtc_cls").prepare(ids, px, mask)  # start 16 of a 3-layer tower
    with pytest.raises(ValueError, match="object_layer=9"):
        VisualTokenReducer(model, "hiprune").prepare(ids, px, mask)
    with pytest.raises(ValueError, match="fastv_layer"):
        VisualTokenReducer(model, "fastv", fastv_layer=5)


# ---- review regressions ----------------------------------------------------------------------------------------------
def test_nested_recorders_on_models_of_different_implementations_keep_their_masks(model):
    """An eager model recorded inside an SDPA model's recorder builds eager masks (each implementation has its own
    registered name and mask function), so its outputs are unchanged."""
    eager = tiny_llava(attn="eager")
    ids, mask, px = prompts(2)
    with torch.no_grad():
        want = eager(input_ids=ids, pixel_values=px, attention_mask=mask).logits
        with record_attention(model, {"language": [0]}):
            with record_attention(eager, {"language": [0]}) as inner:
                got = eager(input_ids=ids, pixel_values=px, attention_mask=mask).logits
    torch.testing.assert_close(got, want)
    assert len(inner.qk[("language", 0)]) == 1


def test_recorders_built_first_then_nested_and_one_layer_named_twice(model):
    ids, mask, px = prompts(1)
    outer = record_attention(model, {"language": [0, -2]})  # one layer under two numbers: both keys recorded
    inner = record_attention(model, {"language": [1]})
    with torch.no_grad():
        with outer as rec:
            with inner:
                model(input_ids=ids, pixel_values=px)
            model(input_ids=ids, pixel_values=px)  # the outer recorder is still on after the inner exits
            with pytest.raises(RuntimeError, match="already active"):
                with outer:
                    pass
    assert len(rec.qk[("language", 0)]) == 2 and len(rec.qk[("language", -2)]) == 2
    assert model.config.text_config._attn_implementation == "sdpa"


def test_models_without_the_attention_interface_are_refused():
    from transformers import BloomConfig, BloomForCausalLM

    bloom = BloomForCausalLM(BloomConfig(hidden_size=32, n_layer=2, n_head=4, vocab_size=64)).eval()
    if getattr(bloom, "_can_set_attn_implementation", lambda: True)():
        pytest.skip("this transformers version routes Bloom through the AttentionInterface")
    with pytest.raises(ValueError, match="do not look their attention up"):
        with record_attention(bloom, {"h": [0]}):
            pass
    assert bloom.config._attn_implementation != NAME


def test_adjacent_images_right_padding_and_visionzip_positions(model):
    ids = torch.cat([torch.tensor([[3, 4]]), torch.full((1, 2 * PATCHES), IMAGE), torch.tensor([[5, 6, 7]])], 1)
    px = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = model(input_ids=ids, pixel_values=px).logits[:, -1]
        for method in ("divprune", "fastv"):
            reducer = VisualTokenReducer(model, method, keep=1.0)
            torch.testing.assert_close(reducer(ids, px).logits[:, -1], want, atol=1e-5, rtol=1e-5)
            assert reducer.kept == [PATCHES, PATCHES]
    # right padding comes out as left padding: the same tokens as each prompt alone
    left, mask, px2 = prompts(2)
    right, right_mask = torch.zeros_like(left), torch.zeros_like(mask)
    for b in range(2):
        real = left[b][mask[b].bool()]
        right[b, :len(real)], right_mask[b, :len(real)] = real, 1
    reducer = VisualTokenReducer(model, "divprune", keep=0.5)
    new_left = reducer.generate(left, px2, mask, max_new_tokens=3, do_sample=False)
    new_right = reducer.generate(right, px2, right_mask, max_new_tokens=3, do_sample=False)
    assert torch.equal(new_left, new_right)
    # VisionZip at the end of a prompt: its [CLS] and patch indices map into the placeholder run
    tail = torch.cat([torch.tensor([[3, 4]]), torch.full((1, PATCHES), IMAGE)], 1)
    inputs = VisualTokenReducer(model, "visionzip", keep=PATCHES + 1, contextual=2, keep_positions=True).prepare(
        tail, px[:1])
    assert inputs["position_ids"].max().item() <= PATCHES + 1 and inputs["inputs_embeds"].shape[1] == 2 + PATCHES + 1
