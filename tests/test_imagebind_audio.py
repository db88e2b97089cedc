"""ImageBind audio preprocessing: golden parity, clip sampling, resampling, quirks, errors."""

from __future__ import annotations

import io
import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from langchain_pandagpt.errors import MediaError
from langchain_pandagpt.imagebind import audio
from langchain_pandagpt.imagebind.audio import (
    AudioInput,
    constant_clip_boundaries,
    kaldi_fbank,
    load_and_transform_audio_data,
    resample,
)

SHARED = Path(__file__).resolve().parents[2] / "shared"
GOLDEN = SHARED / "golden" / "imagebind"
LOG_EPS = math.log(torch.finfo(torch.float32).eps)
PAD_VALUE = 4.268 / 9.138  # a zero-padded log-mel frame after normalisation


def _wav_bytes(samples: np.ndarray, rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def _noise(samples: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.5, 0.5, (channels, samples)).astype(np.float32)


@pytest.fixture
def golden() -> Path:
    if not GOLDEN.is_dir():
        pytest.skip(f"shared golden data not found at {GOLDEN}")
    return GOLDEN


def test_golden_parity(golden: Path) -> None:
    from safetensors.torch import load_file

    expected = load_file(golden / "preprocessed.safetensors")["audio_aud0"]
    actual = load_and_transform_audio_data([golden / "inputs" / "aud0_16k_mono_5p3s.wav"])
    assert actual.shape == expected.shape == (1, 3, 1, 128, 204)
    assert actual.dtype == torch.float32
    # The README allows 2e-3 for a faithful fbank; this port is bit-identical on torch 2.13 CPU.
    assert (actual - expected).abs().max().item() <= 2e-3
    assert torch.allclose(actual[..., 198:], torch.tensor(PAD_VALUE))


def test_clip_boundaries_five_seconds() -> None:
    clips = constant_clip_boundaries(5.0, 2, 3)
    assert clips == [(0, 2), (Fraction(3, 2), Fraction(7, 2)), (3, 5)]


def test_clip_boundaries_dog_file() -> None:
    """The README dog file: 115,110 samples at 44.1 kHz, stereo."""
    resampled = resample(torch.zeros(2, 115110), 44100, 16000)
    assert resampled.shape == (2, 41764)
    clips = constant_clip_boundaries(41764 / 16000, 2, 3)
    slices = [(int(start * 16000), int(end * 16000)) for start, end in clips]
    assert slices == [(0, 32000), (4882, 36882), (9764, 41764)]


def test_clip_boundaries_short_media_repeats_clips() -> None:
    assert constant_clip_boundaries(0.5, 2, 3) == [(0, 2)] * 3
    assert constant_clip_boundaries(7.0, 2, 1) == [(0, 2)]


@pytest.mark.parametrize(
    ("orig", "samples", "expected"),
    [(44100, 115110, 41764), (48000, 1000, 334), (8000, 777, 1554), (22050, 22050, 16000)],
)
def test_resample_length(orig: int, samples: int, expected: int) -> None:
    assert resample(torch.zeros(1, samples), orig, 16000).shape == (1, expected)


def test_resample_keeps_a_tone() -> None:
    time = torch.arange(44100, dtype=torch.float64) / 44100
    tone = torch.sin(2 * math.pi * 440 * time).float()[None]
    out = resample(tone, 44100, 16000)[0, 200:-200].double()
    expected = torch.sin(2 * math.pi * 440 * torch.arange(200, 15800, dtype=torch.float64) / 16000)
    assert (out - expected).abs().max() < 1e-3
    same = torch.ones(1, 10)
    assert resample(same, 16000, 16000) is same


def test_kaldi_fbank_shape_and_floor() -> None:
    features = kaldi_fbank(torch.from_numpy(_noise(32000)))
    assert features.shape == (198, 128)
    assert torch.all(features[:, 3] == LOG_EPS)  # mel filter 3 is empty at 512-point FFT
    assert torch.all(kaldi_fbank(torch.zeros(400)) == LOG_EPS)
    with pytest.raises(ValueError, match="at least 400 samples"):
        kaldi_fbank(torch.zeros(399))


def test_stereo_reads_channel_0_after_mean_over_all_channels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Upstream subtracts the mean of both channels, in place, then filters channel 0 only."""
    left, right = _noise(32000, seed=1)[0], _noise(32000, seed=2)[0] + 0.25
    seen: list[torch.Tensor] = []

    def spy(waveform: torch.Tensor, rate: float, bins: int) -> torch.Tensor:
        seen.append(waveform.clone())
        return kaldi_fbank(waveform, rate, bins)

    monkeypatch.setattr(audio, "kaldi_fbank", spy)
    stereo = load_and_transform_audio_data([(np.stack([left, right]), 16000)])
    shift = (left.astype(np.float64).sum() + right.astype(np.float64).sum()) / 64000
    np.testing.assert_allclose(seen[0][0].numpy(), left - shift, atol=1e-6)
    monkeypatch.undo()
    lone_left = kaldi_fbank(seen[0][0]).T
    normalised = lone_left.sub(torch.tensor(-4.268)).div(torch.tensor(9.138))
    assert torch.equal(stereo[0, 0, 0, :, :198], normalised)
    swapped = load_and_transform_audio_data([(np.stack([right, left]), 16000)])
    assert not torch.allclose(stereo, swapped)


def test_overlapping_clips_see_previous_mean(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pitfall 9: clip means are removed in place, so later clips inherit them in the overlap."""
    signal = _noise(48000, seed=3)[0] + 0.1  # 3 s: clips [0, 2), [0.5, 2.5), [1, 3) seconds
    seen: list[torch.Tensor] = []

    def spy(waveform: torch.Tensor, rate: float, bins: int) -> torch.Tensor:
        seen.append(waveform[0].clone())
        return kaldi_fbank(waveform, rate, bins)

    monkeypatch.setattr(audio, "kaldi_fbank", spy)
    load_and_transform_audio_data([(signal, 16000)])
    mean0 = signal[:32000].astype(np.float64).mean()
    shifted = signal.astype(np.float64)
    shifted[:32000] -= mean0
    mean1 = shifted[8000:40000].mean()
    np.testing.assert_allclose(seen[1].numpy(), shifted[8000:40000] - mean1, atol=1e-6)
    # In clip 1 the first 1.5 s carry clip 0's shift as well, the last 0.5 s do not.
    step = (seen[1][24000:].mean() - seen[1][:24000].mean()).item()
    expected = mean0 + signal[32000:40000].mean() - signal[8000:32000].mean()
    assert step == pytest.approx(expected, abs=1e-5)


def test_short_audio() -> None:
    too_short = _noise(399)
    with pytest.raises(MediaError, match="too short: needs at least 25 ms"):
        load_and_transform_audio_data([(too_short, 16000)])
    out = load_and_transform_audio_data([(_noise(400), 16000)])
    assert out.shape == (1, 3, 1, 128, 204)
    # All three clips are the whole 25 ms (equal up to the in-place mean-subtraction rounding).
    assert torch.allclose(out[0, 0], out[0, 1], atol=1e-4)
    assert torch.allclose(out[0, 0, 0, :, 1:], torch.tensor(PAD_VALUE))


def test_in_memory_inputs_match_files(tmp_path: Path) -> None:
    samples = (_noise(20000)[0] * 32767).astype(np.int16)
    path = tmp_path / "clip.wav"
    path.write_bytes(_wav_bytes(samples, 22050))
    as_float = samples.astype(np.float32) / 32768
    before = as_float.copy()
    inputs: list[AudioInput] = [
        path,
        str(path),
        path.read_bytes(),
        io.BytesIO(path.read_bytes()),
        (as_float, 22050),
        (torch.from_numpy(as_float), 22050),
        (samples, 22050),
    ]
    batch = load_and_transform_audio_data(inputs)
    assert batch.shape == (7, 3, 1, 128, 204)
    for item in batch[1:]:
        assert torch.equal(item, batch[0])
    np.testing.assert_array_equal(as_float, before)  # the caller's waveform is not modified


def test_pyav_fallback_decodes_m4a() -> None:
    buffer = io.BytesIO()
    tone = np.sin(np.arange(2 * 44100) * (2 * np.pi * 440 / 44100)).astype(np.float32) * 0.3
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=44100)
        stream.layout = "mono"
        for start in range(0, tone.size, 1024):
            frame = av.AudioFrame.from_ndarray(
                tone[None, start : start + 1024].copy(), format="fltp", layout="mono"
            )
            frame.rate = 44100
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    waveform, rate = audio.decode_audio(buffer.getvalue(), "tone.m4a")
    assert rate == 44100 and waveform.shape[0] == 1
    assert abs(waveform.shape[1] - tone.size) < 4096  # AAC adds priming/padding samples
    assert load_and_transform_audio_data([buffer.getvalue()]).shape == (1, 3, 1, 128, 204)


def _jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "file not found"),
        (b"", "is empty"),
        (_wav_bytes(np.zeros(1000, np.float32))[:20], "cannot be decoded as audio"),
        (_jpeg_bytes(), "no audio stream"),
        (_wav_bytes(np.zeros(0, np.float32)), "no audio samples"),
    ],
    ids=["missing", "zero-byte", "truncated-wav", "jpeg", "zero-samples"],
)
def test_errors_name_the_input(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "sound.wav"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(MediaError, match=message) as error:
        load_and_transform_audio_data([path])
    assert str(path) in str(error.value)


def test_rejects_bad_batches() -> None:
    with pytest.raises(ValueError, match="empty"):
        load_and_transform_audio_data([])
    with pytest.raises(MediaError, match="shape"):
        load_and_transform_audio_data([(np.zeros((1, 2, 400), np.float32), 16000)])
