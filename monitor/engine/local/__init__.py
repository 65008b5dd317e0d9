"""The local backend: the model loaded in this process and asked through the scoring core.

    engine.py     Engine: the Backend (load, calibrate, answer requests; a failing window fails alone)
    scorer.py     Scorer: the scoring core (packed yes/no scores, batched windows, greedy text)
    selfcheck.py  what the scoring core checks on the loaded model before it takes a shortcut
    loading.py    a transformers checkpoint loaded as its family says; audio_only.py (no vision parts)
    inputs.py     a window as the model's inputs, through its processor (a family may bring its own)
    packing.py, positions.py, encoder.py, textgen.py, answers.py: the pieces of the forward

Its modules import torch; `monitor.engine.backends` imports them only when a model is loaded.
"""
