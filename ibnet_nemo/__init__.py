"""IBNet for NVIDIA NeMo: an inverted-bottleneck CTC encoder that NeMo builds from YAML.

``import ibnet_nemo`` grants NeMo's ``_target_`` allow-list the plugin's own public classes (and nothing
wider), so that ``EncDecCTCModel`` can be built from a config whose encoder is
``_target_: ibnet_nemo.modules.IBNetEncoder`` and a ``.nemo`` holding one can be restored; and it adds the
plugin's speed perturbation (``speed_soxr``, :mod:`ibnet_nemo.data.perturb`) to NeMo's audio augmentations.
"""

from nemo.collections.asr.parts.preprocessing import perturb as _nemo_perturb
from nemo.core.classes import common as _nemo_common

from ibnet_nemo.data.perturb import SPEED_PERTURBATION, SoxrSpeedPerturbation
from ibnet_nemo.modules import IBNetEncoder

__all__ = ["IBNetEncoder", "PLUGIN_TARGETS", "register"]
__version__ = "0.1.0"

#: The ``_target_`` paths the plugin adds to NeMo's allow-list: its public, stable class paths.
PLUGIN_TARGETS = ("ibnet_nemo.modules.IBNetEncoder",)


def register() -> None:
    """Add :data:`PLUGIN_TARGETS` to NeMo's target allow-list and :class:`SoxrSpeedPerturbation` to its audio
    augmentations (idempotent; done on import)."""
    for target in PLUGIN_TARGETS:
        if target not in _nemo_common.ALLOWED_TARGET_PREFIXES:
            _nemo_common.ALLOWED_TARGET_PREFIXES.append(target)
    if SPEED_PERTURBATION not in _nemo_perturb.perturbation_types:
        _nemo_perturb.register_perturbation(SPEED_PERTURBATION, SoxrSpeedPerturbation)


register()
