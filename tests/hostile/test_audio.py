"""Item 2 (the WAV header's sample rate controlled resampler memory) and item 4 (NaN audio).

Before: a 46-byte WAV at 96001 Hz asked for ~24 GB (the sinc kernel of the gcd-reduced pair
96001/16000 was built before any length check); a genuine 1 s recording at 44101 Hz peaked
at 11 GB and took 94 s. Now the kernel is bounded, odd pairs are approximated, and the
length checks run before any work.
"""

from __future__ import annotations

import io
import math

import av
import numpy as np
import pytest
import soundfile
import torch
import torch.nn.functional as F

from hostile.craft import wav_header
from hostile.limits import MiB, memory_cap
from langchain_pandagpt.errors import MediaError
from langchain_pandagpt.imagebind import audio
from langchain_pandagpt.imagebind.audio import (
    MAX_KERNEL_ELEMENTS,
    load_and_transform_audio_data,
    resample,
    resample_ratio,
    resampled_length,
)

COMMON_RATES = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000, 96000)
ODD_RATES = (96001, 44101, 16001, 15999, 8001, 22051, 101, 7, 1_234_567, 1 << 24)


def _wav(samples: np.ndarray, rate: int, subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def _torchaudio_resample(waveform: torch.Tensor, orig_freq: int, new_freq: int) -> torch.Tensor:
    """The resampler as it was before the bound (torchaudio's algorithm, exact gcd pair)."""
    if orig_freq == new_freq:
        return waveform
    gcd = math.gcd(orig_freq, new_freq)
    orig, new = orig_freq // gcd, new_freq // gcd
    dtype = waveform.dtype
    base = min(orig, new) * 0.99
    width = math.ceil(6 * orig / base)
    offsets = torch.arange(-width, width + orig, dtype=dtype)[None, None] / orig
    times = torch.arange(0, -new, -1, dtype=dtype)[:, None, None] / new + offsets
    times *= base
    times = times.clamp_(-6, 6)
    window = torch.cos(times * math.pi / 6 / 2) ** 2
    times *= math.pi
    kernel = torch.where(times == 0, torch.tensor(1.0).to(times), times.sin() / times)
    kernel *= window * (base / orig)
    shape = waveform.shape
    rows = waveform.reshape(-1, shape[-1])
    padded = F.pad(rows, (width, width + orig))
    phases = F.conv1d(padded[:, None], kernel, stride=orig)
    interleaved = phases.transpose(1, 2).reshape(rows.shape[0], -1)
    length = int(torch.ceil(torch.as_tensor(new * shape[-1] / orig)).long())
    return interleaved[..., :length].reshape(*shape[:-1], -1)


@pytest.mark.parametrize("rate", COMMON_RATES)
def test_common_rates_are_bit_identical_to_the_unbounded_resampler(rate: int) -> None:
    stereo = torch.from_numpy(np.random.default_rng(rate).uniform(-1, 1, (2, rate + 777)))
    stereo = stereo.to(torch.float32)
    assert resample_ratio(rate, 16000) == tuple(
        value // math.gcd(rate, 16000) for value in (rate, 16000)
    )
    assert torch.equal(resample(stereo, rate, 16000), _torchaudio_resample(stereo, rate, 16000))


@pytest.mark.parametrize("rate", ODD_RATES)
def test_every_rate_pair_gets_a_bounded_kernel(rate: int) -> None:
    orig, new = resample_ratio(rate, 16000)
    assert audio._kernel_elements(orig, new) <= MAX_KERNEL_ELEMENTS
    assert abs((orig / new) / (rate / 16000) - 1) < 0.0032  # the rate barely moves


def test_a_46_byte_wav_at_96001_hz_is_refused_without_the_24_gb_kernel() -> None:
    data = wav_header(96001)
    assert len(data) == 46
    with memory_cap(256 * MiB) as elapsed, pytest.raises(MediaError, match="is too short"):
        load_and_transform_audio_data([io.BytesIO(data)])
    assert elapsed.seconds < 2


def test_short_audio_is_refused_before_resampling(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_resampling(*args: object) -> torch.Tensor:
        raise AssertionError("resampled audio that is too short anyway")

    monkeypatch.setattr(audio, "resample", no_resampling)
    with pytest.raises(MediaError, match="has 100 samples at 16000 Hz"):
        load_and_transform_audio_data([wav_header(16001, samples=100)])


def test_a_genuine_second_at_44101_hz_is_embedded_in_bounded_memory() -> None:
    noise = 0.1 * np.random.default_rng(0).standard_normal(44101).astype(np.float32)
    with memory_cap(384 * MiB) as elapsed:
        batch = load_and_transform_audio_data([_wav(noise, 44101)])
    assert batch.shape == (1, 3, 1, 128, 204) and torch.isfinite(batch).all()
    assert elapsed.seconds < 5


@pytest.mark.parametrize("rate", [44101, 96001, 8001])
def test_approximated_rates_keep_the_pitch(rate: int) -> None:
    tone = torch.sin(torch.arange(2 * rate, dtype=torch.float64) * (2 * math.pi * 1000 / rate))
    out = resample(tone.to(torch.float32)[None], rate, 16000)[0].double()
    assert out.numel() == resampled_length(2 * rate, rate, 16000)
    assert abs(out.numel() / 32000 - 1) < 0.0032
    spectrum = torch.fft.rfft(out[1000:-1000] * torch.hann_window(out.numel() - 2000))
    peak_hz = int(spectrum.abs().argmax()) * 16000 / (out.numel() - 2000)
    assert abs(peak_hz - 1000) < 1


def test_a_huge_header_rate_is_a_media_error() -> None:
    with pytest.raises(MediaError, match="sample rate 100000000 Hz is out of range"):
        load_and_transform_audio_data([wav_header(100_000_000, samples=4)])
    with pytest.raises(MediaError, match="sample rate 16777217 Hz is out of range"):
        load_and_transform_audio_data([(np.zeros(10**6, np.float32), (1 << 24) + 1)])


def test_upsampling_blow_up_is_refused_before_the_work() -> None:
    """200 kB of 1 Hz WAV would resample to 1.6 billion samples (6.4 GB)."""
    with memory_cap(256 * MiB) as elapsed, pytest.raises(MediaError, match="over the limit"):
        load_and_transform_audio_data([wav_header(1, samples=100_000)])
    assert elapsed.seconds < 2


def test_sample_cap_is_checked_from_the_header() -> None:
    one_second = _wav(np.zeros(16000, np.float32), 16000)
    with pytest.raises(MediaError, match=r"has 16000 samples .*over the limit of 1000"):
        load_and_transform_audio_data([one_second], max_samples=1000)


def _silent_m4a(seconds: int) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        stream.layout = "mono"
        silence = np.zeros((1, 1024), np.float32)
        for _ in range(seconds * 16000 // 1024):
            frame = av.AudioFrame.from_ndarray(silence, format="fltp", layout="mono")
            frame.rate = 16000
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def test_compressed_audio_stops_decoding_at_the_cap() -> None:
    """PyAV decodes what it is given; the cap stops it while decoding, not after."""
    m4a = _silent_m4a(3)
    with pytest.raises(MediaError, match="over the limit of 20000"):
        load_and_transform_audio_data([m4a], max_samples=20_000)
    assert load_and_transform_audio_data([m4a]).shape == (1, 3, 1, 128, 204)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_float_audio_is_a_media_error_naming_it(bad: float) -> None:
    samples = np.zeros(16000, np.float32)
    samples[1234] = bad
    stream = io.BytesIO(_wav(samples, 16000, subtype="FLOAT"))
    stream.name = "messages[0].content[1]"
    with pytest.raises(MediaError, match=r"^messages\[0\]\.content\[1\]: audio contains NaN"):
        load_and_transform_audio_data([stream])
    with pytest.raises(MediaError, match="at index 0: audio contains NaN or infinite"):
        load_and_transform_audio_data([(samples, 16000)])
