"""Typed NeMo modules of the plugin."""

from ibnet_nemo.modules.ibnet_encoder import IBNetEncoder, ibnet_layout

__all__ = ["IBNetEncoder", "ibnet_layout"]
