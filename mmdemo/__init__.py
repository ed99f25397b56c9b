"""mmdemo: multimodal sentiment (face, voice, words) on the CMU-MOSI scale, -3..+3.

The core never imports gradio; ``app.py`` is the only UI.
"""

__version__ = "0.1.0"

MODALITIES = ("text", "audio", "vision")
"""Canonical modality keys (as in CMU-MOSI releases). The UI calls them words, voice and face."""

DISPLAY_NAMES = {"text": "words", "audio": "voice", "vision": "face"}
