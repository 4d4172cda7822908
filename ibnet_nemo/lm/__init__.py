"""N-gram language models for CTC beam search.

- :mod:`ibnet_nemo.lm.arpa`: build a word n-gram ARPA from text (``build_arpa``), lower-case an existing one
  (``lowercase_arpa``), read its words (``read_arpa_unigrams``); command line
  ``python -m ibnet_nemo.lm.arpa {build,lowercase} ...``.

The beam width / alpha / beta search that uses such a model is :mod:`ibnet_nemo.grid_search`.
"""
