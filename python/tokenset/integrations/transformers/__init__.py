"""tokenset inside Hugging Face transformers models, without forking model code.

* :func:`record_attention`: a context manager that registers an attention function with
  ``transformers.AttentionInterface``, records the post-RoPE q / k of the layers asked for (or directly their
  attention rows, from :func:`tokenset.attention_scores`) and delegates to the model's own attention (SDPA by default),
  so fused attention keeps its speed.
* :class:`VisualTokenReducer`: prune or merge the visual tokens of a LLaVA-style model
  (``LlavaForConditionalGeneration``: vision_tower, multi_modal_projector, language_model) between the projector and
  the language model, for ``forward`` and ``generate``, batch > 1 with different images and keep counts.

Needs ``transformers`` (>= 5) and torch: ``pip install torch==2.13.0 transformers``.
"""
from .hook import AttentionRecord, layer_stacks, record_attention
from .llava import VisualTokenReducer

__all__ = ["record_attention", "AttentionRecord", "layer_stacks", "VisualTokenReducer"]
