"""Encoders: raw face frames, voice audio and words -> feature vectors (or "absent" with a reason).

One interface (:class:`Encoder`): ``encode(raw) -> EncoderResult``. ``ENCODERS`` maps each
modality key to its encoder class; ``DIMS`` gives the feature sizes the fusion models are built with.
"""

from .base import Encoder, EncoderResult, Lazy, MissingModelError, package_file
from .face import FaceEncoder
from .voice import StreamingVAD, VoiceEncoder, speech_probs
from .words import Transcriber, WordsEncoder

ENCODERS: dict[str, type[Encoder]] = {"text": WordsEncoder, "audio": VoiceEncoder, "vision": FaceEncoder}
DIMS: dict[str, int] = {m: cls.dim for m, cls in ENCODERS.items()}

__all__ = [
    "DIMS", "ENCODERS", "Encoder", "EncoderResult", "FaceEncoder", "Lazy", "MissingModelError", "StreamingVAD",
    "Transcriber", "VoiceEncoder", "WordsEncoder", "package_file", "speech_probs",
]
