"""BEATs' input features: Kaldi log-mel filter banks computed with torch alone.

BEATs was trained on `torchaudio.compliance.kaldi.fbank` features (128 mel bins, 25 ms frames,
10 ms shift), but no torchaudio release installs next to torch 2.13, and kaldi-native-fbank
refuses these settings (mel bin 3 holds no FFT bin on a 512-point FFT). So the Kaldi recipe is
restated here in plain torch, batched, with the same defaults torchaudio uses — povey window,
pre-emphasis 0.97, DC removal, snip_edges, power spectrum, mel banks from 20 Hz to Nyquist — and
the same floor: an empty mel bin reads log(FLT_EPSILON) in every frame, as it does there, and
the model has learnt with that constant. Checked against torchaudio's own output
(tests/fixtures/salmonn/beats_fbank_io.pt).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

SAMPLE_RATE = 16_000
FBANK_MEAN = 15.41663  # BEATs' normalisation constants (AudioSet statistics)
FBANK_STD = 6.55582
WAVE_SCALE = 2 ** 15  # BEATs feeds the waveform in 16-bit integer units


def frame_count(samples: int, frame_length: int = 400, frame_shift: int = 160) -> int:
    """Frames Kaldi cuts from `samples` with snip_edges (0 when the clip is shorter than a frame)."""
    return 0 if samples < frame_length else 1 + (samples - frame_length) // frame_shift


def _mel(freq: torch.Tensor | float) -> torch.Tensor | float:
    if isinstance(freq, torch.Tensor):
        return 1127.0 * torch.log(1.0 + freq / 700.0)
    return 1127.0 * math.log(1.0 + freq / 700.0)


@lru_cache(maxsize=8)
def mel_banks(num_bins: int, fft_size: int, sample_rate: float, low_freq: float, high_freq: float) -> torch.Tensor:
    """(num_bins, fft_size // 2 + 1) triangular filters on the mel scale, Kaldi's layout (last FFT bin unused).

    Triangles are drawn between equally spaced mel points; a triangle narrower than the FFT
    bin spacing can contain no bin at all and stays all zeros (as in Kaldi and torchaudio).
    """
    nyquist = 0.5 * sample_rate
    if high_freq <= 0.0:
        high_freq += nyquist
    mel_low, mel_high = _mel(low_freq), _mel(high_freq)
    delta = (mel_high - mel_low) / (num_bins + 1)
    index = torch.arange(num_bins).unsqueeze(1)
    left = mel_low + index * delta
    center = mel_low + (index + 1.0) * delta
    right = mel_low + (index + 2.0) * delta
    bins = fft_size // 2
    mel = _mel((sample_rate / fft_size) * torch.arange(bins)).unsqueeze(0)
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    weights = torch.clamp(torch.minimum(up, down), min=0.0)
    return torch.nn.functional.pad(weights, (0, 1))  # the Nyquist bin has no weight


@lru_cache(maxsize=8)
def povey_window(length: int) -> torch.Tensor:
    """Kaldi's default window: a symmetric Hann window raised to the power 0.85."""
    return torch.hann_window(length, periodic=False, dtype=torch.float32).pow(0.85)


def kaldi_fbank(waveform: torch.Tensor, num_mel_bins: int = 128, sample_rate: int = SAMPLE_RATE,
                frame_length_ms: float = 25.0, frame_shift_ms: float = 10.0, preemphasis: float = 0.97,
                low_freq: float = 20.0, high_freq: float = 0.0) -> torch.Tensor:
    """Log mel filter-bank energies of each row of `waveform` (B, N) -> (B, frames, num_mel_bins), float32.

    The same arithmetic as torchaudio's `kaldi.fbank` with dither 0 and its other defaults.
    """
    if waveform.dim() == 1:
        waveform = waveform.unsqueeze(0)
    waveform = waveform.to(torch.float32)
    length = int(sample_rate * frame_length_ms * 0.001)
    shift = int(sample_rate * frame_shift_ms * 0.001)
    fft_size = 1 << (length - 1).bit_length()  # next power of two
    if waveform.shape[-1] < length:
        return waveform.new_zeros((waveform.shape[0], 0, num_mel_bins))
    frames = waveform.unfold(-1, length, shift)  # (B, F, length), snip_edges
    frames = frames - frames.mean(dim=-1, keepdim=True)  # remove DC offset
    previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)  # replicate-padded shift by one
    frames = frames - preemphasis * previous
    frames = frames * povey_window(length).to(frames.device)
    frames = torch.nn.functional.pad(frames, (0, fft_size - length))
    power = torch.fft.rfft(frames).abs().pow(2.0)
    banks = mel_banks(num_mel_bins, fft_size, float(sample_rate), low_freq, high_freq).to(frames.device)
    energies = torch.matmul(power, banks.T)
    floor = torch.tensor(torch.finfo(torch.float32).eps, device=energies.device)
    return torch.maximum(energies, floor).log()


def beats_fbank(waveform: torch.Tensor, mean: float = FBANK_MEAN, std: float = FBANK_STD) -> torch.Tensor:
    """BEATs' `preprocess`: waveform in [-1, 1] (B, N) -> normalised 128-bin fbank (B, frames, 128)."""
    fbank = kaldi_fbank(waveform.to(torch.float32) * WAVE_SCALE)
    return (fbank - mean) / (2 * std)
