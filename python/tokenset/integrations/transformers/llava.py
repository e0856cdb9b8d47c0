"""Prune or merge the visual tokens of a LLaVA-style Hugging Face model between its projector and its language model,
without forking model code.

LLaVA (transformers >= 5) scatters the projected image features into the placeholder tokens of the prompt, and
requires as many placeholders as features. :class:`VisualTokenReducer` does that step itself: it runs the vision
tower (recording the attention rows a method needs through :func:`record_attention`, so SDPA stays on), reduces each
image's tokens with ``tokenset.prune`` / ``tokenset.merge``, and builds ``inputs_embeds`` with one embedding per kept
token, the attention mask and the position ids; ``forward`` and ``generate`` take them as they are. Sequences of a
batch may hold different images and keep different counts: they are left-padded to one length (generation continues
at the right end), the mask marking the padding.
"""
from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional, Sequence

import numpy as np

from ... import merge as _merge
from ... import prune as _prune
from ...attention_scores import attention_scores
from ...merge import MERGE_METHODS
from ...prune import PRUNE_METHODS
from .hook import record_attention


class LlavaParts(NamedTuple):
    vision_tower: Any
    projector: Any
    language_model: Any
    embeddings: Any
    image_token_id: int
    config: Any


def llava_parts(model: Any) -> LlavaParts:
    """The pieces of a LlavaForConditionalGeneration (or LlavaModel), or a ValueError saying what is missing."""
    inner = model.model if hasattr(getattr(model, "model", None), "vision_tower") else model
    missing = [name for name in ("vision_tower", "multi_modal_projector", "language_model") if
               getattr(inner, name, None) is None]
    config = getattr(model, "config", None)
    token = getattr(config, "image_token_id", getattr(config, "image_token_index", None))
    if missing or token is None or not hasattr(inner, "get_input_embeddings"):
        what = ", ".join(missing) or "config.image_token_id"
        raise ValueError(f"{type(model).__name__} is not a LLaVA-style model: it has no {what}; VisualTokenReducer "
                         f"takes a transformers LlavaForConditionalGeneration (vision_tower, multi_modal_projector, "
                         f"language_model)")
    return LlavaParts(inner.vision_tower, inner.multi_modal_projector, inner.language_model,
                      inner.get_input_embeddings(), int(token), config)


VISION_ATTENTION = ("vtc_cls", "hiprune", "visionzip")
METHODS = tuple(dict.fromkeys(PRUNE_METHODS + MERGE_METHODS))


class VisualTokenReducer:
    """Fewer visual tokens for a LLaVA-style model, for ``forward`` and ``generate``.

    Args:
        model: ``LlavaForConditionalGeneration`` (or ``LlavaModel``).
        method: any ``tokenset.prune`` method (``"divprune"``, ``"kcenter"``, ``"mmtok"``, ``"vtc_cls"``,
            ``"fastv"``, ``"hiprune"``, ``"visionzip"``) or ``tokenset.merge`` method (``"tome"``, ``"dpc_knn"``,
            ``"kmeans"``, ``"kmedoids"``).
        keep: tokens kept per image: a ratio in (0, 1], a count, or one per image.
        vision_feature_layer, vision_feature_select_strategy: default the model config's (LLaVA: -2, "default" =
            the patch tokens without [CLS]).
        fastv_layer: FastV's K: layers 0 .. K-1 of the language model run once on the full sequence to read layer
            K-1's last-row attention (default 2). Unlike FastV, which prunes inside that same pass, the shortened
            sequence then runs through every layer.
        keep_positions: the kept tokens keep their original positions (position ids with gaps, as FastV does);
            default True for ``"fastv"``, else False (positions renumbered).
        options: the method's own options (``start``/``stop`` for vtc_cls; ``object_layer`` (1-indexed, 9),
            ``deep_layer`` (the feature layer), ``alpha`` for hiprune; ``contextual`` for visionzip; ...).

    Vision-side selectors read their attention rows from the tower (no eager attention): vtc_cls the head-mean [CLS]
    rows of layers ``start .. L-2``; hiprune the column means of the object and deep layers on the patch grid;
    visionzip the head-summed [CLS] row and the head-mean keys of the layer before the feature layer's output, merging
    in the vision space (with [CLS], as VisionZip does) before the projector. The others reduce the projected
    features (DivPrune's choice).

    >>> reducer = VisualTokenReducer(model, "divprune", keep=0.25)            # doctest: +SKIP
    >>> out = reducer.generate(input_ids=ids, pixel_values=px, max_new_tokens=20)
    >>> reducer.kept                                                          # tokens kept per image
    """

    def __init__(self, model: Any, method: str = "divprune", keep: Any = 0.25, *,
                 vision_feature_layer: Optional[int] = None, vision_feature_select_strategy: Optional[str] = None,
                 fastv_layer: int = 2, keep_positions: Optional[bool] = None, **options: Any):
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {', '.join(map(repr, METHODS))}")
        self.model, self.parts = model, llava_parts(model)
        self.method, self.keep, self.options = method, keep, dict(options)
        config = self.parts.config
        self.feature_layer = getattr(config, "vision_feature_layer", -2) if vision_feature_layer is None \
            else vision_feature_layer
        if not isinstance(self.feature_layer, (int, np.integer)):
            raise ValueError(f"vision_feature_layer={self.feature_layer!r}: VisualTokenReducer takes one layer (an int)")
        self.strategy = vision_feature_select_strategy or getattr(config, "vision_feature_select_strategy", "default")
        self.fastv_layer = int(fastv_layer)
        if method == "fastv" and not 1 <= self.fastv_layer <= len(self._language_layers()):
            raise ValueError(f"fastv_layer={fastv_layer} must be in 1..{len(self._language_layers())} (the language "
                             f"model's layers)")
        self.keep_positions = (method == "fastv") if keep_positions is None else bool(keep_positions)
        self.kept: List[int] = []
        self.indices: List[np.ndarray] = []

    # ---- public -------------------------------------------------------------------------------------------------
    def prepare(self, input_ids: Any, pixel_values: Any, attention_mask: Any = None) -> Dict[str, Any]:
        """``inputs_embeds``, ``attention_mask`` and ``position_ids`` of the prompts with each image's placeholders
        replaced by its kept tokens; pass them to ``model(...)`` or ``model.generate(...)``."""
        import torch

        with torch.no_grad():
            ids = torch.as_tensor(input_ids)
            if ids.ndim != 2:
                raise ValueError(f"input_ids must be [batch, length], got shape {tuple(ids.shape)}")
            mask = torch.ones_like(ids) if attention_mask is None else torch.as_tensor(attention_mask)
            if mask.shape != ids.shape:
                raise ValueError(f"attention_mask {tuple(mask.shape)} must have input_ids' shape {tuple(ids.shape)}")
            runs = self._image_runs(ids)
            features, per_image = self._features(pixel_values)
            runs = self._split_runs(runs, per_image, len(features))
            if self.method == "fastv":
                kept = self._fastv_keep(ids, mask, runs, features)
                features = [f[torch.as_tensor(k)] for f, k in zip(features, kept)]
            else:
                kept = self._reduce(features)
                features = [f for f, _ in kept]
                kept = [k for _, k in kept]
            self.indices = [np.asarray(k) for k in kept]
            self.kept = [int(f.shape[0]) for f in features]
            return self._assemble(ids, mask, runs, features, kept)

    def __call__(self, input_ids: Any, pixel_values: Any, attention_mask: Any = None, **kwargs: Any) -> Any:
        """``model(**prepare(...), **kwargs)``."""
        return self.model(**self.prepare(input_ids, pixel_values, attention_mask), **kwargs)

    def generate(self, input_ids: Any, pixel_values: Any, attention_mask: Any = None, **kwargs: Any) -> Any:
        """``model.generate(**prepare(...), **kwargs)``: the new tokens only (the prompt went in as embeddings)."""
        return self.model.generate(**self.prepare(input_ids, pixel_values, attention_mask), **kwargs)

    # ---- steps --------------------------------------------------------------------------------------------------
    def _language_layers(self):
        layers = getattr(self.parts.language_model, "layers", None)
        if layers is None:
            raise ValueError("the language model has no .layers; fastv needs a decoder with a layer list")
        return layers

    def _image_runs(self, ids) -> List[List[tuple]]:
        """Per sequence, its runs of image placeholders as (start, length), in order."""
        runs = []
        is_image = (ids == self.parts.image_token_id).cpu().numpy()
        if not is_image.any():
            raise ValueError(f"input_ids hold no image placeholder (token id {self.parts.image_token_id}): there are "
                             f"no visual tokens to reduce; call the model directly")
        for row in is_image:
            edges = np.flatnonzero(np.diff(np.concatenate([[0], row.astype(np.int8), [0]])))
            runs.append([(int(a), int(b - a)) for a, b in zip(edges[::2], edges[1::2])])
        return runs

    @staticmethod
    def _split_runs(runs, per_image: int, images: int) -> List[List[tuple]]:
        """Runs cut into one image each (adjacent images make one run), as LLaVA's masked_scatter fills them."""
        split = []
        for sequence_runs in runs:
            pieces = []
            for start, length in sequence_runs:
                if length % per_image:
                    raise ValueError(f"a run of {length} image placeholders does not match the {per_image} features "
                                     f"the model gives per image (image placeholder runs must hold whole images)")
                pieces.extend((start + i * per_image, per_image) for i in range(length // per_image))
            split.append(pieces)
        found = sum(len(r) for r in split)
        if found != images:
            raise ValueError(f"the prompts hold {found} images' placeholders but pixel_values has {images} images")
        return split

    def _vision_layers(self) -> int:
        from .hook import layer_stacks, resolve_stack

        stacks = layer_stacks(self.parts.vision_tower)
        return len(stacks[resolve_stack(stacks, "layers")]) if stacks else 0

    def _features(self, pixel_values: Any):
        """Per image, its token features: projected (most methods) or vision-space with [CLS] (visionzip); the
        placeholders each image fills; and the attention rows the vision-side selectors need, kept on self."""
        import torch

        tower = self.parts.vision_tower
        pixels = torch.as_tensor(pixel_values).to(next(tower.parameters()).dtype)
        layers = self._vision_layers()
        want = self._vision_rows(layers)
        if want:
            with record_attention(tower, {"layers": sorted({layer for layer, _ in want})}, keep_qk=True) as rec:
                out = tower(pixels, output_hidden_states=True, return_dict=True)
            self._rows = []  # one host [B, N] array per (layer, rows) pair, in _vision_rows' order
            for layer, rows in want:
                q, k = rec.last("layers", layer)
                reduce = "sum" if self.method == "visionzip" else "mean"
                self._rows.append(self._to_numpy(attention_scores(q, k, rows=rows, reduce=reduce,
                                                                  scale=rec.scaling[("layers", layer)][-1])))
                if self.method == "visionzip":
                    self._keys = k.mean(1)
        else:
            out = tower(pixels, output_hidden_states=True, return_dict=True)
        hidden = out.hidden_states[self.feature_layer]
        per_image = hidden.shape[1] - (1 if self.strategy == "default" else 0)
        if self.method == "visionzip":
            return list(hidden), per_image
        if self.strategy == "default":
            hidden = hidden[:, 1:]
        return list(self.parts.projector(hidden)), per_image

    def _vision_rows(self, layers: int) -> List[tuple]:
        """(layer, rows) pairs of vision attention the method reads."""
        if self.method == "vtc_cls":
            start, stop = self.options.get("start", 16), self.options.get("stop", -1)
            chosen = list(range(layers))[slice(start, stop)]
            if not chosen:
                raise ValueError(f"vtc_cls: layers [{start}:{stop}] of the vision tower's {layers} select none; pass "
                                 f"start= (VTC-CLS: 16 of CLIP-L's 24)")
            return [(layer, "cls") for layer in chosen]
        if self.method == "hiprune":
            obj = int(self.options.get("object_layer", 9)) - 1  # 1-indexed, as HiPrune counts
            deep = int(self.options.get("deep_layer", self.feature_layer))
            if not 0 <= obj < layers:
                raise ValueError(f"hiprune: object_layer={obj + 1} is outside the vision tower's 1..{layers} layers")
            return [(obj, "mean"), (deep % layers, "mean")]
        if self.method == "visionzip":
            return [(self.feature_layer % layers if self.feature_layer < 0 else self.feature_layer - 1, "cls")]
        return []

    def _reduce(self, features: List[Any]) -> List[tuple]:
        """(kept features, kept indices) per image."""
        options = {k: v for k, v in self.options.items() if k not in ("start", "stop", "object_layer", "deep_layer")}
        cls = 1 if self.strategy == "default" else 0
        if self.method == "vtc_cls":
            options["attention"] = np.stack([rows[:, cls:] for rows in self._rows])
            options.update(start=0, stop=None)
        elif self.method == "hiprune":
            options["object_attention"] = self._rows[0][:, cls:]
            options["deep_attention"] = self._rows[1][:, cls:]
            side = int(round(features[0].shape[0] ** 0.5))
            options.setdefault("grid", (side, side))
        elif self.method == "visionzip":
            options.update(attention=self._rows[0], keys=self._to_numpy(self._keys))
        stacked = _stack(features)
        call = _merge if self.method in MERGE_METHODS else _prune
        result = call(stacked, self.keep, method=self.method, **options)
        reduced = []
        offsets = np.concatenate([[0], np.cumsum(result.lengths)])
        for i in range(len(features)):
            values = result.tokens.values[offsets[i]:offsets[i + 1]]
            if self.method == "visionzip":
                values = self.parts.projector(values.to(features[i].dtype)[None])[0]
            reduced.append((values.to(features[i].dtype), self._to_numpy(result.indices[i, :result.lengths[i]])))
        return reduced

    def _fastv_keep(self, ids, mask, runs, features) -> List[np.ndarray]:
        """FastV: layer K-1's head-mean last-row attention of the full sequence over each image's tokens."""
        import torch

        full = self._assemble(ids, mask, runs, features, [np.arange(f.shape[0]) for f in features])
        lm, layers = self.parts.language_model, self._language_layers()
        k = self.fastv_layer
        lm.layers = layers[:k]  # only the first K layers run: FastV reads layer K-1
        try:
            with record_attention(lm, {"layers": [k - 1]}) as rec:
                lm(inputs_embeds=full["inputs_embeds"], attention_mask=full["attention_mask"],
                   position_ids=full["position_ids"])
        finally:
            lm.layers = layers
        q, key = rec.last("layers", k - 1)
        scale = rec.scaling[("layers", k - 1)][-1]
        valid = full["attention_mask"].bool()
        lengths = valid.sum(1).cpu().numpy()
        cu = np.concatenate([[0], np.cumsum(lengths)])
        packed_q = q.transpose(1, 2)[valid]  # [total, H, d]: each sequence's real tokens (left padding dropped)
        packed_k = key.transpose(1, 2)[valid]
        last = self._to_numpy(attention_scores(packed_q, packed_k, rows="last", causal=True, cu_seqlens=cu,
                                               scale=scale))
        # The image tokens of each run sit at their position among the sequence's real tokens.
        attention = []
        for b, sequence_runs in enumerate(runs):
            real = np.flatnonzero(self._to_numpy(mask[b]) != 0)
            for start, length in sequence_runs:
                first = int(np.searchsorted(real, start))
                attention.append(last[b, first:first + length])
        result = _prune([torch.zeros(len(a), 1) for a in attention], self.keep, method="fastv", attention=attention)
        return [self._to_numpy(result.indices[i, :result.lengths[i]]) for i in range(len(attention))]

    def _assemble(self, ids, mask, runs, features, kept) -> Dict[str, Any]:
        """Embeddings with each run replaced by its image's kept features, left-padded; mask; position ids."""
        import torch

        embed = self.parts.embeddings
        dtype = embed.weight.dtype
        sequences, masks, positions = [], [], []
        image = 0
        for b in range(ids.shape[0]):
            text = embed(ids[b:b + 1])[0]
            original = (torch.cumsum(mask[b], 0) - 1).clamp(min=0)
            pieces, piece_mask, piece_pos, cursor = [], [], [], 0
            for start, length in runs[b]:
                pieces.append(text[cursor:start]), piece_mask.append(mask[b, cursor:start])
                piece_pos.append(original[cursor:start])
                chosen = torch.as_tensor(np.asarray(kept[image]), dtype=torch.long)
                if self.method == "visionzip":  # its indices count [CLS] first: [CLS] sits at the first patch
                    chosen = (chosen - 1).clamp(min=0)
                pieces.append(features[image].to(dtype)), piece_mask.append(mask[b, start + chosen])
                piece_pos.append(original[start + chosen])
                cursor, image = start + length, image + 1
            pieces.append(text[cursor:]), piece_mask.append(mask[b, cursor:]), piece_pos.append(original[cursor:])
            real = torch.cat(piece_mask) != 0  # the caller's padding (left or right) goes; it comes back on the left
            sequences.append(torch.cat(pieces)[real]), masks.append(torch.cat(piece_mask)[real])
            positions.append(torch.cat(piece_pos)[real])
        width = max(s.shape[0] for s in sequences)
        embeds = torch.zeros(len(sequences), width, sequences[0].shape[1], dtype=dtype)
        out_mask = torch.zeros(len(sequences), width, dtype=mask.dtype)
        out_pos = torch.zeros(len(sequences), width, dtype=torch.long)
        for b, (s, m, p) in enumerate(zip(sequences, masks, positions)):
            embeds[b, width - s.shape[0]:] = s
            out_mask[b, width - s.shape[0]:] = m
            renumbered = (torch.cumsum(m, 0) - 1).clamp(min=0)
            out_pos[b, width - s.shape[0]:] = torch.where(m != 0, p if self.keep_positions else renumbered, 0)
        return {"inputs_embeds": embeds.to(embed.weight.device), "attention_mask": out_mask.to(embed.weight.device),
                "position_ids": out_pos.to(embed.weight.device)}

    @staticmethod
    def _to_numpy(x: Any) -> np.ndarray:
        return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _stack(features: Sequence[Any]) -> Any:
    """Equal-length per-image features as one [B, N, d] tensor (float32 for the kernels), else a list."""
    import torch

    lengths = {int(f.shape[0]) for f in features}
    if len(lengths) == 1:
        return torch.stack([f.detach().float() for f in features])
    return [f.detach().float() for f in features]
