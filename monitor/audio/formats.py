"""The recording formats a `file:` source reads: libsndfile's, and through FFmpeg what phones record.

One list, so that `replay --help`, `eval`'s label folders and the docs name the same formats.
"""

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aac", ".3gp", ".amr", ".caf", ".opus", ".webm")
"""File name endings that label folders pick up."""

AUDIO_FORMATS = "WAV, FLAC, OGG, MP3, M4A/AAC, 3GP/AMR, CAF, Opus, WebM"
"""The same, as help texts and messages name them."""
