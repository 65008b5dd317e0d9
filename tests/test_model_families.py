"""Model families behind the engine, and the load-time check that keeps packed scoring honest.

Every family is a tiny random-weight checkpoint of its real architecture, written to disk and
loaded the daemon's way (`Engine.load`). Its yes/no scores are compared with a reference that
does not use the engine: the processor, one full forward per question, the whole softmax.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from monitor.engine import families
from monitor.engine.local.engine import Engine
from monitor.engine.settings import ModelSettings
from monitor.testing import tiny
from monitor.testing.signals import RATE, noise, tone
from tests.conftest import REPO, need

QUESTIONS = [
    "Help?",
    "Is a baby or an infant crying in this recording?",
    "Is someone falling down or has a person fallen to the floor? Listen for a thud, a crash or a body hitting "
    "the ground, followed by silence, a groan or someone calling for help; a dropped object such as a pot or a "
    "book is not a fall, and neither is a door slamming or footsteps on the stairs. Answer yes or no.",
]
WINDOWS = {
    "0.5s noise": noise(0.5, seed=1),
    "3.7s tone": tone(3.7, 523.0),
    "30s noise+tone": noise(30.0, 0.05, seed=2) + tone(30.0, 200.0, 0.2),
}


def reference_inputs(processor, audio: np.ndarray, prompt: str) -> dict:
    """The processor's inputs for one question about one clip.

    A chat template renders the text and the processor takes the audio beside it; Voxtral's
    processor (mistral_common's instruct format) takes the clip inside the conversation, as a file.
    """
    if type(processor).__name__ == "VoxtralProcessor":
        import soundfile as sf

        wav = io.BytesIO()
        sf.write(wav, audio.astype(np.float32), RATE, format="WAV", subtype="FLOAT")
        clip = {"type": "audio", "base64": base64.b64encode(wav.getvalue()).decode()}
        messages = [{"role": "user", "content": [clip, {"type": "text", "text": prompt}]}]
        return dict(processor.apply_chat_template(messages, tokenize=True, return_dict=True))
    messages = [{"role": "user", "content": [{"type": "audio", "audio": "x"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=text, audio=audio, sampling_rate=RATE, return_tensors="pt")
    for unused in getattr(processor, "unused_input_names", None) or []:
        inputs.pop(unused, None)
    return dict(inputs)


def token_words(tokenizer) -> dict[int, str]:
    """What every token id reads as, lower-cased and stripped."""
    try:
        return {i: tokenizer.convert_tokens_to_string([t]).strip().lower() for t, i in tokenizer.get_vocab().items()}
    except NotImplementedError:  # mistral_common's tokenizers: decode each id
        return {i: tokenizer.decode([i]).strip().lower() for i in range(len(tokenizer))}


def reference_scores(engine: Engine, audio: np.ndarray, prompt: str) -> tuple[float, float]:
    """Written independently of the engine: the processor, one full forward, the whole softmax."""
    inputs = reference_inputs(engine.processor, audio, prompt)
    with torch.no_grad():
        logits = engine.model(**inputs).logits[0, -1].double()
    probs = torch.softmax(logits, dim=-1)
    words = token_words(engine.tokenizer)
    special = set(engine.tokenizer.all_special_ids)
    p_yes = float(probs[[i for i, w in words.items() if w == "yes" and i not in special]].sum())
    p_no = float(probs[[i for i, w in words.items() if w == "no" and i not in special]].sum())
    return p_yes / (p_yes + p_no), p_yes + p_no


def largest_difference(engine: Engine, audio: np.ndarray) -> tuple[float, list[float]]:
    got = engine.score(audio, QUESTIONS)
    diff = 0.0
    for prompt in QUESTIONS:
        want = reference_scores(engine, audio, prompt)
        diff = max(diff, abs(got[prompt][0] - want[0]), abs(got[prompt][1] - want[1]))
    return diff, [s for s, _ in got.values()]


# ---------------------------------------------------------------------------- the load-time check


@pytest.fixture(scope="module")
def sliding_window_dir(tmp_path_factory) -> Path:
    """A tiny Qwen2-Audio whose language model attends through a 16-token sliding window.

    Its own mask rule (each token sees only the 16 before it) is one a plain tree mask does not
    follow: packed with it, a question would see the whole audio prefix.
    """
    from monitor.testing.tiny.qwen2_audio import make_model, make_processor

    processor = make_processor()
    model = make_model("tiny", processor)
    text = model.config.text_config
    text.use_sliding_window, text.sliding_window, text.max_window_layers = True, 16, 0
    text.layer_types = ["sliding_attention"] * text.num_hidden_layers
    out = tmp_path_factory.mktemp("tiny-sliding")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def load_logged(path: Path, caplog) -> tuple[Engine, str]:
    """The engine loaded from `path`, and the line its yes/no scoring check logged."""
    with caplog.at_level(logging.INFO, logger="monitor.engine"):
        engine = Engine.load(ModelSettings(path=path))
    return engine, next(r.getMessage() for r in caplog.records if "yes/no scoring of" in r.getMessage())


def test_self_check_picks_packed_scoring_where_it_equals_the_plain_forward(tiny_model_dir, caplog):
    engine, line = load_logged(tiny_model_dir, caplog)
    assert engine.scoring_path == "packed"
    assert ": packed (largest difference from the plain forward" in line


def test_a_sliding_window_model_is_packed_with_its_window(sliding_window_dir, caplog):
    """The packed row narrows the sliding layers' mask to the window, counted in positions."""
    engine, line = load_logged(sliding_window_dir, caplog)
    assert engine.sliding_window == 16
    assert engine.scoring_path == "packed", line
    for window in ("0.5s noise", "3.7s tone"):
        diff, scores = largest_difference(engine, WINDOWS[window])
        assert diff < 1e-4, window
        assert max(scores) - min(scores) > 0.02


def test_self_check_refuses_packing_a_model_it_would_get_wrong(sliding_window_dir, monkeypatch, caplog):
    """Forced window-blind (the tree mask alone on a sliding-window model): the check refuses packing."""
    from monitor.engine.local import scorer as engine_module

    monkeypatch.setattr(engine_module, "sliding_window", lambda model: None)
    engine, line = load_logged(sliding_window_dir, caplog)
    assert engine.scoring_path == "batched"
    assert "batched, because packed scoring differs from the plain forward by" in line
    audio = WINDOWS["3.7s tone"]
    diff, scores = largest_difference(engine, audio)
    assert diff < 1e-4, "the batched fallback must give the plain forward's scores"
    assert max(scores) - min(scores) > 0.02
    engine.packed = True  # forced: what the engine would have answered without the check
    forced, _ = largest_difference(engine, audio)
    assert forced > 1e-3, f"packing was refused but is not wrong here ({forced:.2g}): the test proves nothing"


def test_self_check_refuses_positions_that_do_not_restart_per_question(tiny_model_dir, monkeypatch, caplog):
    """Packing whose positions run on through the row (each question after the previous ones) is refused."""
    from monitor.engine.local import scorer as engine_module
    from monitor.engine.local.positions import TokenPositions

    class RunOn(TokenPositions):
        def positions(self, packed, prefixes, features):
            return torch.arange(packed.input_ids.shape[1], device=packed.input_ids.device).expand_as(packed.input_ids)

    monkeypatch.setattr(engine_module, "position_rule", lambda model, family: RunOn())
    engine, line = load_logged(tiny_model_dir, caplog)
    assert engine.scoring_path == "batched"
    assert "batched, because packed scoring differs" in line
    diff, _ = largest_difference(engine, WINDOWS["0.5s noise"])
    assert diff < 1e-4


# ---------------------------------------------------------------------------- the families

# Every family whose tiny checkpoint is a model folder, as the family registry lists them: a new family's
# file and tiny builder bring it into every test below.
FAMILIES = tiny.folder_families()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """checkpoint(arch): the folder of its tiny checkpoint, built once per module."""
    from monitor.testing.tiny_model import main

    built: dict[str, Path] = {}

    def checkpoint(arch: str) -> Path:
        package = families.named(arch).tokenizer_package
        if package is not None:  # mistral_common for Voxtral: a dev dependency, CI has it
            need(importlib.util.find_spec(package.module) is not None, f"{package.module} (the [dev] extra)")
        if arch not in built:
            out = tmp_path_factory.mktemp(f"tiny-{arch}")
            assert main([str(out), "--arch", arch]) == 0
            built[arch] = out
        return built[arch]

    return checkpoint


@pytest.fixture(scope="module")
def loaded(checkpoints):
    """loaded(arch): (arch, the engine loaded from its tiny checkpoint, the self-check's log lines), once per module."""
    engines: dict[str, tuple[str, Engine, list[str]]] = {}

    def load(arch: str) -> tuple[str, Engine, list[str]]:
        if arch not in engines:
            out = checkpoints(arch)
            handler = _Lines()
            logger = logging.getLogger("monitor.engine")
            logger.addHandler(handler)
            level = logger.level
            logger.setLevel(logging.INFO)
            try:
                engine = Engine.load(ModelSettings(path=out))
            finally:
                logger.removeHandler(handler)
                logger.setLevel(level)
            engines[arch] = (arch, engine, handler.lines)
        return engines[arch]

    return load


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, loaded) -> tuple[str, Engine, list[str]]:
    """(arch, the engine loaded from its tiny checkpoint, the self-check's log lines)."""
    return loaded(request.param)


@pytest.fixture(scope="module")
def gemma(loaded) -> tuple[str, Engine, list[str]]:
    if "gemma3n" not in FAMILIES:  # its family file and tiny builder are what make it a family here
        pytest.skip("no gemma3n family in monitor.engine.families")
    return loaded("gemma3n")


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_family_is_loaded_from_its_config_and_scored_packed(family):
    arch, engine, lines = family
    assert type(engine.model).__name__ == engine.model.config.architectures[0]
    assert engine.scoring_path == "packed", lines
    assert ("3-D" in engine.positions.name) == ("omni" in arch)
    # Qwen3-Omni's audio encoder (transformers 5.24) encodes a batch of clips unlike each alone:
    # the engine finds it at load and gives each window its own forward.
    assert engine.batch_windows == (arch != "qwen3_omni"), lines
    assert any(": packed (largest difference from the plain forward" in line for line in lines)


def test_family_is_found_from_its_checkpoints_config(family):
    from transformers import AutoConfig

    arch, engine, _ = family
    assert families.of(AutoConfig.from_pretrained(engine.settings.path)) is families.named(arch) is engine.family


@pytest.mark.parametrize("window", list(WINDOWS))
def test_family_scores_equal_the_plain_forward_of_each_question(family, window):
    arch, engine, _ = family
    diff, scores = largest_difference(engine, WINDOWS[window])
    assert diff < 1e-4, (arch, window)
    assert max(scores) - min(scores) > 0.02, "scores barely differ: this comparison would prove little"


def test_family_answers_text_and_batches_it(family):
    arch, engine, _ = family
    audio = WINDOWS["3.7s tone"]
    alone = engine.answer_text(audio, "Describe the sounds in this recording.", 6)
    assert alone, arch
    together = engine.answer_texts([(audio, "Describe the sounds in this recording.", 6),
                                    (WINDOWS["0.5s noise"], "What is being said?", 4)])
    assert together[0] == alone


def test_family_scores_a_batch_of_windows_of_different_lengths_as_each_alone(family):
    arch, engine, _ = family
    audios = [WINDOWS["0.5s noise"], WINDOWS["3.7s tone"]]
    engine.forward_overhead = 10**6  # one forward for both rows, however unequal
    try:
        got = engine.score_windows(audios, [QUESTIONS[:2], QUESTIONS[1:]])
    finally:
        engine.forward_overhead = 16
    for audio, scores in zip(audios, got, strict=True):
        for prompt, (score, mass) in scores.items():
            want = reference_scores(engine, audio, prompt)
            assert abs(score - want[0]) < 1e-4 and abs(mass - want[1]) < 1e-4, (arch, prompt)


# ---------------------------------------------------------------------------- the registry


def test_a_family_is_one_file_and_its_builder_found_without_a_list(tmp_path, monkeypatch):
    """A module defining FAMILY in monitor.engine.families, and the builder it names in monitor.testing.tiny."""
    from monitor.testing.tiny_model import main

    (tmp_path / "families").mkdir()
    (tmp_path / "families" / "newfam.py").write_text(
        "from monitor.engine.families import Family\n"
        "FAMILY = Family(name='newfam', title='New', model_types=('newfam_audio',), tiny='newfam')\n")
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "newfam.py").write_text(
        "SIZES = {'tiny': {}}\n\n\ndef build(out_dir, size='tiny', seed=0, dtype='float32'):\n"
        "    raise NotImplementedError\n")
    monkeypatch.setattr(families, "__path__", [*families.__path__, str(tmp_path / "families")])
    monkeypatch.setattr(tiny, "__path__", [*tiny.__path__, str(tmp_path / "tiny")])
    families.registry.cache_clear()
    try:
        new = families.named("newfam")
        assert families.of(SimpleNamespace(model_type="newfam_audio")) is new
        assert "newfam" in tiny.folder_families() and tiny.sizes("newfam") == ("tiny",)
        with pytest.raises(SystemExit):  # the command line offers it, with the sizes its builder has
            main([str(tmp_path / "out"), "--arch", "newfam", "--size", "small"])
        with pytest.raises(NotImplementedError):
            main([str(tmp_path / "out"), "--arch", "newfam"])
    finally:
        monkeypatch.undo()
        families.registry.cache_clear()
        families.generic.cache_clear()
        for name in ("monitor.engine.families.newfam", "monitor.testing.tiny.newfam"):
            sys.modules.pop(name, None)
    assert "newfam" not in [f.name for f in families.registry()]


def test_a_model_of_no_known_family_is_probed_and_answers_as_its_own_family_would(engine):
    generic = families.of(SimpleNamespace(model_type="no_such_model"))
    assert generic.generic and generic.positions is None and generic.crop_encoder is None
    assert set(generic.frame_masks) >= {mask for family in families.registry() for mask in family.frame_masks}
    unknown = Engine(engine.model, engine.processor, engine.settings, engine.placement, generic)
    assert engine.family.name == "qwen2_audio" and unknown.family is generic
    chosen = ("scoring_path", "encoder_path", "batch_windows", "_fast_features")
    assert [getattr(unknown, c) for c in chosen] == [getattr(engine, c) for c in chosen] == ["packed", "cropped", True,
                                                                                            True]
    assert unknown.positions.name == engine.positions.name == "1-D"
    got, want = unknown.score(WINDOWS["3.7s tone"], QUESTIONS), engine.score(WINDOWS["3.7s tone"], QUESTIONS)
    assert all(abs(a - b) < 1e-6 for q in QUESTIONS for a, b in zip(got[q], want[q], strict=True))


def test_a_full_omni_checkpoint_is_loaded_as_its_thinker_without_the_talker(tmp_path):
    """Qwen/Qwen2.5-Omni-7B ships thinker and talker in one checkpoint: the engine answers with the thinker."""
    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration

    from monitor.testing.tiny.omni import save_processor as save_omni_processor
    from monitor.testing.tiny.qwen2_5_omni import make as qwen2_5_omni

    torch.manual_seed(0)
    thinker, processor = qwen2_5_omni("tiny")
    config = Qwen2_5OmniConfig(thinker_config=thinker.config.to_dict(), enable_audio_output=False)
    config.architectures = ["Qwen2_5OmniForConditionalGeneration"]
    full = Qwen2_5OmniForConditionalGeneration(config)
    full.thinker.load_state_dict(thinker.state_dict())
    full.config.enable_audio_output = True  # as published: the talker is part of the checkpoint's config
    full.save_pretrained(tmp_path)
    save_omni_processor(processor, tmp_path)
    torch.save({}, tmp_path / "spk_dict.pt")  # the talker's voices, shipped beside the weights (none here)
    engine = Engine.load(ModelSettings(path=tmp_path))
    assert type(engine.model).__name__ == "Qwen2_5OmniThinkerForConditionalGeneration"
    assert engine.scoring_path == "packed"
    diff, _ = largest_difference(engine, WINDOWS["0.5s noise"])
    assert diff < 1e-4


# ---------------------------------------------------------------------------- the Omni processors, audio-only

# What each Omni processor asks of its feature extractor (transformers' processing_qwen2_5_omni and
# processing_qwen3_omni_moe: their audio_kwargs, and Qwen2.5-Omni's padding to the longest clip the extractor takes).
OMNI_AUDIO_KWARGS = {"qwen2_5_omni": dict(padding="max_length", return_attention_mask=True),
                     "qwen3_omni": dict(padding=True, truncation=False, return_attention_mask=True)}


def omni_inputs_from_parts(folder: Path, model, audio: np.ndarray, prompt: str, audio_kwargs: dict) -> dict:
    """One question's inputs made from the checkpoint's parts alone, without any processor class.

    The tokenizer applies the template of chat_template.json, the feature extractor makes the
    features, and the audio placeholder is repeated once per embedding the model's own audio encoder
    makes of them.
    """
    from transformers import AutoFeatureExtractor, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    features = AutoFeatureExtractor.from_pretrained(folder)
    template = json.loads((folder / "chat_template.json").read_text())["chat_template"]
    messages = [{"role": "user", "content": [{"type": "audio", "audio": "x"}, {"type": "text", "text": prompt}]}]
    text = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=True)
    fe = features(audio, sampling_rate=RATE, return_tensors="pt", **audio_kwargs)
    with torch.no_grad():
        embeddings = model.get_audio_features(fe["input_features"], feature_attention_mask=fe["attention_mask"])
    placeholder = tokenizer.audio_token
    assert text.count(placeholder) == 1, text
    text = text.replace(placeholder, placeholder * embeddings.last_hidden_state.shape[0])
    return {"input_ids": tokenizer(text, return_tensors="pt")["input_ids"], "input_features": fe["input_features"],
            "feature_attention_mask": fe["attention_mask"]}


@pytest.mark.parametrize("arch", ["qwen2_5_omni", "qwen3_omni"])
def test_omni_processor_loaded_audio_only_gives_what_the_checkpoints_parts_give(loaded, arch):
    """The engine's Omni processor holds no image or video processor (transformers has video processors only
    with torchvision), and makes, from text and audio, what the tokenizer, the template and the feature extractor
    make: the same ids, features and frame mask."""
    _, engine, _ = loaded(arch)
    folder = Path(engine.settings.path)
    published = json.loads((folder / "preprocessor_config.json").read_text())
    assert published["image_processor_type"] == "Qwen2VLImageProcessor"  # the folder names an image processor
    processor = engine.processor
    assert type(processor).__name__ == published["processor_class"]
    assert processor.get_attributes() == ["feature_extractor", "tokenizer"]
    assert not hasattr(processor, "image_processor") and not hasattr(processor, "video_processor")
    for window in ("0.5s noise", "3.7s tone", "30s noise+tone"):
        audio = WINDOWS[window]
        got = reference_inputs(processor, audio, QUESTIONS[1])
        want = omni_inputs_from_parts(folder, engine.model, audio, QUESTIONS[1], OMNI_AUDIO_KWARGS[arch])
        assert got["input_ids"].tolist() == want["input_ids"].tolist(), window
        assert (got["input_ids"] == processor.audio_token_id).sum() > 1, window  # the placeholder, expanded
        assert torch.equal(got["input_features"], want["input_features"]), window
        assert torch.equal(got["feature_attention_mask"], want["feature_attention_mask"]), window
        if importlib.util.find_spec("torchvision") is not None:  # a machine with it: the full processor agrees too
            from transformers import AutoProcessor

            full = reference_inputs(AutoProcessor.from_pretrained(folder), audio, QUESTIONS[1])
            assert all(torch.equal(got[name], full[name]) for name in want), window
    with pytest.raises(ValueError, match="takes audio only"):
        processor(text="<|im_start|>user\nWhat is this?", images=[np.zeros((28, 28, 3), np.uint8)])


OMNI_LOAD = """
import importlib.util, json, sys
if importlib.util.find_spec("torchvision") is not None:
    sys.modules["torchvision"] = None  # loaded as on a machine without it
from monitor.engine.local.loading import load_model
from monitor.engine.placement import Placement
from monitor.engine.settings import ModelSettings
from monitor.testing.signals import RATE, noise
loaded = {}
for folder in sys.argv[1:]:
    model, processor = load_model(ModelSettings(path=folder), Placement("cpu", "float32"))
    messages = [{"role": "user", "content": [{"type": "audio", "audio": "x"}, {"type": "text", "text": "Help?"}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = processor(text=text, audio=noise(0.5, seed=1), sampling_rate=RATE, return_tensors="pt")["input_ids"]
    loaded[folder] = {"class": type(processor).__name__, "parts": processor.get_attributes(), "ids": ids[0].tolist()}
print(json.dumps({"loaded": loaded, "torchvision imported": sys.modules.get("torchvision") is not None}))
"""


# The image processor's entries of a published Omni preprocessor_config.json; a video processor takes the same.
OMNI_IMAGE_KEYS = ("image_processor_type", "patch_size", "temporal_patch_size", "merge_size", "min_pixels", "max_pixels",
                   "image_mean", "image_std")


def omni_layouts(folder: Path, root: Path) -> dict[str, Path]:
    """The folder as published, and as others ship an Omni checkpoint: a fine-tune saved with a transformers of
    video processors (video_preprocessor_config.json), and one saved by transformers 5 (processor_config.json with
    each part's settings, the video processor's among them)."""
    published = json.loads((folder / "preprocessor_config.json").read_text())
    image = {key: published[key] for key in OMNI_IMAGE_KEYS}
    video = {"video_processor_type": "Qwen2VLVideoProcessor", **{key: image[key] for key in OMNI_IMAGE_KEYS[1:]}}
    features = {key: value for key, value in published.items() if key not in image and key != "processor_class"}
    fine_tune = root / "fine-tune"
    shutil.copytree(folder, fine_tune)
    (fine_tune / "video_preprocessor_config.json").write_text(
        json.dumps({**video, "processor_class": published["processor_class"]}))
    resaved = root / "resaved"
    shutil.copytree(folder, resaved)
    (resaved / "preprocessor_config.json").unlink()
    (resaved / "chat_template.json").unlink()
    (resaved / "chat_template.jinja").write_text(json.loads((folder / "chat_template.json").read_text())["chat_template"])
    (resaved / "processor_config.json").write_text(json.dumps({
        "processor_class": published["processor_class"], "feature_extractor": features, "image_processor": image,
        "video_processor": video}))
    return {"published": folder, "fine-tune": fine_tune, "resaved": resaved}


@pytest.mark.parametrize("arch", ["qwen2_5_omni", "qwen3_omni"])
def test_omni_checkpoint_naming_image_and_video_processors_loads_without_torchvision(loaded, arch, tmp_path):
    """However the folder names its image and video processors, a fresh process loads the model and its processor
    the engine's way without torchvision, and the processor gives the engine's ids."""
    _, engine, _ = loaded(arch)
    layouts = omni_layouts(Path(engine.settings.path), tmp_path)
    proc = subprocess.run([sys.executable, "-c", OMNI_LOAD, *map(str, layouts.values())], cwd=REPO,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["torchvision imported"] is False
    want = reference_inputs(engine.processor, WINDOWS["0.5s noise"], "Help?")["input_ids"][0].tolist()
    for name, folder in layouts.items():
        got = out["loaded"][str(folder)]
        assert got["class"] == type(engine.processor).__name__, name
        assert got["parts"] == ["feature_extractor", "tokenizer"], name
        assert got["ids"] == want, name


def test_voxtral_lays_out_its_prompt_as_mistral_common_does(loaded):
    """[BOS][INST][BEGIN_AUDIO][AUDIO] x 375 per 30 s, the question, [/INST]; the engine's layout splits it there."""
    _, engine, lines = loaded("voxtral")
    ids = reference_inputs(engine.processor, WINDOWS["3.7s tone"], QUESTIONS[1])["input_ids"][0].tolist()
    assert ids[:3] == [1, 3, 25] and ids[3:3 + 375] == [24] * 375 and ids[-1] == 4
    assert engine.layout.prefix_ids == ids[:3 + 375]
    assert engine.layout.suffix_ids(QUESTIONS[1]) == ids[3 + 375:]
    assert engine.encoder_path == "padded"  # its encoder attends to the padding: never cropped
    assert engine._fast_features, lines  # the prefix built without the processor equals the processor's


def test_voxtral_without_mistral_common_fails_in_one_line(checkpoints, monkeypatch):
    from monitor.engine.errors import ModelLoadError
    from monitor.engine.local import loading

    folder = checkpoints("voxtral")
    real = loading._installed
    monkeypatch.setattr(loading, "_installed", lambda module: module != "mistral_common" and real(module))
    with pytest.raises(ModelLoadError) as failure:
        Engine.load(ModelSettings(path=folder))
    message = str(failure.value)
    assert "\n" not in message and 'pip install "mistral-common[audio]"' in message, message


# ---------------------------------------------------------------------------- Gemma 3n


def test_gemma3n_packing_follows_its_sliding_window(gemma):
    """The tiny Gemma's 32-token window is far shorter than a prompt: window-blind packing would be wrong."""
    from monitor.engine.local.selfcheck import packed_scoring

    _, engine, lines = gemma
    assert engine.sliding_window == 32
    assert any("packed with 1-D positions and a 32-token sliding window" in line for line in lines), lines
    audio = WINDOWS["0.5s noise"]  # every clip is 188 audio tokens long
    assert len(engine._clip(audio).ids) > 4 * engine.sliding_window
    engine.sliding_window = None  # forced: the tree mask alone for every layer
    try:
        forced, _ = largest_difference(engine, audio)
        checked = packed_scoring(engine)
    finally:
        engine.sliding_window = 32
    assert forced > 1e-3, f"window-blind packing is not wrong here ({forced:.2g}): the test proves nothing"
    assert checked is False, "the self-check must refuse window-blind packing"


def test_gemma3n_answer_logits_are_soft_capped(gemma):
    _, engine, _ = gemma
    cap = engine.model.config.get_text_config().final_logit_softcapping
    assert engine._softcap == cap == 3.0
    engine._softcap = None  # forced: the head alone, as before soft-capping was applied
    try:
        uncapped, _ = largest_difference(engine, WINDOWS["0.5s noise"])
    finally:
        engine._softcap = cap
    assert uncapped > 1e-3, f"the soft-cap barely matters here ({uncapped:.2g}): the test proves nothing"


def test_gemma3n_gives_every_clip_188_audio_tokens_and_its_published_processor_loads(gemma, tmp_path):
    """The published checkpoint names the torchvision image processor (SiglipImageProcessorFast) in
    preprocessor_config.json, beside the audio features' settings: it loads PIL-backed without torchvision."""
    from transformers import AutoProcessor

    _, engine, _ = gemma
    audio_id = engine.processor.audio_token_id
    for window in ("0.5s noise", "30s noise+tone"):
        assert engine._clip(WINDOWS[window]).ids.count(audio_id) == 188, window
    source = Path(engine.settings.path)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(source / name, tmp_path / name)
    saved = json.loads((source / "processor_config.json").read_text())
    published = {**saved.pop("feature_extractor"), **saved.pop("image_processor"),
                 "image_processor_type": "SiglipImageProcessorFast", "processor_class": "Gemma3nProcessor"}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(published))
    (tmp_path / "processor_config.json").write_text(json.dumps(saved))
    processor = AutoProcessor.from_pretrained(tmp_path)
    assert type(processor).__name__ == "Gemma3nProcessor"
    assert type(processor.feature_extractor).__name__ == "Gemma3nAudioFeatureExtractor"
    assert processor.image_processor is not None
    text = engine.layout.render("Is a dog barking?")
    ids = processor(text=text, audio=WINDOWS["0.5s noise"], sampling_rate=RATE, return_tensors="pt")["input_ids"]
    assert ids[0].tolist() == engine._clip(WINDOWS["0.5s noise"]).ids + engine.layout.suffix_ids("Is a dog barking?")


def test_gemma3n_checkpoint_with_vision_weights_loads_without_them_and_answers(gemma, tmp_path, capfd):
    """The published checkpoint holds the vision tower's weights: they are left unread, quietly."""
    from safetensors.torch import load_file, save_file

    from monitor.engine.local.audio_only import AbsentVisionTower

    _, engine, _ = gemma
    shutil.copytree(Path(engine.settings.path), tmp_path, dirs_exist_ok=True)
    weights = load_file(tmp_path / "model.safetensors")
    weights["model.vision_tower.timm_model.conv_stem.conv.weight"] = torch.randn(8, 3, 3, 3)
    weights["model.vision_tower.timm_model.blocks.0.0.conv_exp.weight"] = torch.randn(16, 8, 3, 3)
    weights["model.vision_tower.timm_model.msfa.norm.weight"] = torch.randn(32)
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    capfd.readouterr()
    loaded = Engine.load(ModelSettings(path=tmp_path))
    said = capfd.readouterr()
    assert "vision_tower" not in said.out + said.err, "the vision weights must be ignored quietly"
    assert type(loaded.model).__name__ == "Gemma3nForConditionalGeneration"
    assert isinstance(loaded.model.model.vision_tower, AbsentVisionTower)
    assert not any("vision_tower" in name for name, _ in loaded.model.named_parameters())
    assert loaded.scoring_path == "packed"
    audio = WINDOWS["0.5s noise"]
    got, want = loaded.score(audio, QUESTIONS), engine.score(audio, QUESTIONS)
    assert [v for q in QUESTIONS for v in got[q]] == pytest.approx([v for q in QUESTIONS for v in want[q]], abs=1e-6)
    assert loaded.answer_text(audio, "Describe the sounds in this recording.", 4)
