"""The model side: loading, prompt layout, batched yes/no scoring, text generation.

Importing this package is cheap; torch and transformers load only when an engine is built.
"""
