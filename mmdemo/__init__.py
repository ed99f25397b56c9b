"""mmdemo: multimodal sentiment (face, voice, words) on the CMU-MOSI scale, -3..+3.

The core never imports gradio; ``app.py`` is the only UI.
"""

import os

# onnxruntime (Silero VAD, inside faster-whisper) looks up Microsoft's telemetry host from its own
# native threads seconds after it is imported, unless this is set before that import. Every entry
# point (app, CLIs, benchmarks, tests) imports mmdemo first. tests/test_offline.py watches the
# system calls of a session and of an app start for any connection that leaves the machine.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"

MODALITIES = ("text", "audio", "vision")
"""Canonical modality keys (as in CMU-MOSI releases). The UI calls them words, voice and face."""

DISPLAY_NAMES = {"text": "words", "audio": "voice", "vision": "face"}
