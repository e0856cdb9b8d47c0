"""q / k and attention rows out of a running Hugging Face model, with its fused attention left in place.

transformers (>= 5) looks every attention layer's function up in ``AttentionInterface`` by the name its config holds.
:func:`record_attention` registers one function under ``"tokenset_record_<impl>"``, points the model's configs at it
for the duration of a ``with`` block, and restores them on exit (a name is unregistered when the last recorder using
it exits). The function records what it is asked to for the chosen layers, then calls the implementation each config
had before (SDPA, flash, or the model file's own eager function), so outputs are unchanged. Attention masks are built
under the same name by the mask function of ``<impl>``, the causal stack's original implementation (registered beside
it in ``AttentionMaskInterface``): models of different implementations can be recorded at once. Models whose layers do
not use the interface are refused with the layers named. Recorders nest (on one model or several); one recorder is
entered once at a time.

Layers are found by identity: every ``nn.ModuleList`` of layers with an attention submodule is a *stack* named by its
dotted path (``model.vision_tower.vision_model.encoder.layers``, ``model.language_model.layers``); CLIP attention
has no ``layer_idx``, so a module's layer number is its position in its stack.
"""
from __future__ import annotations

import importlib
import threading
from collections import OrderedDict
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

NAME = "tokenset_record"  # registered as tokenset_record_<the mask implementation it builds masks like>
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
    * ``scaling[key]``: the score scale the model passed with each call (None: the default ``d ** -0.5``);
    * ``scores[key]``: list of :func:`tokenset.attention_scores` results for ``rows`` / ``reduce`` (with ``rows``).
    """

    def __init__(self, wanted: Dict[int, List[Tuple[str, int]]], rows: Any, reduce: str, keep_qk: bool):
        self._wanted = wanted
        self.rows, self.reduce, self.keep_qk = rows, reduce, keep_qk
        self._previous: Dict[int, Any] = {}
        keys = [key for where in wanted.values() for key in where]
        self.qk: Dict[Tuple[str, int], List[Tuple[Any, Any]]] = {key: [] for key in keys}
        self.scaling: Dict[Tuple[str, int], List[Optional[float]]] = {key: [] for key in keys}
        self.scores: Dict[Tuple[str, int], List[Any]] = {key: [] for key in keys}

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
        scale = kwargs.get("scaling")
        scale = None if scale is None else float(scale)
        rows = None
        if self.rows is not None:
            from ...attention_scores import attention_scores

            rows = attention_scores(q, k, rows=self.rows, reduce=self.reduce,
                                    causal=bool(getattr(module, "is_causal", False)), scale=scale)
        for name in where:
            self.scaling[name].append(scale)
            if self.keep_qk:
                self.qk[name].append((q, k))
            if rows is not None:
                self.scores[name].append(rows)


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
        if previous is None and not str(before).startswith(NAME):  # nested: the outermost knows the original
            previous = before
    return _delegate(module, previous)(module, query, key, value, attention_mask, **kwargs)


# Registered names (one per mask implementation: transformers builds masks by the implementation's name, and an
# unknown name gets no mask at all, not even the padding) and how many active recorders use each.
_registered: Dict[str, int] = {}


class _Recording:
    def __init__(self, model: Any, layers: Dict[str, Sequence[int]], rows: Any, reduce: str, keep_qk: bool):
        interface, _, _ = _transformers()
        if not hasattr(model, "set_attn_implementation"):
            raise TypeError(f"record_attention needs a transformers PreTrainedModel, got {type(model).__name__}")
        self.stacks = layer_stacks(model)
        wanted: Dict[int, List[Tuple[str, int]]] = {}
        self.modules: Dict[int, Any] = {}
        for given, numbers in layers.items():
            path = resolve_stack(self.stacks, given)
            modules = self.stacks[path]
            for n in ([numbers] if isinstance(numbers, int) else list(numbers)):
                if not -len(modules) <= int(n) < len(modules):
                    raise ValueError(f"layer {n} is out of range for {path!r}, which has {len(modules)} layers")
                module = modules[int(n)]
                wanted.setdefault(id(module), []).append((given, int(n)))
                self.modules[id(module)] = module
        self.model, self.interface = model, interface
        self.record = AttentionRecord(wanted, rows, reduce, keep_qk)
        self.active = False

    def __enter__(self) -> AttentionRecord:
        if self.active:
            raise RuntimeError("this recorder is already active; make a new one with record_attention(...)")
        # The configs as they are now (an outer recorder's name included): what this recorder's exit restores.
        self.configs = _all_configs(self.model)  # every config set_attn_implementation may touch, sub-configs too
        self.saved = {cid: c._attn_implementation_internal for cid, c in self.configs.items()}
        self.record._previous = {cid: c._attn_implementation for cid, c in self.configs.items()}
        causal = [m for modules in self.stacks.values() for m in modules if getattr(m, "is_causal", False)]
        implementation = self.record._previous.get(id(getattr(causal[-1], "config", None)) if causal else None,
                                                   self.record._previous[id(self.model.config)])
        masks = _mask_interface()
        if str(implementation).startswith(NAME):  # nested on the same model: the outer recorder's name
            self.name = str(implementation)
        else:
            self.name = f"{NAME}_{implementation if implementation in masks._global_mapping else 'sdpa'}"
        with _lock:
            if _registered.get(self.name, 0) == 0:
                self.interface.register(self.name, _recording_attention)
                masks.register(self.name, masks._global_mapping[self.name[len(NAME) + 1:]])
            _registered[self.name] = _registered.get(self.name, 0) + 1
            _active.append(self.record)
        self.active = True
        try:
            self.model.set_attn_implementation(self.name)
            skipped = [self.record._wanted[i][0] for i, m in self.modules.items()
                       if getattr(getattr(m, "config", None), "_attn_implementation", None) != self.name]
            if skipped:
                raise ValueError(f"layers {skipped} of {type(self.model).__name__} do not look their attention up in "
                                 f"transformers' AttentionInterface (the model does not support "
                                 f"set_attn_implementation), so they cannot be recorded")
        except Exception:
            self.__exit__(None, None, None)
            raise
        return self.record

    def _remove(self) -> None:
        with _lock:
            if self.record in _active:
                _active.remove(self.record)
            _registered[self.name] -= 1
            if _registered[self.name] == 0:
                del _registered[self.name]
                self.interface._global_mapping.pop(self.name, None)
                _mask_interface()._global_mapping.pop(self.name, None)

    def __exit__(self, *exc) -> None:
        if not self.active:
            return
        try:
            # set_attn_implementation gives every sub-config one name; each config gets back what it had.
            for cid, config in self.configs.items():
                config._attn_implementation_internal = self.saved[cid]
        finally:
            self.active = False
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
