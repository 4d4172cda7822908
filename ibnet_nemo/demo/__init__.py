"""``make demo``: an AN4-style alphanumeric task built offline (TTS voices + real telephone prompts), IBNet and
QuartzNet trained on it with the project's NeMo recipe, evaluated greedily and with a task word LM.

Run it with ``python -m ibnet_nemo.demo`` (what ``make demo`` calls); see ``docs/demo.md``.
"""
