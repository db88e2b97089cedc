"""ImageBind's audio loader: waveform -> three 2 s clips -> normalised 128 x 204 log-mel images.

There is no torchaudio on this platform, so the two torchaudio functions ImageBind calls,
``compliance.kaldi.fbank`` and ``functional.resample``, are hand-written here as faithful ports
of the configuration ImageBind uses: the same torch ops, in the same order and dtype, so the
features are bit-identical to upstream on the same torch build. pytorchvideo's
``ConstantClipsPerVideoSampler`` is reproduced by :func:`constant_clip_boundaries`, which the
video loader shares.

Two upstream quirks are kept on purpose because the released weights were used with them:
each clip's mean is subtracted *in place* on the shared waveform, so an overlapping later clip
sees samples already shifted by the previous clip's mean; and the filterbank reads channel 0
only, after a mean taken over all channels.

Files are decoded with soundfile (WAV, FLAC, OGG/Vorbis, MP3...) and, for formats it does not
know (AAC/M4A, audio tracks of video containers...), with PyAV. A file cut short inside its
sample data decodes to the samples present, as both libraries do; a file cut inside its header
is an error.

The cost of an input is bounded before it is spent, whatever its header says: at most
``max_samples`` samples are decoded or produced by resampling (checked from the header
before decoding, and while decoding with PyAV), the "too short" check runs before any
resampling, and the resampler's kernel never exceeds :data:`MAX_KERNEL_ELEMENTS` (see
:func:`resample_ratio`). Samples must be finite: NaN or infinity is a MediaError.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from fractions import Fraction
from typing import BinaryIO, Final, TypeAlias

import av
import numpy as np
import soundfile
import torch
import torch.nn.functional as F

from langchain_pandagpt.errors import MediaError
from langchain_pandagpt.imagebind.sources import MediaSource, open_source
from langchain_pandagpt.imagebind.vision import check_batch, item_name

#: One audio input: a file (path, bytes, binary file object) or ``(waveform, sample_rate)``
#: with a (channels, samples) or (samples,) tensor/array, float in [-1, 1] or integer PCM.
AudioInput: TypeAlias = MediaSource | tuple[torch.Tensor | np.ndarray, int]

logger = logging.getLogger(__name__)

# Kaldi fbank settings ImageBind uses (torchaudio defaults unless ImageBind overrides them).
_PREEMPHASIS = 0.97
_LOW_FREQ = 20.0
_FLOAT32_EPS = torch.finfo(torch.float32).eps
# torchaudio's default sinc resampler: Hann-windowed sinc, 6 zero crossings, 99 % rolloff.
_LOWPASS_WIDTH = 6
_ROLLOFF = 0.99

#: Largest resampling kernel built, in elements (4 MiB of float32). Every common rate pair
#: fits exactly (11025 -> 16000, the largest, needs 291,200); others are approximated, see
#: :func:`resample_ratio`.
MAX_KERNEL_ELEMENTS: Final = 1 << 20
#: Denominators tried, largest first, when a rate pair must be approximated.
_APPROXIMATION_LIMITS: Final = (320, 160, 80, 40, 20, 10, 5, 2, 1)
#: Most samples (all channels together) decoded, or produced by resampling, per input: 1 GiB
#: of float32, about 4.6 hours of 16 kHz mono or 50 minutes of 44.1 kHz stereo.
MAX_AUDIO_SAMPLES: Final = 1 << 28
#: Highest sample rate accepted (16.8 MHz); headers can claim up to 4.3 GHz.
MAX_SAMPLE_RATE: Final = 1 << 24


def constant_clip_boundaries(
    duration: float, clip_duration: float, clips_per_video: int
) -> list[tuple[Fraction, Fraction]]:
    """(start, end) seconds of pytorchvideo's ``ConstantClipsPerVideoSampler`` clips, exactly.

    The last possible start is the float ``duration - clip_duration`` (floored at 0) taken as an
    exact Fraction, and clips start at uniform steps up to it. There are always
    ``clips_per_video`` clips: media shorter than one clip gets identical clips starting at 0
    (the sampler's early stop cannot trigger because the steps end exactly on the last start).
    Callers truncate ``start * rate`` with ``int`` (audio) or round it up (video frames).
    """
    if clips_per_video < 1:
        raise ValueError(f"clips_per_video must be at least 1, got {clips_per_video}")
    length = Fraction(clip_duration)
    last_start = Fraction(max(duration - float(length), 0))
    step = last_start / max(clips_per_video - 1, 1)
    return [(i * step, i * step + length) for i in range(clips_per_video)]


def _sinc_resample_kernel(orig: int, new: int, dtype: torch.dtype) -> tuple[torch.Tensor, int]:
    """torchaudio's Hann-windowed sinc kernel, (new, 1, 2*width + orig), built in ``dtype``.

    ``orig`` and ``new`` are already divided by their gcd. The kernel is built in the
    waveform's dtype (float32), exactly like torchaudio, because the grid rounding matters.
    """
    base = min(orig, new) * _ROLLOFF
    width = math.ceil(_LOWPASS_WIDTH * orig / base)
    offsets = torch.arange(-width, width + orig, dtype=dtype)[None, None] / orig
    times = torch.arange(0, -new, -1, dtype=dtype)[:, None, None] / new + offsets
    times *= base
    times = times.clamp_(-_LOWPASS_WIDTH, _LOWPASS_WIDTH)
    window = torch.cos(times * math.pi / _LOWPASS_WIDTH / 2) ** 2
    times *= math.pi
    kernel = torch.where(times == 0, torch.tensor(1.0).to(times), times.sin() / times)
    kernel *= window * (base / orig)
    return kernel, width


def _kernel_elements(orig: int, new: int) -> int:
    """Elements of :func:`_sinc_resample_kernel`'s kernel for a reduced rate pair."""
    width = math.ceil(_LOWPASS_WIDTH * orig / (min(orig, new) * _ROLLOFF))
    return new * (2 * width + orig)


def resample_ratio(
    orig_freq: int, new_freq: int, max_kernel: int = MAX_KERNEL_ELEMENTS
) -> tuple[int, int]:
    """The reduced (orig, new) rate pair :func:`resample` works with.

    That is the gcd-reduced pair, exactly torchaudio's, whenever its sinc kernel (about
    ``orig * new`` elements) fits in ``max_kernel``: every common rate does. An odd rate such
    as 44101 Hz reduces to 44101/16000 and would need a 2.8 GB kernel (96001 Hz: 6 GB); such
    pairs are replaced by the closest fraction with a small denominator whose kernel fits
    (44101/16000 -> 328/119), which changes the audio's rate by a negligible amount (below
    0.32 % in the worst case, 0.0004 % for 44101 Hz) and bounds both the kernel and the
    convolution's work per sample.
    """
    if not (0 < orig_freq <= MAX_SAMPLE_RATE and 0 < new_freq <= MAX_SAMPLE_RATE):
        raise ValueError(
            f"sample rates must be in [1, {MAX_SAMPLE_RATE}] Hz, got {orig_freq} -> {new_freq}"
        )
    gcd = math.gcd(orig_freq, new_freq)
    orig, new = orig_freq // gcd, new_freq // gcd
    if _kernel_elements(orig, new) <= max_kernel:
        return orig, new
    ratio = Fraction(orig, new)
    for limit in _APPROXIMATION_LIMITS:
        approx = ratio.limit_denominator(limit)
        pair = approx.numerator, approx.denominator
        if pair[0] > 0 and _kernel_elements(*pair) <= max_kernel:
            logger.debug(
                "resampling %d -> %d Hz as %d -> %d Hz (exact kernel too large)",
                orig_freq,
                new_freq,
                round(new_freq * pair[0] / pair[1]),
                new_freq,
            )
            return pair
    raise ValueError(f"cannot resample {orig_freq} -> {new_freq} Hz within {max_kernel} elements")


def resampled_length(samples: int, orig_freq: int, new_freq: int) -> int:
    """Samples :func:`resample` returns for ``samples`` input samples (without resampling)."""
    if orig_freq == new_freq:
        return samples
    orig, new = resample_ratio(orig_freq, new_freq)
    return _output_length(samples, orig, new)


def _output_length(samples: int, orig: int, new: int) -> int:
    """torchaudio's ``ceil(new * samples / orig)``, the ceiling taken on a float32 value."""
    return int(torch.ceil(torch.as_tensor(new * samples / orig)).long())


def resample(waveform: torch.Tensor, orig_freq: int, new_freq: int) -> torch.Tensor:
    """Port of ``torchaudio.functional.resample`` with its defaults (sinc_interp_hann).

    ``waveform`` is (..., samples), floating point; every leading index is resampled on its
    own. The output has ``ceil(new * samples / orig)`` samples, that ceiling being taken on a
    float32 value as torchaudio does. The input is returned unchanged when the rates match.
    Bit-identical to torchaudio for every rate pair whose kernel fits
    :data:`MAX_KERNEL_ELEMENTS`; other pairs are approximated (see :func:`resample_ratio`).
    """
    if orig_freq <= 0 or new_freq <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_freq} -> {new_freq}")
    if not waveform.is_floating_point():
        raise TypeError(f"waveform must be floating point, got {waveform.dtype}")
    if orig_freq == new_freq:
        return waveform
    orig, new = resample_ratio(orig_freq, new_freq)
    if orig == new:
        return waveform
    kernel, width = _sinc_resample_kernel(orig, new, waveform.dtype)
    shape = waveform.shape
    rows = waveform.reshape(-1, shape[-1])
    padded = F.pad(rows, (width, width + orig))
    phases = F.conv1d(padded[:, None], kernel, stride=orig)
    interleaved = phases.transpose(1, 2).reshape(rows.shape[0], -1)
    length = _output_length(shape[-1], orig, new)
    return interleaved[..., :length].reshape(*shape[:-1], -1)


def _mel_banks(num_bins: int, fft_size: int, sample_frequency: float) -> torch.Tensor:
    """Kaldi's triangular HTK-mel filters, (num_bins, fft_size // 2 + 1), in float32.

    Built with the same float32 tensor arithmetic as torchaudio (python scalars promoted into
    float32 tensors), then padded with a zero column for the Nyquist bin.
    """

    def mel(freq: float) -> float:
        return 1127.0 * math.log(1.0 + freq / 700.0)

    mel_low = mel(_LOW_FREQ)
    mel_delta = (mel(0.5 * sample_frequency) - mel_low) / (num_bins + 1)
    index = torch.arange(num_bins).unsqueeze(1)
    left = mel_low + index * mel_delta
    centre = mel_low + (index + 1.0) * mel_delta
    right = mel_low + (index + 2.0) * mel_delta
    bin_freqs = (sample_frequency / fft_size) * torch.arange(fft_size / 2)
    bin_mels = (1127.0 * (1.0 + bin_freqs / 700.0).log()).unsqueeze(0)
    up = (bin_mels - left) / (centre - left)
    down = (right - bin_mels) / (right - centre)
    banks = torch.max(torch.zeros(1), torch.min(up, down)).to(torch.float32)
    return F.pad(banks, (0, 1), mode="constant", value=0)


def kaldi_frame_size(sample_frequency: float, frame_length_ms: float = 25.0) -> int:
    """Samples in one fbank window (400 at 16 kHz): the minimum length :func:`kaldi_fbank` takes."""
    return int(sample_frequency * frame_length_ms * 0.001)


def kaldi_fbank(
    waveform: torch.Tensor,
    sample_frequency: float = 16000.0,
    num_mel_bins: int = 128,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
) -> torch.Tensor:
    """Port of ``torchaudio.compliance.kaldi.fbank`` as ImageBind calls it: (frames, mel bins).

    Settings: Hann window (symmetric, not Povey), no dither, no energy column, snip_edges,
    DC removal and 0.97 pre-emphasis per frame, FFT padded to a power of two, power spectrum,
    HTK mel filters from 20 Hz to Nyquist, natural log floored at float32 eps. Like Kaldi it
    reads channel 0 of a (channels, samples) input; a 1-D input is one channel.
    """
    signal = waveform[0] if waveform.dim() == 2 else waveform
    size = kaldi_frame_size(sample_frequency, frame_length_ms)
    shift = int(sample_frequency * frame_shift_ms * 0.001)
    if not 2 <= size <= signal.numel():
        raise ValueError(f"need at least {size} samples for one fbank frame, got {signal.numel()}")
    fft_size = 1 << (size - 1).bit_length()
    count = 1 + (signal.numel() - size) // shift
    frames = signal.as_strided((count, size), (shift * signal.stride(0), signal.stride(0)))
    frames = frames - torch.mean(frames, dim=1).unsqueeze(1)
    previous = F.pad(frames.unsqueeze(0), (1, 0), mode="replicate").squeeze(0)
    frames = frames - _PREEMPHASIS * previous[:, :-1]
    window = torch.hann_window(size, periodic=False, dtype=frames.dtype).unsqueeze(0)
    frames = frames * window
    frames = F.pad(frames.unsqueeze(0), (0, fft_size - size), mode="constant", value=0).squeeze(0)
    power = torch.fft.rfft(frames).abs().pow(2.0)
    banks = _mel_banks(num_mel_bins, fft_size, sample_frequency).to(dtype=frames.dtype)
    energies = torch.mm(power, banks.T)
    return torch.max(energies, torch.tensor(_FLOAT32_EPS, dtype=frames.dtype)).log()


def _pcm_to_float(array: np.ndarray) -> np.ndarray:
    """A new C-contiguous float32 copy; integer PCM is scaled as soundfile/torchaudio scale it.

    Always a copy, because clip means are later subtracted in place, which must not touch
    the caller's array; contiguous like ``torchaudio.load`` output, so reductions match.
    """
    if np.issubdtype(array.dtype, np.integer):
        array = array / -float(np.iinfo(array.dtype).min)
    return array.astype(np.float32, order="C")


def _check_size(name: str, samples: int, limit: int) -> None:
    """Refuse inputs of more than ``limit`` samples (all channels) before they are decoded."""
    if samples > limit:
        raise MediaError(
            name,
            f"has {samples} samples (all channels), over the limit of {limit}",
            "pass a shorter recording or raise max_samples",
        )


def _waveform_from_array(
    waveform: torch.Tensor | np.ndarray, sample_rate: int, name: str, max_samples: int
) -> tuple[torch.Tensor, int]:
    """A private (channels, samples) float32 copy of an in-memory waveform."""
    if isinstance(waveform, torch.Tensor):
        waveform = waveform.detach().cpu().numpy()
    array = np.asarray(waveform)
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2:
        raise MediaError(name, f"waveform has shape {array.shape}", "pass (channels, samples)")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise MediaError(name, f"waveform has dtype {array.dtype}", "pass float or integer PCM")
    if not isinstance(sample_rate, int | np.integer) or sample_rate <= 0:
        raise MediaError(name, f"invalid sample rate {sample_rate!r}", "pass a positive int")
    _check_size(name, array.size, max_samples)
    return torch.from_numpy(_pcm_to_float(array)), int(sample_rate)


def _decode_with_soundfile(
    stream: BinaryIO, name: str, max_samples: int
) -> tuple[torch.Tensor, int]:
    """(channels, samples) float32 in [-1, 1], the layout and scale of ``torchaudio.load``.

    The header's frame count is checked before anything is decoded: libsndfile allocates
    what the header claims."""
    with soundfile.SoundFile(stream) as sound:
        _check_size(name, sound.frames * sound.channels, max_samples)
        samples = sound.read(dtype="float32", always_2d=True)
        rate = sound.samplerate
    return torch.from_numpy(np.ascontiguousarray(samples.T)), int(rate)


def _decode_with_pyav(
    stream: BinaryIO, name: str, soundfile_error: str, max_samples: int
) -> tuple[torch.Tensor, int]:
    """First audio stream via FFmpeg, all channels at the native rate, as planar float32.

    ``soundfile_error`` is why libsndfile refused the input; it is quoted if FFmpeg fails too.
    Decoding stops with a MediaError once ``max_samples`` are exceeded: compressed audio
    (silence above all) can expand a thousandfold.
    """
    try:
        with av.open(stream, mode="r") as container:
            if not container.streams.audio:
                raise MediaError(name, "contains no audio stream", "pass an audio file")
            audio = container.streams.audio[0]
            converter = av.AudioResampler(format="fltp", layout=audio.layout, rate=audio.rate)
            chunks: list[np.ndarray] = []
            decoded = 0
            # None flushes the converter, after the last decoded frame (lazily: chained).
            inputs = itertools.chain(container.decode(audio), [None])
            frames = (converted for frame in inputs for converted in converter.resample(frame))
            for converted in frames:
                chunk = converted.to_ndarray()
                decoded += chunk.size
                _check_size(name, decoded, max_samples)
                chunks.append(chunk)
            rate = audio.rate
    except av.FFmpegError as exc:
        raise MediaError(
            name,
            f"cannot be decoded as audio (soundfile: {soundfile_error}; FFmpeg: {exc.strerror})",
            "pass a valid audio file such as WAV, FLAC, MP3 or M4A",
        ) from exc
    if not chunks:
        return torch.zeros(1, 0), rate
    return torch.from_numpy(np.concatenate(chunks, axis=1).astype(np.float32)), rate


def decode_audio(
    item: AudioInput, name: str, max_samples: int = MAX_AUDIO_SAMPLES
) -> tuple[torch.Tensor, int]:
    """Decode one input to a private (channels, samples) float32 tensor and its sample rate.

    soundfile is tried first because it matches ``torchaudio.load`` sample for sample on
    WAV/FLAC; PyAV covers the formats libsndfile lacks. Errors are MediaError naming ``name``:
    more than ``max_samples`` samples, a sample rate outside [1, MAX_SAMPLE_RATE], NaN or
    infinite samples.
    """
    if isinstance(item, tuple):
        waveform, rate = _waveform_from_array(item[0], item[1], name, max_samples)
    else:
        stream = open_source(item)
        try:
            waveform, rate = _decode_with_soundfile(stream, name, max_samples)
        except soundfile.SoundFileError as exc:
            stream.seek(0)
            error = getattr(exc, "error_string", str(exc))
            waveform, rate = _decode_with_pyav(stream, name, error, max_samples)
    if not 0 < rate <= MAX_SAMPLE_RATE:
        raise MediaError(
            name, f"sample rate {rate} Hz is out of range", f"use 1 to {MAX_SAMPLE_RATE} Hz"
        )
    if waveform.is_floating_point() and not torch.isfinite(waveform).all():
        raise MediaError(
            name, "audio contains NaN or infinite samples", "pass finite samples in [-1, 1]"
        )
    return waveform, rate


def _clip_melspec(
    clip: torch.Tensor, sample_rate: int, num_mel_bins: int, target_length: int
) -> torch.Tensor:
    """ImageBind's ``waveform2melspec``: (1, mel bins, target_length) log-mel of one clip.

    ``clip`` is a view into the whole waveform and its mean is removed *in place* on purpose
    (see the module docstring). Frames are zero-padded or cropped to ``target_length``.
    """
    clip -= clip.mean()
    fbank = kaldi_fbank(clip, sample_rate, num_mel_bins).transpose(0, 1)
    frames = fbank.size(1)
    missing = target_length - frames
    if abs(missing) / frames > 0.2:
        action = "padded" if missing > 0 else "cropped"
        logger.warning("audio clip has %d fbank frames, %s to %d", frames, action, target_length)
    if missing > 0:
        fbank = F.pad(fbank, (0, missing), mode="constant", value=0)
    elif missing < 0:
        fbank = fbank[:, :target_length]
    return fbank.unsqueeze(0)


def _waveform_to_clips(
    waveform: torch.Tensor,
    sample_rate: int,
    num_mel_bins: int,
    target_length: int,
    clip_duration: float,
    clips_per_video: int,
    mean: float,
    std: float,
) -> torch.Tensor:
    """(clips, 1, mel bins, target_length) normalised features of one 16 kHz-resampled waveform.

    Clips are processed in order on the one shared buffer so the in-place aliasing matches
    upstream; normalisation comes after padding, so padded frames become ``-mean / std``.
    """
    duration = waveform.size(1) / sample_rate
    mean_t = torch.as_tensor(mean, dtype=torch.float32)
    std_t = torch.as_tensor(std, dtype=torch.float32)
    clips = []
    for start, end in constant_clip_boundaries(duration, clip_duration, clips_per_video):
        view = waveform[:, int(start * sample_rate) : int(end * sample_rate)]
        clips.append(_clip_melspec(view, sample_rate, num_mel_bins, target_length))
    return torch.stack([clip.sub(mean_t).div(std_t) for clip in clips])


def load_and_transform_audio_data(
    audio_paths: Sequence[AudioInput],
    device: torch.device | str | None = None,
    num_mel_bins: int = 128,
    target_length: int = 204,
    sample_rate: int = 16000,
    clip_duration: float = 2,
    clips_per_video: int = 3,
    mean: float = -4.268,
    std: float = 9.138,
    *,
    max_samples: int = MAX_AUDIO_SAMPLES,
) -> torch.Tensor:
    """Audio as ImageBind's input: a (B, clips, 1, mel bins, target_length) float32 tensor.

    Each input is resampled to ``sample_rate`` if needed, cut into ``clips_per_video``
    evenly spaced clips of ``clip_duration`` seconds (shorter audio gives shorter clips) and
    turned into normalised log-mel images, exactly as the official loader does. Audio shorter
    than one 25 ms fbank window, where upstream crashes, raises MediaError instead, before
    any resampling; so do inputs of more than ``max_samples`` samples (all channels, decoded
    or resampled), NaN or infinite samples and sample rates above ``MAX_SAMPLE_RATE``.
    """
    check_batch(audio_paths, "audio_paths")
    batch = []
    for index, item in enumerate(audio_paths):
        name = item_name(item, index)
        waveform, rate = decode_audio(item, name, max_samples)
        if waveform.numel() == 0:
            raise MediaError(name, "contains no audio samples", "pass a non-empty recording")
        channels, samples = waveform.shape
        length = resampled_length(samples, rate, sample_rate)
        if length < kaldi_frame_size(sample_rate):
            raise MediaError(
                name,
                f"is too short: needs at least 25 ms of audio, has {length} samples "
                f"at {sample_rate} Hz",
            )
        _check_size(name, channels * length, max_samples)
        waveform = resample(waveform, rate, sample_rate)
        batch.append(
            _waveform_to_clips(
                waveform,
                sample_rate,
                num_mel_bins,
                target_length,
                clip_duration,
                clips_per_video,
                mean,
                std,
            )
        )
    return torch.stack(batch).to(device)
