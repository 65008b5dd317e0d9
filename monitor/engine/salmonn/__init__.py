"""SALMONN (Whisper + BEATs + window Q-Former + Vicuna with LoRA) from its released checkpoints."""
