"""A synthetic labelled collection with known, independent factors (``dml synth``).

Each track is a short piece of generated music whose four factors are drawn
independently, so a model that separates them has learnt something real and a
model that confuses them is caught:

* **genre** (:data:`GENRES`): the drum *pattern* (kick / snare / hi-hat
  placement, swing, syncopation) together with the accompaniment *style*
  (strummed eighths, arpeggio over a pad, walking bass with sparse comping,
  syncopated montuno). The drum kit and the accompaniment timbre are the same
  synthesis in every genre, so genre cannot be read off timbre alone.
* **mood** (:data:`MOODS`): major or minor harmony crossed with the brightness
  (spectral roll-off) of the accompaniment: happy = major & bright, tender =
  major & dark, tense = minor & bright, sad = minor & dark. Both factors are
  audible in any crop: brightness in the accompaniment's spectrum, mode in
  the quality of every chord, because the progressions use only the primary
  chords (I, IV, V: major triads; i, iv, v in natural minor: minor triads),
  with the same degree patterns in both modes
  (``benchmarks/synth_factors.py`` measures each factor separately).
* **instrument** (:data:`INSTRUMENTS`): the lead melody's timbre, i.e. its
  harmonic profile and amplitude envelope. The melody's rhythm is drawn the same
  way for every instrument and genre.
* **tempo**: BPM uniform in :data:`TEMPO_RANGE`, rounded to 0.1 BPM; every
  rhythmic event sits on that tempo's grid.

Key, register, part levels, detuning, drum tuning, reverb and a noise floor are
randomised as nuisances, so no factor is trivially separable.

Determinism: track ``i`` of seed ``s`` draws its labels from
``SeedSequence(s, spawn_key=(i, 0))`` and its audio from ``(i, 1)`` (the
drumless variant's beat pulse from ``(i, 2)``), so the result does not depend
on the number of worker processes, and changing the renderer never changes the
labels. WAV and FLAC files are byte-identical across
runs; Ogg/Vorbis files decode to identical samples (libsndfile writes a random
Ogg stream serial number into the container).

The synthesis uses numpy only (band-limited wavetables, exponential envelopes,
FFT convolution); :mod:`soundfile` writes the files.

Drumless variant (``percussion=False``, ``dml synth --no-percussion``): the same
labels and the same pitched parts without the drums, so tempo is carried only by
the note onsets of bass, accompaniment and lead, and genre only by the
accompaniment style and bass pattern. It measures whether a model hears tempo
from note onsets and mode from harmony alone; on the drummed collection the drum
patterns make tempo easy. Track ``i`` of a seed has the same spec and the same
random draws in both variants, so the two collections compare track by track
(:func:`render_track`). Where the pitched parts alone do not mark the beat (latin:
syncopated montuno and tumbao), the drumless variant adds a soft root-and-fifth
on every beat (``_render_accompaniment``). Both variants are normalised to the
same peak level; without drum transients the RMS comes out higher, not lower.
``synth.json`` in the output folder records the variant.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from disentangled_ml.config import FrontendConfig

#: Genre classes: drum pattern + accompaniment style.
GENRES: Tuple[str, ...] = ("rock", "electronic", "jazz", "latin")
#: Mood classes: (mode, brightness) = happy (major, bright), tender (major, dark),
#: tense (minor, bright), sad (minor, dark).
MOODS: Tuple[str, ...] = ("happy", "tender", "tense", "sad")
#: Lead-instrument classes (timbre of the melody).
INSTRUMENTS: Tuple[str, ...] = ("flute", "guitar", "brass", "clarinet", "bell")
#: Tempo range in BPM (uniform, inclusive of the lower bound).
TEMPO_RANGE: Tuple[float, float] = (60.0, 180.0)
#: Audio containers, cycled by track index: (extension, soundfile format, subtype).
AUDIO_FORMATS: Tuple[Tuple[str, str, str], ...] = (
    ("wav", "WAV", "PCM_16"), ("flac", "FLAC", "PCM_16"), ("ogg", "OGG", "VORBIS"),
)
#: Sample rate of the written files in Hz: the frontend's rate, so nothing is resampled.
SAMPLE_RATE: int = FrontendConfig().sample_rate
#: Default track length range in seconds.
DEFAULT_MIN_SECONDS: float = 20.0
DEFAULT_MAX_SECONDS: float = 30.0
#: Shortest allowed track: one frontend segment (shorter files are rejected by prepare).
MIN_TRACK_SECONDS: float = FrontendConfig().segment_seconds
MAX_TRACK_SECONDS: float = 600.0
#: Peak level of every track in dBFS (headroom for the Vorbis encoder's overshoot).
PEAK_DBFS: float = -1.0
#: Name of the manifest written into the output folder (docs/design.md, contract 1).
MANIFEST_NAME: str = "manifest.csv"
#: Name of the JSON file recording how the collection was made (version, seed, lengths, percussion).
INFO_NAME: str = "synth.json"

_MAJOR = np.array([0, 2, 4, 5, 7, 9, 11])
_MINOR = np.array([0, 2, 3, 5, 7, 8, 10])  # natural minor
# Four-bar progressions in scale degrees (0 = tonic), drawn independently of genre and mode.
# Only the primary chords: in major they are all major triads (major-seventh / dominant-seventh
# chords in jazz), in natural minor all minor triads (minor sevenths), so every chord in a 3 s crop
# carries the mode. Version 1 of the synthesiser also used ii/iii/vi and III/VI/VII, whose triads
# the two modes share, so the mode was audible only in whole tracks (mood ceiling ~0.82 on crops,
# benchmarks/RESULTS.md).
_PROGRESSIONS = ((0, 3, 4, 0), (0, 4, 3, 0), (0, 0, 3, 4), (0, 3, 0, 4), (0, 4, 0, 3))
#: Mood -> (mode, bright accompaniment): the two factors the synthesiser renders for a mood.
MOOD_FACTORS = {"happy": ("major", True), "tender": ("major", False), "tense": ("minor", True), "sad": ("minor", False)}
#: Bumped whenever the same seed renders different audio (2: primary chords only, so mode is
#: audible in every crop). Figures in benchmarks/RESULTS.md name the version they were made with.
SYNTH_VERSION: int = 2
_TRACK_ID = "synth_{:04d}"
# Level of the drumless variant's beat pulse relative to the accompaniment, in dB (_render_accompaniment).
_PULSE_DB = -4.0
_TABLE = 2048  # wavetable length in samples; one period


class SynthError(ValueError):
    """Bad arguments for the synthesiser; the message names the value and what to do."""


@dataclass(frozen=True)
class TrackSpec:
    """The labels and length of one synthetic track (cheap: no audio).

    Attributes:
        index: position in the collection, 0-based.
        track_id: ``synth_0001`` for index 0.
        genre, mood, instrument: one label each, from GENRES / MOODS / INSTRUMENTS.
        tempo: BPM, rounded to 0.1.
        num_samples: length at :data:`SAMPLE_RATE`.
        key: pitch class of the tonic, 0 = C.
        extension: ``wav``, ``flac`` or ``ogg``.
    """

    index: int
    track_id: str
    genre: str
    mood: str
    instrument: str
    tempo: float
    num_samples: int
    key: int
    extension: str

    @property
    def filename(self) -> str:
        return f"{self.track_id}.{self.extension}"

    @property
    def seconds(self) -> float:
        return self.num_samples / float(SAMPLE_RATE)


def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(index), int(stream))))


def _check_args(n_tracks: int, seed: int, min_seconds: float, max_seconds: float) -> None:
    if isinstance(n_tracks, bool) or not isinstance(n_tracks, (int, np.integer)) or n_tracks < 1:
        raise SynthError(f"number of tracks must be a positive integer, got {n_tracks!r}.")
    if n_tracks > 9999:
        raise SynthError(f"number of tracks {n_tracks} is above 9999 (track ids have four digits); "
                         "generate several collections with different seeds instead.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SynthError(f"seed must be a non-negative integer, got {seed!r}.")
    for name, v in (("min_seconds", min_seconds), ("max_seconds", max_seconds)):
        if not (isinstance(v, (int, float, np.floating)) and math.isfinite(v)
                and MIN_TRACK_SECONDS <= v <= MAX_TRACK_SECONDS):
            raise SynthError(f"{name}={v!r} s is out of range: give {MIN_TRACK_SECONDS:g} to {MAX_TRACK_SECONDS:g} "
                             f"seconds ({MIN_TRACK_SECONDS:g} s is one model segment).")
    if min_seconds > max_seconds:
        raise SynthError(f"min_seconds={min_seconds:g} is greater than max_seconds={max_seconds:g}; "
                         "swap them or make them equal.")


def draw_track_specs(n_tracks: int, seed: int, min_seconds: float = DEFAULT_MIN_SECONDS,
                     max_seconds: float = DEFAULT_MAX_SECONDS) -> List[TrackSpec]:
    """Draw the labels of a collection without rendering audio.

    Genre, mood, instrument and tempo are drawn independently and uniformly per
    track; this is exactly what :func:`synthesize_collection` writes to the
    manifest for the same arguments.

    Args:
        n_tracks: number of tracks, 1..9999.
        seed: non-negative integer.
        min_seconds, max_seconds: track length range in seconds.
    Returns:
        list of :class:`TrackSpec`, length ``n_tracks``, in index order.
    Raises:
        SynthError: an argument is out of range.
    """
    _check_args(n_tracks, seed, min_seconds, max_seconds)
    specs = []
    for i in range(int(n_tracks)):
        rng = _rng(seed, i, 0)
        tempo = round(float(rng.uniform(*TEMPO_RANGE)), 1)
        specs.append(TrackSpec(
            index=i,
            track_id=_TRACK_ID.format(i + 1),
            genre=GENRES[rng.integers(len(GENRES))],
            mood=MOODS[rng.integers(len(MOODS))],
            instrument=INSTRUMENTS[rng.integers(len(INSTRUMENTS))],
            tempo=min(tempo, TEMPO_RANGE[1]),
            num_samples=int(round(rng.uniform(min_seconds, max_seconds) * SAMPLE_RATE)),
            key=int(rng.integers(12)),
            extension=AUDIO_FORMATS[i % len(AUDIO_FORMATS)][0],
        ))
    return specs


# --------------------------------------------------------------------------- DSP helpers


def _hz(midi) -> np.ndarray:
    return 440.0 * 2.0 ** ((np.asarray(midi, dtype=np.float64) - 69.0) / 12.0)


def _wavetable(amps: np.ndarray) -> np.ndarray:
    """One period (plus a wrap-around sample) with harmonic k at amplitude amps[k-1], RMS 0.5."""
    amps = np.asarray(amps, dtype=np.float64)
    spec = np.zeros(_TABLE // 2 + 1, dtype=np.complex128)
    spec[1:len(amps) + 1] = -1j * amps  # sine phase: every note starts at a zero crossing
    table = np.fft.irfft(spec, _TABLE) * (_TABLE / 2.0)  # = sum_k amps[k-1] * sin(2 pi k n / N)
    table *= 0.5 / max(math.sqrt(float(np.sum(amps ** 2)) / 2.0), 1e-12)
    return np.append(table, table[0])


def _band_limit(f0: float, n_harm: int) -> int:
    """Harmonics of f0 that stay below 0.45 * sample rate (no aliasing from the table)."""
    return int(max(1, min(n_harm, math.floor(0.45 * SAMPLE_RATE / max(f0, 1.0)))))


def _osc(table: np.ndarray, freq, n: int, phase0: float = 0.0) -> np.ndarray:
    """Read ``table`` at frequency ``freq`` (Hz, scalar or [n] array) for n samples."""
    if np.ndim(freq) == 0:
        phase = phase0 + np.arange(n) * (float(freq) / SAMPLE_RATE)
    else:
        phase = phase0 + np.cumsum(freq) / SAMPLE_RATE
    pos = (phase % 1.0) * _TABLE
    i = pos.astype(np.int64)
    frac = pos - i
    return table[i] * (1.0 - frac) + table[i + 1] * frac


def _envelope(n: int, dur: float, attack: float, decay: float, sustain: float, release: float) -> np.ndarray:
    """Linear attack, exponential decay to ``sustain``, exponential release after ``dur`` seconds."""
    t = np.arange(n) / SAMPLE_RATE
    env = np.where(t < attack, t / max(attack, 1e-4),
                   sustain + (1.0 - sustain) * np.exp(-(t - attack) / max(decay, 1e-4)))
    off = t > dur
    env[off] *= np.exp(-(t[off] - dur) / max(release, 1e-4))
    return env


def _add(buf: np.ndarray, start: float, x: np.ndarray) -> None:
    """Mix x into buf from ``start`` seconds; anything past the end is dropped."""
    i = int(round(start * SAMPLE_RATE))
    if i >= len(buf) or i + len(x) <= 0:
        return
    if i < 0:
        x, i = x[-i:], 0
    m = min(len(x), len(buf) - i)
    buf[i:i + m] += x[:m]


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x * x))) if x.size else 0.0


def _db(v: float) -> float:
    return 10.0 ** (v / 20.0)


# --------------------------------------------------------------------------- drums


def _drum_kit(rng: np.random.Generator) -> Dict[str, np.ndarray]:
    """One kit per track; the same synthesis for every genre (only tuning is random)."""
    sr = SAMPLE_RATE

    def t(seconds):
        return np.arange(int(seconds * sr)) / sr

    tk = t(0.45)
    f_end, f_start = rng.uniform(45, 65), rng.uniform(120, 200)
    freq = f_end + (f_start - f_end) * np.exp(-tk / rng.uniform(0.02, 0.045))
    kick = np.sin(2 * np.pi * np.cumsum(freq) / sr) * np.exp(-tk / rng.uniform(0.09, 0.18))
    kick += 0.4 * rng.standard_normal(len(tk)) * np.exp(-tk / 0.004)  # beater click: a sharp onset
    ts = t(0.35)
    noise = np.diff(rng.standard_normal(len(ts) + 1))  # first difference: a gentle high-pass
    snare = (0.6 * np.sin(2 * np.pi * rng.uniform(170, 240) * ts) * np.exp(-ts / 0.05)
             + noise * 0.5 * np.exp(-ts / rng.uniform(0.06, 0.13)))
    th = t(0.5)
    hiss = np.diff(rng.standard_normal(len(th) + 2), n=2)  # second difference: brighter
    hat = hiss * np.exp(-th / rng.uniform(0.012, 0.03))
    ride = hiss * np.exp(-th / rng.uniform(0.12, 0.3))
    tr = t(0.12)
    f_rim = rng.uniform(1500, 2500)
    rim = (np.sin(2 * np.pi * f_rim * tr) + 0.5 * np.sin(2 * np.pi * 1.48 * f_rim * tr)) * np.exp(-tr / 0.012)
    kit = {"kick": kick, "snare": snare, "hat": hat, "ride": ride, "rim": rim}
    return {k: v / np.max(np.abs(v)) for k, v in kit.items()}


# A bar is 16 sixteenth steps; beats are steps 0, 4, 8, 12. Each entry: drum -> [(step, velocity)].
def _pattern(genre: str, rng: np.random.Generator, tempo: float) -> List[Dict[str, List[Tuple[float, float]]]]:
    """Bar patterns of a genre, cycled bar by bar."""
    eighths = [(s, 0.75 if s % 4 == 0 else 0.5) for s in range(0, 16, 2)]
    sixteenths = [(s, 0.6 if s % 4 == 0 else (0.45 if s % 2 == 0 else 0.3)) for s in range(16)]
    # Hi-hat density and offbeat weight follow the tempo so the pulse stays unambiguous to a
    # beat tracker: loud offbeats at slow tempi pull it to double time, a kick only every other
    # beat at fast tempi pulls it to half time.
    slow, fast = tempo < 75, tempo >= 135
    if slow:
        hats = [(s, 0.7 if s % 4 == 0 else 0.3) for s in range(0, 16, 2)]
    else:
        hats = sixteenths if tempo < 85 else eighths
    if genre == "rock":
        extra = [[], [(10, 0.8)], [(6, 0.7)], [(7, 0.6), (10, 0.8)], [(14, 0.6)]][rng.integers(5)]
        kick = [(0, 1.0), (8, 0.95)]
        if fast:
            # Driving rock: kick on every beat and accented offbeat hats, which mark each beat
            # as the unit being subdivided (a plain backbeat here reads as half time).
            kick = kick + [(4, 0.8), (12, 0.8)]
            hats = [(s, 0.4 if s % 4 == 0 else 0.75) for s in range(0, 16, 2)]
        bar = {"kick": kick + extra, "snare": [(4, 1.0), (12, 1.0)], "hat": hats}
        if rng.random() < 0.5:
            bar["ride"] = [(14, 0.4)]  # open hat before the next downbeat
        bars = [bar]
    elif genre == "electronic":
        bar = {"kick": [(s, 1.0) for s in (0, 4, 8, 12)], "snare": [(4, 0.8), (12, 0.8)],
               "ride": [(s, 0.3 if slow else 0.55) for s in (2, 6, 10, 14)]}
        if 75 <= tempo < 130:
            bar["hat"] = [(s, 0.25) for s in range(1, 16, 2)]
        if rng.random() < 0.5:
            bar["kick"] = bar["kick"] + [(14, 0.5)]
        bars = [bar]
    elif genre == "jazz":
        ride = [(0, 0.8), (4, 0.8), (6, 0.55), (8, 0.8), (12, 0.8), (14, 0.55)]
        if fast:  # a skip note after every beat keeps fast swing from being heard in half time
            ride = [(0, 0.6), (2, 0.7), (4, 0.6), (6, 0.7), (8, 0.6), (10, 0.7), (12, 0.6), (14, 0.7)]
        bars = []
        for _ in range(4):  # comping snare differs from bar to bar
            comp = sorted(rng.choice([2, 6, 10, 14, 8], size=rng.integers(1, 3), replace=False).tolist())
            bars.append({"ride": ride, "hat": [(4, 0.35 if fast else 0.6), (12, 0.35 if fast else 0.6)],
                         "kick": [(s, 0.9 if fast else 0.7) for s in (0, 4, 8, 12)],
                         "snare": [(s, float(rng.uniform(0.25, 0.45))) for s in comp]})
    elif genre == "latin":
        kick = [(0, 1.0), (3, 0.55), (4, 0.9), (8, 1.0), (11, 0.55), (12, 0.9)]
        shaker = hats if slow else ([(s, 0.5 if s % 4 == 2 else 0.25) for s in range(16)] if tempo < 130 else eighths)
        clave = ([(0, 0.7), (6, 0.7), (12, 0.7)], [(4, 0.7), (8, 0.7)])  # son clave, 3-2
        if rng.random() < 0.5:
            clave = clave[::-1]  # 2-3
        bars = [{"kick": kick, "hat": shaker, "rim": c} for c in clave]
    else:
        raise SynthError(f"unknown genre {genre!r}; expected one of {GENRES}.")
    return bars


def _step_time(step: float, beat: float, swing: float) -> float:
    """Seconds of a sixteenth step within a bar, with offbeat eighths delayed by ``swing`` beats."""
    t = step * beat / 4.0
    if swing and int(step) % 4 == 2:
        t += swing * beat
    return t


def _render_drums(buf: np.ndarray, genre: str, tempo: float, t0: float, swing: float,
                  rng: np.random.Generator) -> None:
    kit = _drum_kit(rng)
    gains = {k: _db(rng.uniform(-3.0, 3.0)) for k in kit}  # within-genre variation of the kit balance
    gains["kick"] = _db(rng.uniform(0.0, 2.0))
    bars = _pattern(genre, rng, tempo)
    beat = 60.0 / tempo
    n_bars = int(len(buf) / SAMPLE_RATE / (4 * beat)) + 2
    for b in range(n_bars):
        for drum, hits in bars[b % len(bars)].items():
            for step, vel in hits:
                v = vel * gains[drum] * rng.uniform(0.85, 1.0)
                jitter = rng.normal(0.0, 0.002)  # 2 ms human timing, well below a 16th at 180 BPM
                _add(buf, t0 + b * 4 * beat + _step_time(step, beat, swing) + jitter, v * kit[drum])


# --------------------------------------------------------------------------- harmony and parts


@dataclass
class _Harmony:
    key: int
    scale: np.ndarray
    progression: Tuple[int, ...]

    def degree_pitch(self, degree: int, base: int) -> int:
        """MIDI pitch of a scale degree (may exceed 6: next octaves) above ``base`` (a C)."""
        return int(base + self.key + self.scale[degree % 7] + 12 * (degree // 7))

    def chord(self, bar: int, n_notes: int, base: int) -> List[int]:
        root = self.progression[bar % len(self.progression)]
        return [self.degree_pitch(root + 2 * i, base) for i in range(n_notes)]

    def root(self, bar: int, base: int) -> int:
        return self.degree_pitch(self.progression[bar % len(self.progression)], base)


def _acc_table(f0: float, tone: Dict[str, float]) -> np.ndarray:
    """Sawtooth-like spectrum with a spectral tilt and a 4th-order low-pass roll-off (the mood's brightness)."""
    k = np.arange(1, _band_limit(f0, 40) + 1)
    amps = k ** -tone["tilt"] / (1.0 + (k * f0 / tone["cutoff"]) ** 4)
    return _wavetable(amps)


class _Voice:
    """A polyphonic accompaniment voice with a shared timbre; notes are cached wavetables."""

    def __init__(self, rng: np.random.Generator, bright: bool):
        self.rng = rng
        if bright:
            self.tone = {"cutoff": rng.uniform(2500, 6000), "tilt": rng.uniform(0.6, 0.9)}
        else:
            self.tone = {"cutoff": rng.uniform(350, 900), "tilt": rng.uniform(1.2, 1.6)}
        self.detune = rng.uniform(0.002, 0.006)  # chorus: a second oscillator a few cents sharp
        self._tables: Dict[int, np.ndarray] = {}

    def note(self, pitch: int, dur: float, attack: float, decay: float, sustain: float, release: float) -> np.ndarray:
        table = self._tables.get(pitch)
        f0 = float(_hz(pitch))
        if table is None:
            table = self._tables[pitch] = _acc_table(f0, self.tone)
        n = int((dur + 5 * release) * SAMPLE_RATE)
        y = _osc(table, f0, n) + 0.6 * _osc(table, f0 * (1 + self.detune), n, self.rng.random())
        return y * _envelope(n, dur, attack, decay, sustain, release)


def _render_accompaniment(acc: np.ndarray, bass: np.ndarray, genre: str, harmony: _Harmony, tempo: float,
                          t0: float, swing: float, bright: bool, rng: np.random.Generator,
                          pulse: Optional[Tuple[np.ndarray, np.random.Generator]] = None) -> None:
    """Chords into ``acc``, bass line into ``bass``.

    ``pulse`` = (buffer, generator), drumless tracks only: the genres whose pitched parts do
    not mark the beat by themselves write a light pitched pulse into the buffer, drawing only
    from that generator, so every draw from ``rng`` (and the parts above) stays as with drums.
    """
    beat = 60.0 / tempo
    bar_s = 4 * beat
    six = beat / 4
    n_bars = int(len(acc) / SAMPLE_RATE / bar_s) + 2
    voice = _Voice(rng, bright)
    if pulse is not None:  # the same timbre, with its own generator (for the chorus phase)
        pulse_voice = copy.copy(voice)
        pulse_voice.rng = pulse[1]
    base = 12 * int(rng.integers(3, 5))  # chord register: C3 or C4 (random, not genre-dependent)
    bass_table_cache: Dict[int, np.ndarray] = {}

    def bass_note(t: float, pitch: int, dur: float, vel: float) -> None:
        f0 = float(_hz(pitch))
        table = bass_table_cache.get(pitch)
        if table is None:
            k = np.arange(1, _band_limit(f0, 12) + 1)
            amps = np.where(k % 2 == 1, 1.0 / k ** 2, 0.15 / k ** 2)  # round, triangle-like
            table = bass_table_cache[pitch] = _wavetable(amps)
        n = int((dur + 0.25) * SAMPLE_RATE)
        y = _osc(table, f0, n) * _envelope(n, dur, 0.005, 0.35, 0.4, 0.05)
        _add(bass, t, vel * y)

    def t_of(bar: int, step: float) -> float:
        return t0 + bar * bar_s + _step_time(step, beat, swing)

    bass_base = 24 + 12 * int(rng.integers(0, 2))  # C1 or C2
    if genre == "rock":
        # eighth strums at fast tempi: offbeat events mark every beat, sparse strums there let
        # the pulse fall to half time
        sustained = rng.random() < 0.5 and tempo < 135
        for b in range(n_bars):
            chord = harmony.chord(b, 3, base)
            voicing = [chord[0], chord[2], chord[0] + 12, chord[1] + 12]
            steps = range(0, 16, 4) if sustained else range(0, 16, 2)
            dur = beat * 0.95 if sustained else six * 1.8
            for s in steps:
                vel = 0.9 if s % 4 == 0 else (0.9 if tempo >= 135 else 0.65)
                for j, p in enumerate(voicing):  # strummed: voices 8 ms apart
                    _add(acc, t_of(b, s) + 0.008 * j, vel * voice.note(p, dur, 0.003, 0.25, 0.35, 0.04))
            for s in range(0, 16, 2):
                bass_note(t_of(b, s), harmony.root(b, bass_base), six * 1.8, 0.8)
    elif genre == "electronic":
        shape = int(rng.integers(3))
        for b in range(n_bars):
            chord = harmony.chord(b, 3, base)
            for p in chord:  # pad
                _add(acc, t_of(b, 0), 0.35 * voice.note(p, bar_s, 0.25 * bar_s, 1.0, 1.0, 0.3))
            tones = chord + [chord[0] + 12]
            order = {0: tones, 1: tones[::-1], 2: tones + tones[-2:0:-1]}[shape]
            for s in range(16):  # 16th arpeggio an octave up
                p = order[(b * 16 + s) % len(order)] + 12
                _add(acc, t_of(b, s), 0.55 * voice.note(p, six * 0.8, 0.003, 0.12, 0.2, 0.03))
            for s in (2, 6, 10, 14):  # offbeat bass
                bass_note(t_of(b, s), harmony.root(b, bass_base), six * 1.6, 0.9)
    elif genre == "jazz":
        for b in range(n_bars):
            chord = harmony.chord(b, 4, base)  # diatonic seventh chords
            for s in sorted(rng.choice([0, 2, 6, 8, 10, 14], size=rng.integers(1, 4), replace=False)):
                dur = beat * float(rng.choice([0.5, 1.0]))
                for p in chord:
                    _add(acc, t_of(b, s), 0.6 * voice.note(p, dur, 0.004, 0.3, 0.4, 0.06))
            root = harmony.root(b, bass_base)
            nxt = harmony.root(b + 1, bass_base)
            line = [root, harmony.chord(b, 3, bass_base)[int(rng.integers(1, 3))],
                    harmony.chord(b, 4, bass_base)[int(rng.integers(1, 4))], nxt + int(rng.choice([-1, 1]))]
            for q, p in enumerate(line):  # walking quarters, last one a chromatic approach
                bass_note(t_of(b, 4 * q), p, beat * 0.9, 0.85)
    elif genre == "latin":
        montuno = ([0, 3, 6, 10, 12], [2, 4, 7, 10, 14])
        for b in range(n_bars):
            chord = harmony.chord(b, 3, base)
            voicing = [chord[0], chord[1], chord[2], chord[0] + 12]
            for s in montuno[b % 2]:  # syncopated stabs
                for p in voicing:
                    _add(acc, t_of(b, s), 0.6 * voice.note(p, six * 1.5, 0.003, 0.15, 0.3, 0.03))
            root = harmony.root(b, bass_base)
            fifth = harmony.chord(b, 3, bass_base)[2]
            bass_note(t_of(b, 6), fifth, six * 2.5, 0.85)  # tumbao: anticipations on 2-and and 4
            bass_note(t_of(b, 12), harmony.root(b + 1, bass_base) if rng.random() < 0.7 else root, six * 3.5, 0.9)
            if pulse is not None:
                # Without drums nothing here marks the beat: montuno and tumbao are syncopated
                # (one or two of the montuno's five stabs in a bar fall on a beat, the tumbao only
                # on beat 4), and it was the kick, shaker and clave that held the pulse. madmom
                # then heard 2/3 or 4/3 of the tempo on drumless latin tracks (3 of 5 at 64-170
                # BPM, the other two in double time; drumless rock, electronic and jazz: 31 of 33
                # right at 64-170 BPM, 2 in double time). So, as a pianist's left hand does
                # without a rhythm section, a short, soft root-and-fifth on every beat, in the
                # accompaniment's timbre; no third, so it carries no mode. With it, 8 of 10 latin
                # tracks at 62-178 BPM are heard right and 2 (62, 75 BPM) in double time (with
                # drums: 9 of 10 right).
                for s in (0, 4, 8, 12):
                    for p in (chord[0], chord[2]):
                        _add(pulse[0], t_of(b, s), 0.5 * pulse_voice.note(p, six * 1.2, 0.003, 0.1, 0.2, 0.03))
    else:
        raise SynthError(f"unknown genre {genre!r}; expected one of {GENRES}.")


# --------------------------------------------------------------------------- lead


def _lead_note(instrument: str, f0: float, dur: float, rng: np.random.Generator, p: Dict[str, float]) -> np.ndarray:
    """One note of the lead: timbre from harmonic profile and envelope only."""
    sr = SAMPLE_RATE
    if instrument == "flute":
        n = int((dur + 0.4) * sr)
        t = np.arange(n) / sr
        k = np.arange(1, _band_limit(f0, 5) + 1)
        amps = np.array([1.0, p["h2"], 0.25 * p["h2"], 0.1, 0.04])[: len(k)]
        vib = 1.0 + p["vib_depth"] * np.sin(2 * np.pi * p["vib_rate"] * t) * np.clip(t / 0.3, 0, 1)
        y = _osc(_wavetable(amps), f0 * vib, n)
        breath = np.convolve(rng.standard_normal(n), np.ones(4) / 4, mode="same")
        y = y + p["breath"] * breath
        return y * _envelope(n, dur, p["attack"], 0.3, 0.9, 0.08)
    if instrument == "clarinet":
        n = int((dur + 0.3) * sr)
        k = np.arange(1, _band_limit(f0, 19) + 1)
        amps = np.where(k % 2 == 1, 1.0 / k ** p["tilt"], 0.03 / k)  # odd harmonics: closed-pipe
        return _osc(_wavetable(amps), f0, n) * _envelope(n, dur, p["attack"], 0.2, 0.85, 0.05)
    if instrument == "brass":
        n = int((dur + 0.4) * sr)
        t = np.arange(n) / sr
        nb = _band_limit(f0, 20)
        k = np.arange(1, nb + 1)
        dull = _wavetable(np.where(k <= 3, 1.0 / k ** 2, 0.0))
        bright = _wavetable(1.0 / k ** p["tilt"])
        freq = f0 * 2.0 ** (-p["scoop"] / 12.0 * np.exp(-t / 0.04))  # lip scoop up to pitch
        env = _envelope(n, dur, p["attack"], 0.2, 0.8, 0.09)
        w = np.clip(env, 0, 1) ** 1.5  # louder = brighter, the brass signature
        return (_osc(dull, freq, n) * (1 - w) + _osc(bright, freq, n) * w) * env
    if instrument == "guitar":
        n = int((dur + 0.15) * sr)
        t = np.arange(n) / sr
        nb = _band_limit(f0, 30)
        k = np.arange(1, nb + 1)
        bright = _wavetable(np.abs(np.sin(np.pi * k * p["pluck_pos"])) / k + 1e-3)
        dull = _wavetable(1.0 / k[:6] ** 2.5)
        w = np.exp(-t / p["damp"])  # high partials die first
        env = _envelope(n, dur, 0.002, p["decay"], 0.0, 0.04)
        return (_osc(bright, f0, n) * w + _osc(dull, f0, n) * (1 - w)) * env
    if instrument == "bell":
        n = int((dur + 0.6) * sr)
        t = np.arange(n) / sr
        ratios = np.array([1.0, 2.0, 2.76, 5.40, 8.93])
        amps = np.array([1.0, 0.35, 0.5, 0.25, 0.12])
        keep = ratios * f0 < 0.45 * sr
        ratios, amps = ratios[keep], amps[keep]
        decays = p["decay"] / (1.0 + 0.6 * ratios)  # upper partials ring shorter
        y = np.sum(amps[:, None] * np.sin(2 * np.pi * f0 * ratios[:, None] * t[None, :])
                   * np.exp(-t[None, :] / decays[:, None]), axis=0)
        off = t > dur
        y[off] *= np.exp(-(t[off] - dur) / 0.15)
        return y * np.clip(t / 0.001, 0, 1)
    raise SynthError(f"unknown instrument {instrument!r}; expected one of {INSTRUMENTS}.")


def _lead_params(instrument: str, rng: np.random.Generator) -> Dict[str, float]:
    """Per-track variation inside an instrument class."""
    if instrument == "flute":
        return {"h2": rng.uniform(0.2, 0.6), "vib_depth": rng.uniform(0.002, 0.006), "vib_rate": rng.uniform(4.5, 6.0),
                "breath": rng.uniform(0.02, 0.08), "attack": rng.uniform(0.05, 0.12)}
    if instrument == "clarinet":
        return {"tilt": rng.uniform(0.9, 1.4), "attack": rng.uniform(0.025, 0.06)}
    if instrument == "brass":
        return {"tilt": rng.uniform(0.6, 1.0), "scoop": rng.uniform(0.2, 0.6), "attack": rng.uniform(0.04, 0.09)}
    if instrument == "guitar":
        return {"pluck_pos": rng.uniform(0.1, 0.3), "damp": rng.uniform(0.08, 0.25), "decay": rng.uniform(0.4, 1.0)}
    if instrument == "bell":
        return {"decay": rng.uniform(0.8, 1.8)}
    raise SynthError(f"unknown instrument {instrument!r}; expected one of {INSTRUMENTS}.")


def _render_lead(buf: np.ndarray, instrument: str, harmony: _Harmony, tempo: float, t0: float,
                 rng: np.random.Generator) -> None:
    """A random melody in the key; its rhythm is drawn the same way for every genre and instrument."""
    beat = 60.0 / tempo
    eighth = beat / 2
    params = _lead_params(instrument, rng)
    base = 12 * int(rng.integers(4, 6))  # C4 or C5: register does not depend on the instrument
    detune = 2.0 ** (rng.uniform(-15, 15) / 1200.0)  # whole lead a few cents off the accompaniment
    end = len(buf) / SAMPLE_RATE
    pos = int(rng.integers(0, 9))  # in eighths: the melody enters within the first bar
    degree = int(rng.integers(0, 5))
    lengths = np.array([1, 2, 3, 4, 6, 8])
    weights = np.array([3, 4, 1, 3, 1, 1], dtype=float)
    while t0 + pos * eighth < end:
        n8 = int(rng.choice(lengths, p=weights / weights.sum()))
        if rng.random() < 0.15:  # rest
            pos += n8
            continue
        step = int(rng.choice([-3, -2, -1, 0, 1, 2, 3], p=[0.05, 0.15, 0.25, 0.1, 0.25, 0.15, 0.05]))
        degree = int(np.clip(degree + step, -2, 11))
        if pos % 8 == 0 and rng.random() < 0.6:  # a downbeat lands on a chord tone
            root = harmony.progression[(pos // 8) % len(harmony.progression)]
            candidates = [root + d for d in (-7, -5, -3, 0, 2, 4, 7, 9, 11)]
            degree = int(min(candidates, key=lambda c: (abs(c - degree), c)))
        f0 = float(_hz(harmony.degree_pitch(degree, base))) * detune
        dur = n8 * eighth * 0.95
        _add(buf, t0 + pos * eighth, rng.uniform(0.8, 1.0) * _lead_note(instrument, f0, dur, rng, params))
        pos += n8


# --------------------------------------------------------------------------- a whole track


def render_track(spec: TrackSpec, seed: int, percussion: bool = True) -> np.ndarray:
    """Render one track's audio.

    Args:
        spec: from :func:`draw_track_specs` with the same ``seed``.
        seed: the collection's seed (the audio stream is ``(seed, spec.index, 1)``).
        percussion: False renders the drumless variant: the same bass, accompaniment,
            lead, levels, room and noise draws as the drummed track, without the drums
            (module notes).
    Returns:
        float32 array of shape [spec.num_samples] at :data:`SAMPLE_RATE` Hz,
        peak at :data:`PEAK_DBFS` dBFS.
    """
    rng = _rng(seed, spec.index, 1)
    mode, bright = MOOD_FACTORS[spec.mood]
    harmony = _Harmony(key=spec.key, scale=_MAJOR if mode == "major" else _MINOR,
                       progression=_PROGRESSIONS[int(rng.integers(len(_PROGRESSIONS)))])
    n = spec.num_samples
    tail = int(2.0 * SAMPLE_RATE)  # notes that start near the end ring into the tail, which is cut
    parts = {name: np.zeros(n + tail) for name in ("drums", "bass", "acc", "lead")}
    beat = 60.0 / spec.tempo
    t0 = float(rng.uniform(0.0, 0.25)) * beat
    # Jazz swings: the offbeat eighth moves from 1/2 to about 2/3 of the beat (drums and comping
    # alike).
    swing = float(rng.uniform(0.12, 0.17)) if spec.genre == "jazz" else 0.0
    # Without percussion the drums are still rendered, then dropped: they draw from the same random
    # stream as everything after them, so skipping them would change every later draw, and the
    # drumless track would no longer be the drummed one without its drums.
    _render_drums(parts["drums"], spec.genre, spec.tempo, t0, swing, rng)
    # Drumless: a light pitched pulse for the genres that need one (_render_accompaniment), drawn
    # from a stream of its own so the drumless track keeps every other draw of the drummed one.
    pulse = None if percussion else (np.zeros(n + tail), _rng(seed, spec.index, 2))
    _render_accompaniment(parts["acc"], parts["bass"], spec.genre, harmony, spec.tempo, t0, swing, bright, rng,
                          pulse)
    _render_lead(parts["lead"], spec.instrument, harmony, spec.tempo, t0, rng)
    # Level of each part relative to the drums, in dB: random so loudness identifies nothing. The
    # drumless variant keeps the same levels (only the peak normalisation below scales it up).
    levels = {"drums": 0.0, "bass": rng.uniform(-9, -4), "acc": rng.uniform(-12, -6), "lead": rng.uniform(-6, -1)}
    if not percussion:
        del parts["drums"]
        parts["pulse"] = pulse[0]
        levels["pulse"] = levels["acc"] + _PULSE_DB  # no new draw: the pulse follows the chords' level
    mix = np.zeros(n + tail)
    for name, x in parts.items():
        r = _rms(x[:n])
        if r > 0:
            mix += x * (0.1 * _db(levels[name]) / r)
    # Room: exponentially decaying noise as impulse response, applied by FFT convolution.
    rt = rng.uniform(0.1, 0.6)
    ir_t = np.arange(int(rt * 1.5 * SAMPLE_RATE)) / SAMPLE_RATE
    ir = rng.standard_normal(len(ir_t)) * np.exp(-ir_t * 6.9 / rt)
    ir *= 1.0 / np.sqrt(np.sum(ir ** 2))
    size = 1 << int(math.ceil(math.log2(len(mix) + len(ir))))
    wet = np.fft.irfft(np.fft.rfft(mix, size) * np.fft.rfft(ir, size), size)[: len(mix)]
    mix = mix + _db(rng.uniform(-18, -8)) * wet
    y = mix[:n]
    y = y + _rms(y) * _db(rng.uniform(-45, -30)) * rng.standard_normal(n)  # noise floor
    fade_in, fade_out = int(0.01 * SAMPLE_RATE), int(0.5 * SAMPLE_RATE)
    y[:fade_in] *= np.linspace(0, 1, fade_in)
    y[-fade_out:] *= np.linspace(1, 0, fade_out)
    y *= _db(PEAK_DBFS) / np.max(np.abs(y))
    return y.astype(np.float32)


def write_track(spec: TrackSpec, seed: int, out_dir: str, percussion: bool = True) -> str:
    """Render ``spec`` (with or without drums, :func:`render_track`) and write it into ``out_dir``; returns the path."""
    import soundfile as sf

    y = render_track(spec, seed, percussion)
    ext, fmt, subtype = next(f for f in AUDIO_FORMATS if f[0] == spec.extension)
    path = os.path.join(out_dir, spec.filename)
    tmp = os.path.join(out_dir, f".{spec.track_id}.tmp.{ext}")
    if subtype == "VORBIS":
        data = _encode_lossy(y, fmt, subtype)
        with open(tmp, "wb") as f:
            f.write(data)
    else:
        sf.write(tmp, y, SAMPLE_RATE, format=fmt, subtype=subtype)
    os.replace(tmp, path)  # an interrupted run never leaves a truncated file under the final name
    return path


def _encode_lossy(y: np.ndarray, fmt: str, subtype: str) -> bytes:
    """Encode so that the *decoded* peak is at PEAK_DBFS.

    A lossy codec overshoots the input peak (by up to ~15 % on our noisy drums), which
    would clip on decode; the input is scaled down by the measured overshoot and
    re-encoded, deterministically.
    """
    import io

    import soundfile as sf

    target = _db(PEAK_DBFS)
    for _ in range(3):
        buf = io.BytesIO()
        sf.write(buf, y, SAMPLE_RATE, format=fmt, subtype=subtype)
        decoded, _ = sf.read(io.BytesIO(buf.getvalue()), dtype="float32")
        peak = float(np.max(np.abs(decoded)))
        if peak <= target * 1.02:
            break
        y = (y * (target / peak)).astype(np.float32)
    return buf.getvalue()


def _write_one(job: Tuple[TrackSpec, int, str, bool]) -> str:
    return write_track(*job)


# --------------------------------------------------------------------------- the collection


_OWN_FILE = re.compile(r"^(synth_\d{4}\.(wav|flac|ogg)|\.synth_\d{4}\.tmp\.(wav|flac|ogg)"
                       r"|manifest\.csv|synth\.json(\.tmp)?)$")


def prepare_output_dir(out_dir: str, overwrite: bool = False) -> str:
    """Create ``out_dir`` (or check an existing one) and make sure it can be written.

    With ``overwrite``, earlier synthesiser files (``synth_NNNN.*``, ``manifest.csv``,
    ``synth.json``) are removed so no stale track is left next to the new manifest;
    other files are kept.

    Raises:
        SynthError: the path is a file, cannot be created or written, or is a
            non-empty folder and ``overwrite`` is False.
    """
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise SynthError(f"output folder {out_dir} exists and is not a folder; give a new or empty folder.")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        if not overwrite:
            raise SynthError(f"output folder {out_dir} is not empty; give an empty or new folder, or pass --overwrite.")
        for name in os.listdir(out_dir):
            if _OWN_FILE.match(name):
                os.remove(os.path.join(out_dir, name))
    try:
        os.makedirs(out_dir, exist_ok=True)
        probe = os.path.join(out_dir, ".synth_write_test")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise SynthError(f"output folder {out_dir} cannot be created or written ({e.strerror or e}); "
                         "choose a writable location.") from e
    return out_dir


def default_jobs() -> int:
    """Worker processes by default: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def synthesize_collection(out_dir: str, n_tracks: int, seed: int, min_seconds: float = DEFAULT_MIN_SECONDS,
                          max_seconds: float = DEFAULT_MAX_SECONDS, jobs: Optional[int] = None,
                          overwrite: bool = False, progress: bool = True, percussion: bool = True) -> str:
    """Write a synthetic labelled collection, its manifest and ``synth.json``.

    Args:
        out_dir: folder for the audio files and ``manifest.csv``; created if missing,
            must be empty unless ``overwrite``.
        n_tracks: number of tracks, 1..9999.
        seed: non-negative integer; the same seed gives the same collection
            (identical manifest and decoded samples) for any ``jobs``.
        min_seconds, max_seconds: track length range in seconds (uniform).
        jobs: worker processes (default: all CPUs available to this process).
        overwrite: allow a non-empty ``out_dir`` (earlier synth files are replaced).
        progress: show a tqdm progress bar over tracks on stderr.
        percussion: False writes the drumless variant (module notes): the same manifest,
            the same tracks without drums.
    Returns:
        path of the manifest (docs/design.md, contract 1: path, track_id, genre, mood,
        instrument, tempo in BPM).
    Raises:
        SynthError: bad argument or unusable output folder.
    """
    from tqdm import tqdm

    from disentangled_ml.data.manifest import Track, write_manifest

    specs = draw_track_specs(n_tracks, seed, min_seconds, max_seconds)
    jobs = default_jobs() if jobs is None else jobs
    if isinstance(jobs, bool) or not isinstance(jobs, (int, np.integer)) or jobs < 1:
        raise SynthError(f"jobs must be a positive integer (worker processes), got {jobs!r}.")
    out_dir = prepare_output_dir(out_dir, overwrite)
    percussion = bool(percussion)
    work = [(s, int(seed), out_dir, percussion) for s in specs]
    bar = tqdm(total=len(work), desc="synth", unit="track", disable=not progress)
    try:
        if jobs == 1 or len(work) == 1:
            for w in work:
                _write_one(w)
                bar.update()
        else:
            import multiprocessing

            # spawn, not fork: the caller may have TensorFlow's threads running, and a
            # forked child of a multi-threaded process can deadlock.
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(min(jobs, len(work))) as pool:
                for _ in pool.imap_unordered(_write_one, work):
                    bar.update()
    finally:
        bar.close()
    tracks = [Track(path=os.path.join(out_dir, s.filename), track_id=s.track_id,
                    labels={"genre": (s.genre,), "mood": (s.mood,), "instrument": (s.instrument,)},
                    tempo=s.tempo) for s in specs]
    _write_info(out_dir, {"synth_version": SYNTH_VERSION, "seed": int(seed), "tracks": int(n_tracks),
                          "min_seconds": float(min_seconds), "max_seconds": float(max_seconds),
                          "sample_rate": SAMPLE_RATE, "percussion": percussion})
    manifest = os.path.join(out_dir, MANIFEST_NAME)
    write_manifest(tracks, manifest, tag_columns=("genre", "mood", "instrument"))
    return manifest


def _write_info(out_dir: str, info: Dict[str, object]) -> None:
    """``synth.json``: what made the collection. Its audio depends on all of it; its manifest on
    everything except ``synth_version`` and ``percussion``, so the manifest alone cannot tell a
    drumless collection from a drummed one."""
    import json

    path = os.path.join(out_dir, INFO_NAME)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def read_info(out_dir: str) -> Optional[Dict[str, object]]:
    """The ``synth.json`` of a collection folder, or None if it has none (made before it was written).

    Collections without it were drummed: ``percussion`` defaults to True.
    """
    import json

    path = os.path.join(out_dir, INFO_NAME)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        info = json.load(f)
    info.setdefault("percussion", True)
    return info


@functools.lru_cache(maxsize=1)
def _chord_recogniser():
    """madmom's CNN chord features + CRF, built once (it loads two networks)."""
    from madmom.features.chords import CNNChordFeatureProcessor, CRFChordRecognitionProcessor
    from madmom.processors import SequentialProcessor

    return SequentialProcessor([CNNChordFeatureProcessor(), CRFChordRecognitionProcessor()])


def mode_heard(y: np.ndarray, sample_rate: int) -> str:
    """The mode madmom's chord recogniser hears in ``y``: "major" or "minor".

    madmom's CNN chord features + CRF (Korzeniowski & Widmer 2016) label the audio as
    major/minor triads in 12 roots or no chord; the mode is whichever of major or minor
    chords lasts longer (no-chord segments are ignored). Used to check that the
    synthesiser's mode is audible (tests, ``benchmarks/synth_factors.py``).

    Args:
        y: float32 mono audio, shape [samples].
        sample_rate: of ``y``, in Hz.
    """
    from disentangled_ml.data.tempo import madmom_signal

    seconds = {"maj": 0.0, "min": 0.0}
    for begin, end, label in _chord_recogniser()(madmom_signal(y, sample_rate)):  # e.g. (0.0, 1.9, "A:min")
        quality = str(label).rpartition(":")[2]
        if quality in seconds:
            seconds[quality] += float(end - begin)
    return "major" if seconds["maj"] > seconds["min"] else "minor"


def label_table(specs: Sequence[TrackSpec]) -> Dict[str, List[str]]:
    """{factor: [label per track]} for genre, mood and instrument (for independence checks)."""
    return {f: [getattr(s, f) for s in specs] for f in ("genre", "mood", "instrument")}
