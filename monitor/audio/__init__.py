"""Audio in: sources (microphone, file), the ring buffer, conversion to 16 kHz mono, level and VAD."""
