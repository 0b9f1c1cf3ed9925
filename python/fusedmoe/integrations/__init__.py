"""Integrations of fusedmoe with other frameworks. Each submodule imports its framework lazily.

* ``fusedmoe.integrations.transformers``: ``experts_implementation="fusedmoe"`` for Hugging Face
  transformers models (``register()`` first; docs/transformers.md).
"""
