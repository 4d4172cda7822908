"""IBNet for NVIDIA NeMo: an inverted-bottleneck CTC encoder that NeMo builds from YAML.

``import ibnet_nemo`` grants NeMo's ``_target_`` allow-list the plugin's own public classes (and nothing
wider), so that ``EncDecCTCModel`` can be built from a config whose encoder is
``_target_: ibnet_nemo.modules.IBNetEncoder`` and a ``.nemo`` holding one can be restored.
"""

from nemo.core.classes import common as _nemo_common

from ibnet_nemo.modules import IBNetEncoder

__all__ = ["IBNetEncoder", "PLUGIN_TARGETS", "register"]
__version__ = "0.1.0"

#: The ``_target_`` paths the plugin adds to NeMo's allow-list: its public, stable class paths.
PLUGIN_TARGETS = ("ibnet_nemo.modules.IBNetEncoder",)


def register() -> None:
    """Add :data:`PLUGIN_TARGETS` to NeMo's target allow-list (idempotent; done on import)."""
    for target in PLUGIN_TARGETS:
        if target not in _nemo_common.ALLOWED_TARGET_PREFIXES:
            _nemo_common.ALLOWED_TARGET_PREFIXES.append(target)


register()
