"""audio-monitor: standing questions to an audio-language model, answers to MQTT."""

__version__ = "0.1.0"
