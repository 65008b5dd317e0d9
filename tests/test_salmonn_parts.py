"""SALMONN's audio parts against numbers computed with the original code (tests/fixtures/salmonn/README.md).

BEATs (its Kaldi fbank included) and the front end (ln_speech, ln_audio, window Q-Former,
projection) must give the original's outputs within the tolerances the fixtures' README sets.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from monitor.engine.salmonn.beats import BEATs, relative_buckets
from monitor.engine.salmonn.fbank import beats_fbank
from monitor.engine.salmonn.frontend import SPEECH_TOKENS, SpeechFrontEnd

FIXTURES = Path(__file__).parent / "fixtures" / "salmonn"


def fixture(name: str) -> dict:
    return torch.load(FIXTURES / name, weights_only=True)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max())


@pytest.fixture(scope="module")
def beats() -> BEATs:
    return BEATs.from_checkpoint(fixture("beats_tiny.pt"))


@pytest.fixture(scope="module")
def frontend_io() -> dict:
    return fixture("salmonn_frontend_tiny.pt")


def test_beats_features_and_intermediates_equal_the_originals(beats):
    io = fixture("beats_tiny_io.pt")
    trace: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        features, mask = beats.features(io["fbank"], io["padding_mask"], trace)
        features_b, mask_b = beats.features(io["fbank_b"], io["padding_mask_b"])
    assert float(io["features"].abs().max()) > 1.0
    assert max_diff(features, io["features"]) < 5e-5
    for name in ("patch_tokens_ln", "encoder_layer0_in", "encoder_layer0_out"):
        assert max_diff(trace[name], io[name]) < 5e-5, name
    assert torch.equal(mask, io["out_padding_mask"])
    assert max_diff(features_b, io["features_b"]) < 5e-5
    assert torch.equal(mask_b, io["out_padding_mask_b"])


def test_relative_position_buckets_equal_the_originals():
    io = fixture("beats_tiny_io.pt")
    offsets = torch.arange(io["relpos_min"], io["relpos_max"] + 1)
    assert torch.equal(relative_buckets(offsets, 320, 800), io["relpos_bucket"])


def test_fbank_in_torch_equals_torchaudios_kaldi_fbank():
    io = fixture("beats_fbank_io.pt")
    fbank = beats_fbank(io["waveform"][None])[0]
    assert max_diff(fbank, io["fbank"]) < 5e-4
    empty = (torch.log(torch.tensor(torch.finfo(torch.float32).eps)) - 15.41663) / (2 * 6.55582)
    assert torch.allclose(fbank[:, 3], empty.expand(98)), "mel bin 3 holds no FFT bin: log(FLT_EPSILON) in every frame"
    assert max_diff(fbank[:, 3], io["fbank"][:, 3]) < 1e-6


def test_beats_end_to_end_from_a_padded_waveform_batch(beats):
    io = fixture("beats_fbank_io.pt")
    lengths = io["e2e_lengths"]
    waves = torch.zeros(2, 16000)
    for b, n in enumerate(lengths.tolist()):
        waves[b, :n] = io["waveform"][:n]
    padding = torch.arange(16000)[None] >= lengths[:, None]
    trace: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        features, mask = beats.extract_features(waves, padding, trace)
    assert max_diff(features, io["e2e_features"]) < 1e-3
    assert torch.equal(trace["frame_padding_mask"], io["e2e_frame_padding_mask"])
    assert torch.equal(mask, io["e2e_out_padding_mask"])


def test_beats_loading_is_strict_and_says_what_does_not_fit():
    checkpoint = fixture("beats_tiny.pt")
    state = dict(checkpoint["model"])
    del state["encoder.layers.1.fc1.weight"]
    with pytest.raises(ValueError, match=r"1 missing key\(s\), e.g. encoder.layers.1.fc1.weight"):
        BEATs.from_checkpoint({"cfg": checkpoint["cfg"], "model": {**state, "extra.weight": torch.zeros(1)}})
    with pytest.raises(ValueError, match="not a BEATs checkpoint"):
        BEATs.from_checkpoint(state)


def test_front_end_equals_the_originals_speech_embeddings(frontend_io):
    config = frontend_io["config"]
    front = SpeechFrontEnd.from_state(frontend_io["state_dict"], heads=config["qformer_num_attention_heads"])
    with torch.no_grad():
        fused = front.fuse(frontend_io["whisper_out"], list(frontend_io["beats_out"]))
        states = front.qformer_states(fused)
        embeds = front(frontend_io["whisper_out"], list(frontend_io["beats_out"]))
    assert max_diff(states, frontend_io["qformer_last_hidden_state"]) < 2e-5
    assert max_diff(embeds, frontend_io["speech_embeds"]) < 2e-5
    assert embeds.shape == (2, SPEECH_TOKENS, config["llm_width"]) and SPEECH_TOKENS == config["num_windows"]


def test_front_end_pads_normalised_beats_with_exact_zeros(frontend_io):
    front = SpeechFrontEnd.from_state(frontend_io["state_dict"], heads=4)
    with torch.no_grad():
        fused = front.fuse(frontend_io["whisper_out"][:1], [frontend_io["beats_out"][0, :100]])
    assert fused.shape == (1, 1500, 88)
    assert torch.equal(fused[0, 100:, 24:], torch.zeros(1400, 64))


def test_front_end_loading_names_a_missing_or_unexpected_key(frontend_io):
    state = dict(frontend_io["state_dict"])
    del state["speech_Qformer.bert.encoder.layer.1.output_query.dense.bias"]
    with pytest.raises(ValueError, match="1 missing front-end weight"):
        SpeechFrontEnd.from_state(state)
    state = {**frontend_io["state_dict"], "speech_Qformer.cls.predictions.bias": torch.zeros(3)}
    with pytest.raises(ValueError, match="unexpected key.*speech_Qformer.cls.predictions.bias"):
        SpeechFrontEnd.from_state(state)
