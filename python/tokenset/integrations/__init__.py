"""Integrations with other libraries (each imported on demand: tokenset's core needs only numpy).

* ``tokenset.integrations.transformers``: read q / k (or attention rows) out of a running Hugging Face model without
  eager attention, and prune or merge the visual tokens of LLaVA-style models.
"""
