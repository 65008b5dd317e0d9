"""Voxtral (mistralai/Voxtral-Mini-3B-2507): mistral_common's tokenizer instead of a chat template.

Its prompts are laid out by mistral_common's instruct tokenizer (`[BOS][INST][BEGIN_AUDIO]
[AUDIO]x N question [/INST]`), a package transformers does not require. Its encoder attends to
its padding and its projector reads four encoder frames at a time: never cropped. Its processor
gives no frame mask.
"""

from monitor.engine.families import Family, TokenizerPackage
from monitor.engine.layouts import mistral_instruct

FAMILY = Family(
    name="voxtral",
    title="Voxtral",
    model_types=("voxtral",),
    tokenizer_package=TokenizerPackage("mistral_common", 'pip install "mistral-common[audio]"', "voxtral"),
    layout=mistral_instruct,
    frame_masks=(),
    tiny="voxtral",
)
