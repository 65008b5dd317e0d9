"""Gemma 3n (google/gemma-3n-E4B-it): hears, sees and reads; built here without its vision tower.

Its vision tower is a timm network (MobileNet-V5) that needs timm and torchvision: the monitor
never sends an image, so the model is built with a stand-in where the tower would be and the
checkpoint's `vision_tower.*` weights are left unread. Its processor calls the frame mask
`input_features_mask`, and pads every clip to 188 audio tokens. The sliding-window layers and
the logit soft-cap are read off its config, as for any model.
"""

from monitor.engine.families import Family

FAMILY = Family(
    name="gemma3n",
    title="Gemma 3n",
    model_types=("gemma3n",),
    without_vision="gemma3n_vision",
    frame_masks=("input_features_mask",),
    tiny="gemma3n",
)
