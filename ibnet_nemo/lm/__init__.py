"""N-gram language models for CTC beam search.

- :mod:`ibnet_nemo.lm.arpa`: build a word n-gram ARPA from text (``build_arpa``), lower-case an existing one
  (``lowercase_arpa``); command line ``python -m ibnet_nemo.lm.arpa {build,lowercase} ...``.
- :mod:`ibnet_nemo.lm.grid_search`: beam width / alpha / beta search over a dev manifest with cached log-probs.
"""
