"""Data preparation: NeMo manifests and corpora."""
