"""q / k and attention rows out of a running Hugging Face model, with its fused attention left in place.

transformers (>= 5) looks every attention layer's function up in ``AttentionInterface`` by the name its config holds.
:func:`record_attention` registers one function under ``"tokenset_record"``, points the model's configs at it for
the duration of a ``with`` block, and restores them on exit (the registration is removed when the last recorder
exits). The function records what it is asked to for the chosen layers, then calls the implementation each config had
before (SDPA, flash, or the model file's own eager function), so outputs are unchanged. Attention masks are built
under the same name by the mask function of the original implementation (registered beside it in
``AttentionMaskInterface``).

Layers are found by identity: every ``nn.ModuleList`` of layers with an attention submodule is a *stack* named by its
dotted path (``model.vision_tower.vision_model.encoder.layers``, ``model.language_model.layers``); CLIP attention
has no ``layer_idx``, so a module's layer number is its position in its stack.
"""
from __future__ import annotations

import importlib
import threading
from collections import OrderedDict
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

NAME = "tokenset_record"
_lock = threading.Lock()
_active: List["AttentionRecord"] = []


def _transformers():
    try:
        import transformers  # noqa: F401
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface
    except ImportError:
        raise ImportError("tokenset.integrations.transformers needs transformers >= 5 and torch: "
                          "pip install torch==2.13.0 transformers") from None
    return AttentionInterface, ALL_ATTENTION_FUNCTIONS, sdpa_attention_forward


def _mask_interface():
    from transformers.masking_utils import AttentionMaskInterface

    return AttentionMaskInterface


def _attention_child(layer: Any) -> Optional[Any]:
    """The self-attention module of one decoder / encoder layer (the first child module named like one)."""
    for name in ("self_attn", "attn", "attention", "self_attention"):
        child = getattr(layer, name, None)
        if child is not None and hasattr(child, "forward"):
            return child
    return None


def layer_stacks(model: Any) -> "OrderedDict[str, List[Any]]":
    """Every stack of layers in `model`: dotted path of the ModuleList -> its layers' attention modules, in order."""
    import torch

    stacks: "OrderedDict[str, List[Any]]" = OrderedDict()
    for path, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 0:
            attention = [_attention_child(layer) for layer in module]
            if all(a is not None for a in attention):
                stacks[path] = attention
    return stacks


def resolve_stack(stacks: "OrderedDict[str, List[Any]]", key: str) -> str:
    """The one stack `key` names: its full path, or a word in it (``"vision"``, ``"language"``, ``"text"``)."""
    if key in stacks:
        return key
    matches = [path for path in stacks if key in path.split(".") or any(part.startswith(key) for part in
                                                                         path.split("."))]
    if len(matches) != 1:
        listing = ", ".join(stacks) or "none"
        raise ValueError(f"layer stack {key!r} matches {len(matches)} of the model's stacks ({listing}); name one by "
                         f"its path or a word only it contains")
    return matches[0]


class AttentionRecord:
    """What :func:`record_attention` collected, per ``(stack, layer)`` key (the stack as given, the layer number as
    given, negative ones included), one entry per call of that layer (``generate`` calls each layer once per step):

    * ``qk[key]``: list of ``(q [B, H, L, d], k [B, Hkv, L_k, d])`` post-RoPE tensors (detached; with ``keep_qk``);
    * ``scores[key]``: list of :func:`tokenset.attention_scores` results for ``rows`` / ``reduce`` (with ``rows``).
    """

    def __init__(self, wanted: Dict[int, Tuple[str, int]], rows: Any, reduce: str, keep_qk: bool,
                 previous: Dict[int, Any]):
        self._wanted = wanted
        self.rows, self.reduce, self.keep_qk = rows, reduce, keep_qk
        self._previous = previous
        self.qk: Dict[Tuple[str, int], List[Tuple[Any, Any]]] = {key: [] for key in wanted.values()}
        self.scores: Dict[Tuple[str, int], List[Any]] = {key: [] for key in wanted.values()}

    def last(self, stack: str, layer: int) -> Tuple[Any, Any]:
        """The most recent ``(q, k)`` of a layer."""
        calls = self.qk.get((stack, layer))
        if not calls:
            raise KeyError(f"nothing recorded for layer {layer} of {stack!r} (recorded: {sorted(self.qk)}); was the "
                           f"model called inside the with block, with keep_qk=True?")
        return calls[-1]

    def _take(self, module: Any, query: Any, key: Any, kwargs: dict) -> None:
        where = self._wanted.get(id(module))
        if where is None:
            return
        q, k = query.detach(), key.detach()
        if self.keep_qk:
            self.qk[where].append((q, k))
        if self.rows is not None:
            from ...attention_scores import attention_scores

            scale = kwargs.get("scaling")
            self.scores[where].append(attention_scores(q, k, rows=self.rows, reduce=self.reduce,
                                                       causal=bool(getattr(module, "is_causal", False)),
                                                       scale=None if scale is None else float(scale)))


def _all_configs(model: Any) -> "OrderedDict[int, Any]":
    from transformers import PretrainedConfig

    found: "OrderedDict[int, Any]" = OrderedDict()

    def visit(config: Any) -> None:
        if isinstance(config, PretrainedConfig) and id(config) not in found:
            found[id(config)] = config
            for name in getattr(config, "sub_configs", None) or {}:
                visit(getattr(config, name, None))

    for module in model.modules():
        visit(getattr(module, "config", None))
    return found


def _delegate(module: Any, implementation: Optional[str]):
    """The attention function `module` would have used under `implementation`."""
    _, functions, sdpa = _transformers()
    if implementation in (None, "sdpa"):
        return sdpa
    if implementation == "eager":
        return getattr(importlib.import_module(type(module).__module__), "eager_attention_forward", sdpa)
    return functions[implementation]


def _recording_attention(module, query, key, value, attention_mask, **kwargs):
    with _lock:
        recorders = list(_active)
    previous = None
    for record in recorders:
        record._take(module, query, key, kwargs)
        before = record._previous.get(id(module.config))
        if previous is None and before != NAME:  # a nested recorder saw ours: the outermost one knows the original
            previous = before
    return _delegate(module, previous)(module, query, key, value, attention_mask, **kwargs)


class _Recording:
    def __init__(self, model: Any, layers: Dict[str, Sequence[int]], rows: Any, reduce: str, keep_qk: bool):
        interface, _, _ = _transformers()
        if not hasattr(model, "set_attn_implementation"):
            raise TypeError(f"record_attention needs a transformers PreTrainedModel, got {type(model).__name__}")
        stacks = layer_stacks(model)
        wanted: Dict[int, Tuple[str, int]] = {}
        for given, numbers in layers.items():
            path = resolve_stack(stacks, given)
            modules = stacks[path]
            for n in ([numbers] if isinstance(numbers, int) else list(numbers)):
                if not -len(modules) <= int(n) < len(modules):
                    raise ValueError(f"layer {n} is out of range for {path!r}, which has {len(modules)} layers")
                wanted[id(modules[int(n)])] = (given, int(n))
        self.model, self.interface = model, interface
        # Every config set_attn_implementation may touch: each submodule's and, recursively, their sub-configs.
        self.configs = _all_configs(model)
        self.saved = {cid: c._attn_implementation_internal for cid, c in self.configs.items()}
        previous = {cid: c._attn_implementation for cid, c in self.configs.items()}
        self.record = AttentionRecord(wanted, rows, reduce, keep_qk, previous)
        # transformers builds attention masks by the implementation's name (an unknown one gets no mask at all, not
        # even the padding): ours builds them as the causal stack's original implementation did.
        causal = [m for modules in stacks.values() for m in modules if getattr(m, "is_causal", False)]
        self.mask_implementation = previous.get(id(getattr(causal[-1], "config", None)) if causal else None,
                                                previous[id(model.config)])

    def __enter__(self) -> AttentionRecord:
        masks = _mask_interface()
        with _lock:
            if not _active:
                self.interface.register(NAME, _recording_attention)
                implementation = self.mask_implementation if self.mask_implementation in masks._global_mapping \
                    else "sdpa"
                masks.register(NAME, masks._global_mapping[implementation])
            _active.append(self.record)
        try:
            self.model.set_attn_implementation(NAME)
        except Exception:
            self._remove()
            raise
        return self.record

    def _remove(self) -> None:
        with _lock:
            if self.record in _active:
                _active.remove(self.record)
            if not _active:
                self.interface._global_mapping.pop(NAME, None)
                _mask_interface()._global_mapping.pop(NAME, None)

    def __exit__(self, *exc) -> None:
        try:
            # set_attn_implementation gives every sub-config one name; each config gets back its own.
            for cid, config in self.configs.items():
                config._attn_implementation_internal = self.saved[cid]
        finally:
            self._remove()


def record_attention(model: Any, layers: Union[Dict[str, Union[int, Sequence[int]]], Iterable[Tuple[str, int]]],
                     rows: Any = None, reduce: str = "mean", keep_qk: bool = True) -> _Recording:
    """Record the post-RoPE q / k (and, with ``rows``, the attention rows) of chosen layers while the model runs with
    its own fused attention.

    Args:
        model: a transformers PreTrainedModel (composite models included: LLaVA's vision tower and language model).
        layers: ``{stack: layer numbers}``; a stack is named by its path (:func:`layer_stacks`) or a word only it
            contains (``"vision"``, ``"language"``); numbers count from 0, negative from the end.
        rows: when given, :func:`tokenset.attention_scores` of each recorded call with these ``rows`` (``"cls"``,
            ``"last"``, ``"mean"``, row numbers) and ``reduce``, causal where the layer is. Padding masks are not
            applied: for padded batches record q / k and pass ``lengths`` / ``cu_seqlens`` yourself.
        keep_qk: keep the q / k tensors (memory: two activations per recorded call).

    >>> with record_attention(model, {"vision": [-2]}, rows="cls") as rec:   # doctest: +SKIP
    ...     model(**inputs)
    >>> rec.scores[("vision", -2)][0]   # [B, N] head-mean [CLS] row of the penultimate vision layer
    """
    if isinstance(layers, dict):
        grouped = dict(layers)
    else:
        grouped: Dict[str, List[int]] = {}
        for stack, number in layers:
            grouped.setdefault(stack, []).append(number)
    return _Recording(model, grouped, rows, reduce, keep_qk)
