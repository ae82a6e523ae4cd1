"""Regenerates the embedded speech corpus (w2v_jax/data/corpus/) with the espeak-ng synthesiser.

    apt-get install -y espeak-ng libespeak-ng-dev      # only needed to regenerate
    python -m tools.make_tts_corpus [--out w2v_jax/data/corpus] [--minutes 15.25] [--max_bytes 10000000]

Each bundled sentence (five languages) is spoken by up to three voice variants with their own rate and pitch,
through libespeak-ng's C API (ctypes), resampled to 16 kHz and stored as FLAC. Two sentences per
language are held out: all their renderings form the valid split. espeak-ng reports every phoneme
with the output sample where it starts (espeakEVENT_PHONEME, IPA names): metadata.jsonl keeps them,
and the words, as 16 kHz sample spans for probing learned representations.

Size: the audio must fit --max_bytes with at least --minutes of speech. Utterances are taken round-robin over
languages until --minutes is reached, then the highest sample precision (16 bits down) whose FLAC files fit the
budget is chosen: fewer minutes first, lower precision only when even that won't fit.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import soundfile
import soxr
from absl import app, flags

from w2v_jax.cli.launching import launch
from w2v_jax.data import CORPUS_DIR, SAMPLE_RATE, write_manifest

# espeak-ng's C API (speak_lib.h)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_INITIALIZE_PHONEME_IPA = 0x0002
_CHARS_UTF8 = 1
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_EVENT_PHONEME = 7
_PARAM_RATE = 1
_PARAM_PITCH = 3

VOICES = {"en": ("en-us", "en"), "fr": ("fr",), "de": ("de",), "es": ("es",), "it": ("it",)}
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2")
RENDERINGS_PER_SENTENCE = 3
VALID_SENTENCES_PER_LANGUAGE = 2

SENTENCES = {
    "en": [
        "The old lighthouse keeper climbed the narrow stairs every evening to light the lamp "
        "before the ships came home.",
        "Fresh bread from the corner bakery smells wonderful on cold winter mornings when the streets are still empty.",
        "My neighbour grows tomatoes, beans and tall yellow sunflowers in the small garden behind her house.",
        "The train to the coast was delayed for an hour because a fallen tree blocked the line near the river.",
        "Children in the village learn to swim in the lake during the long and warm summer holidays.",
        "He forgot his umbrella at the office, so he walked home through the heavy rain and arrived soaking wet.",
        "The museum opened a new exhibition about ancient maps, compasses and the sailors who used them.",
        "Please remember to switch off the lights and lock the back door before you leave the building tonight.",
        "A group of students built a small robot that can sort coloured bricks into different boxes.",
        "The mountain road twists through dark forests and opens suddenly onto a wide valley full of farms.",
        "Our grandmother tells the same funny story about her first bicycle every time the family meets.",
        "The library stays open late on Thursdays, and many people come to read the newspapers in the quiet hall.",
        "Heavy clouds gathered over the harbour, and the fishermen pulled their boats high onto the sand.",
        "She practised the piano for two hours each day until she could play the whole sonata without mistakes.",
        "The market sells cheese, honey, apples and warm soup from large pots on every Saturday morning.",
        "After the long meeting, the engineers agreed to test the new bridge design with a smaller model first.",
        "A curious fox crossed the empty field at dawn and disappeared into the hedge without a sound.",
        "The orchestra tuned their instruments while the audience slowly found their seats in the old theatre.",
    ],
    "fr": [
        "Le boulanger du quartier ouvre sa boutique très tôt le matin pour préparer les croissants et le pain frais.",
        "Nous avons pris le train de nuit pour traverser le pays et nous sommes arrivés au bord de la mer à l'aube.",
        "La vieille horloge de la place sonne chaque heure depuis plus de deux siècles sans jamais s'arrêter.",
        "Les enfants jouent dans le parc après l'école pendant que leurs parents discutent sur les bancs.",
        "Il a oublié ses clés dans la voiture et il a dû attendre son frère pendant une heure sous la pluie.",
        "Le marché du samedi propose des fromages, des fruits de saison et des fleurs de toutes les couleurs.",
        "Ma sœur apprend à jouer de la guitare et elle répète ses chansons préférées tous les soirs.",
        "La bibliothèque municipale organise des lectures pour les enfants chaque mercredi après-midi.",
        "Un petit bateau de pêche est rentré au port juste avant que la tempête ne commence.",
        "Le chemin monte doucement à travers la forêt jusqu'à un lac calme entouré de montagnes.",
        "Les voisins ont organisé une grande fête dans la rue pour célébrer le début de l'été.",
        "Mon grand-père raconte souvent comment il construisait des cabanes dans les arbres quand il était jeune.",
        "Le musée présente une nouvelle exposition sur les instruments de musique anciens et leur histoire.",
        "Nous avons cuisiné une soupe de légumes avec les carottes et les poireaux du jardin.",
        "La lumière du soir colore les toits de la ville en orange et en rose pendant quelques minutes.",
        "Les étudiants préparent leurs examens à la bibliothèque jusqu'à la fermeture des portes.",
        "Un chat gris dort tranquillement sur le rebord de la fenêtre au soleil de l'après-midi.",
        "Le facteur passe tous les jours vers midi avec son vélo jaune et sa grande sacoche.",
    ],
    "de": [
        "Der Bäcker an der Ecke backt jeden Morgen frische Brötchen, bevor die ersten Kunden kommen.",
        "Im Sommer fahren wir mit dem Fahrrad am Fluss entlang bis zu dem kleinen Dorf in den Hügeln.",
        "Die alte Brücke über den Kanal wurde im letzten Jahr sorgfältig repariert und neu gestrichen.",
        "Meine Großmutter kocht sonntags eine Suppe mit Kartoffeln, Karotten und frischen Kräutern.",
        "Der Zug nach Hamburg hatte wegen eines Sturms fast zwei Stunden Verspätung.",
        "Auf dem Wochenmarkt gibt es Käse, Honig, Äpfel und frisch gepressten Saft aus der Region.",
        "Die Kinder bauen am Strand eine große Sandburg mit Türmen, Mauern und einem tiefen Graben.",
        "Nach dem langen Winter blühen im Garten endlich wieder die ersten gelben Blumen.",
        "Mein Bruder lernt seit drei Jahren Geige und spielt heute Abend zum ersten Mal im Konzert.",
        "Die Bibliothek der Stadt hat einen ruhigen Lesesaal mit hohen Fenstern und alten Holztischen.",
        "Ein Fischerboot kehrte kurz vor dem Gewitter in den sicheren Hafen zurück.",
        "Der Weg durch den Wald führt an einem kleinen See vorbei, an dem oft Rehe trinken.",
        "Wir haben am Wochenende die Wohnung gestrichen und neue Regale an die Wand gehängt.",
        "Das Museum zeigt eine Ausstellung über alte Landkarten und die Geschichte der Seefahrt.",
        "Die Nachbarn feiern jedes Jahr im August ein Straßenfest mit Musik und Kuchen.",
        "In der Werkstatt repariert der Meister Uhren, Radios und manchmal sogar alte Nähmaschinen.",
        "Am Abend leuchten die Dächer der Altstadt im warmen Licht der untergehenden Sonne.",
        "Der Briefträger bringt die Post jeden Tag gegen Mittag mit seinem gelben Fahrrad.",
    ],
    "es": [
        "El panadero del barrio abre su tienda muy temprano para preparar el pan y los bollos del día.",
        "En verano viajamos en tren hasta la costa y pasamos las tardes paseando junto al mar.",
        "La vieja plaza del pueblo tiene una fuente de piedra y muchos árboles que dan sombra.",
        "Mi abuela cocina una sopa de verduras con patatas, zanahorias y un poco de arroz.",
        "Los niños juegan al fútbol en el parque hasta que empieza a hacerse de noche.",
        "El mercado de los sábados vende queso, miel, naranjas y flores de muchos colores.",
        "Mi hermano estudia música y toca la guitarra todas las noches en su habitación.",
        "La biblioteca municipal organiza lecturas de cuentos para los niños cada miércoles.",
        "Un pequeño barco de pesca volvió al puerto justo antes de que empezara la tormenta.",
        "El camino sube por el bosque hasta un lago tranquilo rodeado de altas montañas.",
        "Los vecinos preparan una gran fiesta en la calle para celebrar el comienzo del verano.",
        "Mi abuelo cuenta a menudo cómo construía cabañas en los árboles cuando era joven.",
        "El museo presenta una nueva exposición sobre instrumentos musicales antiguos.",
        "Por la tarde, la luz del sol pinta de naranja los tejados de la ciudad antigua.",
        "Los estudiantes preparan sus exámenes en la biblioteca hasta que cierran las puertas.",
        "Un gato gris duerme tranquilamente en la ventana bajo el sol de la tarde.",
        "El cartero pasa todos los días a mediodía con su bicicleta amarilla y su gran bolsa.",
        "Después de la reunión, los ingenieros decidieron probar primero el puente con un modelo pequeño.",
    ],
    "it": [
        "Il fornaio del quartiere apre il negozio molto presto per preparare il pane e i cornetti caldi.",
        "D'estate prendiamo il treno fino al mare e passiamo le serate a passeggiare sulla spiaggia.",
        "La vecchia piazza del paese ha una fontana di pietra e molti alberi che fanno ombra.",
        "Mia nonna prepara una minestra di verdure con patate, carote e un po' di pasta.",
        "I bambini giocano a pallone nel parco fino a quando comincia a fare buio.",
        "Il mercato del sabato vende formaggi, miele, arance e fiori di tanti colori.",
        "Mio fratello studia musica e suona la chitarra ogni sera nella sua stanza.",
        "La biblioteca comunale organizza letture di fiabe per i bambini ogni mercoledì.",
        "Una piccola barca da pesca è rientrata in porto poco prima dell'inizio del temporale.",
        "Il sentiero sale attraverso il bosco fino a un lago tranquillo circondato dalle montagne.",
        "I vicini organizzano una grande festa in strada per celebrare l'inizio dell'estate.",
        "Mio nonno racconta spesso come costruiva capanne sugli alberi quando era giovane.",
        "Il museo presenta una nuova mostra sugli strumenti musicali antichi e sulla loro storia.",
        "La sera la luce del sole colora di arancione i tetti della città vecchia.",
        "Gli studenti preparano gli esami in biblioteca fino all'orario di chiusura.",
        "Un gatto grigio dorme tranquillo sul davanzale della finestra al sole del pomeriggio.",
        "Il postino passa ogni giorno verso mezzogiorno con la sua bicicletta gialla.",
        "Dopo la lunga riunione, gli ingegneri hanno deciso di provare prima il ponte con un modello piccolo.",
    ],
}


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


class Espeak:
    """libespeak-ng in synchronous mode: synthesize() returns the waveform and its events."""

    def __init__(self):
        name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
        try:
            self._lib = ctypes.CDLL(name)
        except OSError as error:
            raise RuntimeError("libespeak-ng not found: apt-get install -y espeak-ng libespeak-ng-dev") from error
        self.sample_rate = self._lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, None, _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_PHONEME_IPA
        )
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({self.sample_rate})")
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, int, int, str]] = []
        self._callback = _SynthCallback(self._on_audio)  # kept referenced: C holds the pointer
        self._lib.espeak_SetSynthCallback(self._callback)

    def _on_audio(self, wav, num_samples, events) -> int:
        if num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, (num_samples,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            event = events[i]
            if event.type == _EVENT_PHONEME:
                self._events.append((event.type, event.sample, 0, bytes(event.id.string).split(b"\0")[0].decode()))
            elif event.type == _EVENT_WORD:
                self._events.append((event.type, event.sample, event.text_position, str(event.length)))
            i += 1
        return 0

    def synthesize(self, text: str, voice: str, rate: int, pitch: int):
        """Returns (int16 [samples] at self.sample_rate, events (type, sample, text_position, name))."""
        for call, args in (
            ("espeak_SetVoiceByName", (voice.encode(),)),
            ("espeak_SetParameter", (_PARAM_RATE, rate, 0)),
            ("espeak_SetParameter", (_PARAM_PITCH, pitch, 0)),
        ):
            if getattr(self._lib, call)(*args) != 0:
                raise RuntimeError(f"{call}{args} failed (unknown voice?)")
        self._chunks, self._events = [], []
        encoded = text.encode("utf-8") + b"\0"
        if self._lib.espeak_Synth(encoded, len(encoded), 0, 0, 0, _CHARS_UTF8, None, None) != 0:
            raise RuntimeError(f"espeak_Synth failed for {text!r}")
        return np.concatenate(self._chunks), self._events


def _alignments(events, text: str, source_rate: int, num_samples: int) -> dict:
    """Phoneme and word spans in 16 kHz samples; a phoneme ends where the next one starts.

    espeak's text_position is 1-based in characters. Pauses (empty names) are labelled "_";
    language-switch markers such as "(en)" are not sounds and are dropped.
    """

    def to_16k(sample: int) -> int:
        return min(num_samples, int(round(sample * SAMPLE_RATE / source_rate)))

    phonemes = [
        (to_16k(s), name or "_") for kind, s, _, name in events if kind == _EVENT_PHONEME and not name.startswith("(")
    ]
    starts = np.maximum.accumulate([s for s, _ in phonemes])  # guard against rare out-of-order events
    ends = np.append(starts[1:], num_samples)
    words = [
        (to_16k(s), text[pos - 1 : pos - 1 + int(length)])
        for kind, s, pos, length in events
        if kind == _EVENT_WORD and int(length) > 0
    ]
    word_starts = [s for s, _ in words]
    return {
        "phonemes": [name for _, name in phonemes],
        "phoneme_starts": starts.tolist(),
        "phoneme_ends": ends.tolist(),
        "words": [w for _, w in words],
        "word_starts": word_starts,
        "word_ends": word_starts[1:] + [num_samples],
    }


def _quantize(samples: np.ndarray, bits: int) -> np.ndarray:
    """Rounds to ``bits`` of precision (no dither: espeak's digital silence stays exactly zero)."""
    scale = 2.0 ** (bits - 1)
    return np.clip(np.round(samples * scale), -scale, scale - 1) / scale


def _flac_bytes(samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, SAMPLE_RATE, format="FLAC", subtype="PCM_16", compression_level=1.0)
    return buffer.getvalue()


def synthesize_corpus(minutes: float, seed: int) -> list[dict]:
    """Utterances (float32 16 kHz audio + metadata), round-robin over languages until ``minutes``."""
    espeak = Espeak()
    rng = np.random.default_rng(seed)
    per_language = []
    for language, sentences in SENTENCES.items():
        items = []
        for number, text in enumerate(sentences):
            split = "valid" if number < VALID_SENTENCES_PER_LANGUAGE else "train"
            variants = rng.choice(VARIANTS, RENDERINGS_PER_SENTENCE, replace=False)
            for take, variant in enumerate(variants):
                voice = f"{VOICES[language][(number + take) % len(VOICES[language])]}+{variant}"
                items.append(
                    dict(
                        id=f"{language}_{number:02d}_{take}",
                        language=language,
                        split=split,
                        text=text,
                        voice=voice,
                        rate=int(rng.integers(140, 191)),
                        pitch=int(rng.integers(30, 71)),
                    )
                )
        # Valid first, then the train sentences' first renderings before their extra ones, so a
        # shorter target drops extra voices rather than whole sentences.
        items.sort(key=lambda x: (x["split"] != "valid", int(x["id"][-1]), x["id"]))
        per_language.append(items)
    utterances, total = [], 0.0
    # Round-robin so a shorter target keeps every language; valid items come first in each language.
    for item in (x for group in zip(*per_language) for x in group):
        if total >= minutes * 60:
            break
        raw, events = espeak.synthesize(item["text"], item["voice"], item["rate"], item["pitch"])
        samples = soxr.resample(raw.astype(np.float32) / 32768.0, espeak.sample_rate, SAMPLE_RATE, quality="HQ")
        samples = np.clip(samples, -1.0, 1.0)
        item.update(_alignments(events, item["text"], espeak.sample_rate, len(samples)))
        item["num_samples"] = len(samples)
        item["audio"] = samples
        utterances.append(item)
        total += len(samples) / SAMPLE_RATE
    return utterances


def write_corpus(utterances: list[dict], out: Path, max_bytes: int) -> dict:
    """Writes FLACs at the highest precision that fits ``max_bytes``, manifests and metadata.jsonl."""
    metadata_lines, manifests = [], {"train": ([], []), "valid": ([], [])}
    for item in utterances:
        item["path"] = f"audio/{item['language']}/{item['id']}.flac"
        manifests[item["split"]][0].append(item["path"])
        manifests[item["split"]][1].append(item["num_samples"])
        record = {k: v for k, v in item.items() if k != "audio"}
        record["sample_rate"] = SAMPLE_RATE
        metadata_lines.append(json.dumps(record, ensure_ascii=False, separators=(",", ":")))
    metadata = ("\n".join(metadata_lines) + "\n").encode("utf-8")
    for bits in range(16, 7, -1):
        encoded = [_flac_bytes(_quantize(item["audio"], bits)) for item in utterances]
        audio_bytes = sum(len(e) for e in encoded)
        if audio_bytes + len(metadata) + 20_000 <= max_bytes:  # 20 kB: manifests and README
            break
    else:
        raise RuntimeError(f"even 8-bit FLAC needs {audio_bytes} bytes > {max_bytes}: lower --minutes")
    if out.exists():
        shutil.rmtree(out)
    for item, data in zip(utterances, encoded):
        (out / item["path"]).parent.mkdir(parents=True, exist_ok=True)
        (out / item["path"]).write_bytes(data)
    (out / "metadata.jsonl").write_bytes(metadata)
    for split, (paths, lengths) in manifests.items():
        write_manifest(out / f"{split}.tsv", ".", paths, lengths)
    seconds = {s: sum(u["num_samples"] for u in utterances if u["split"] == s) / SAMPLE_RATE for s in manifests}
    stats = {
        "bits": bits,
        "audio_bytes": audio_bytes,
        "metadata_bytes": len(metadata),
        "utterances": {s: len(manifests[s][0]) for s in manifests},
        "seconds": seconds,
    }
    (out / "README.md").write_text(
        "# Embedded speech corpus\n\n"
        "Synthetic speech from espeak-ng (regenerate with `python -m tools.make_tts_corpus`): "
        f"{len(utterances)} utterances in {', '.join(SENTENCES)}, 16 kHz mono FLAC at {bits}-bit precision, "
        f"{seconds['train'] / 60:.1f} min train / {seconds['valid'] / 60:.1f} min valid (held-out sentences).\n\n"
        "- `train.tsv`, `valid.tsv`: fairseq manifests, root `.` = this folder.\n"
        "- `metadata.jsonl`: per utterance id, path, split, text, language, voice (espeak voice+variant), rate, "
        "pitch, num_samples, and espeak-ng's phoneme (IPA; `_` = pause) and word alignments as 16 kHz sample "
        "spans `*_starts`/`*_ends`.\n",
        encoding="utf-8",
    )
    return stats


def define_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> SimpleNamespace:
    """The tool's flags on `flag_values` (`argv` is unused: no config flag)."""
    del argv
    fv = flag_values
    return SimpleNamespace(
        out=flags.DEFINE_string("out", str(CORPUS_DIR), "The corpus folder to (re)write.", flag_values=fv),
        minutes=flags.DEFINE_float("minutes", 15.25, "Minimum minutes of audio.", flag_values=fv),
        max_bytes=flags.DEFINE_integer("max_bytes", 10_000_000, "Budget for the whole folder.", flag_values=fv),
        seed=flags.DEFINE_integer("seed", 0, "Voices, rates and pitches.", flag_values=fv),
    )


def main(argv: list[str], args: SimpleNamespace) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    out = Path(args.out.value)
    utterances = synthesize_corpus(args.minutes.value, args.seed.value)
    total = sum(u["num_samples"] for u in utterances) / SAMPLE_RATE
    if total < args.minutes.value * 60:
        raise SystemExit(
            f"only {total / 60:.1f} min from the bundled sentences, fewer than --minutes {args.minutes.value}"
        )
    stats = write_corpus(utterances, out, args.max_bytes.value)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(json.dumps({**stats, "total_bytes_on_disk": size, "minutes": total / 60}, indent=1))


def run() -> None:
    """`python -m tools.make_tts_corpus`."""
    launch(main, define_flags)


if __name__ == "__main__":
    run()
