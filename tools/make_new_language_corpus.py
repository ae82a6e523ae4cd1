"""Generates speech of a language the embedded corpus lacks (Dutch) for the continued-pretraining
experiment in miniature (docs/continued_pretraining.md), with espeak-ng as the embedded corpus is made.

    apt-get install -y espeak-ng libespeak-ng-dev
    python -m tools.make_new_language_corpus --out /tmp/dutch

Three disjoint sets of the sentences below, each spoken by several espeak-ng voice variants with
their own rate and pitch (`tools.make_tts_corpus.Espeak`), 16 kHz FLAC:
- `unlabelled.tsv`: speech for continued pretraining (no transcripts);
- `labelled.tsv` + `labelled.wrd`: a few minutes of transcribed speech for fine-tuning;
- `heldout.tsv` + `heldout.wrd`: held-out sentences (never in the other two sets) for the error rates.
The sentences use the letters a-z alone, so every held-out letter is in the labelled set's vocabulary.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import soundfile
import soxr
from absl import app, flags

from tools.make_tts_corpus import VARIANTS, Espeak
from w2v_jax.cli.launching import launch
from w2v_jax.data import SAMPLE_RATE, write_manifest

VOICE = "nl"
SENTENCES = (
    "de oude molen aan de rivier draait alleen nog op zondag voor de toeristen",
    "mijn buurman fietst elke ochtend door de regen naar zijn werk in de stad",
    "in de winter schaatsen de kinderen op het bevroren water achter de boerderij",
    "de bakker verkoopt vers brood en warme broodjes vanaf zes uur in de ochtend",
    "we hebben de trein naar de kust gemist en moesten een uur op het perron wachten",
    "de bibliotheek is op donderdag tot laat open en veel mensen lezen daar de kranten",
    "haar grootmoeder vertelt altijd hetzelfde verhaal over haar eerste fiets",
    "de vissers trokken hun boten hoog op het strand toen de storm begon",
    "op de markt kun je kaas kopen en appels en bloemen in alle kleuren",
    "het museum heeft een nieuwe tentoonstelling over oude kaarten en schepen",
    "na de lange vergadering besloten de ingenieurs eerst een klein model te bouwen",
    "de kat sliep de hele middag in de zon op de vensterbank van de keuken",
    "een nieuwsgierige vos liep bij zonsopgang over het lege veld naar het bos",
    "het orkest stemde de instrumenten terwijl het publiek langzaam binnenkwam",
    "we wandelden langs de grachten en dronken koffie op een terras aan het water",
    "de leraar schreef de sommen op het bord en de leerlingen maakten aantekeningen",
    "in het voorjaar bloeien de tulpen in lange rijen op de velden bij de zee",
    "hij vergat zijn paraplu op kantoor en kwam drijfnat thuis na de wandeling",
    "de dokter zei dat ik meer water moest drinken en vroeger naar bed moest gaan",
    "zij oefende elke dag twee uur piano tot zij het hele stuk zonder fouten speelde",
    "de bus naar het station rijdt om het kwartier behalve op zondag en feestdagen",
    "mijn zus heeft een kleine tuin met bonen en tomaten en hoge zonnebloemen",
    "de studenten bouwden een robot die gekleurde blokken in verschillende dozen legt",
    "de weg door de heuvels is smal en loopt langs boerderijen en oude kerken",
    "vergeet niet het licht uit te doen en de achterdeur op slot te draaien",
    "de postbode bracht een groot pakket met boeken en een brief van mijn oom",
    "in de haven liggen schepen uit alle landen van de wereld aan de kade",
    "de kinderen bouwden een zandkasteel met torens en een diepe gracht eromheen",
    "het regende de hele week maar zaterdag scheen eindelijk weer de zon",
    "de kok snijdt de groenten in kleine stukjes en doet ze in een grote pan",
    "wij gaan morgen met de boot naar het eiland om daar vogels te kijken",
    "de klok op het plein slaat elk uur al meer dan tweehonderd jaar lang",
    "mijn vader repareert oude radios in de schuur achter ons huis",
    "de boer melkt de koeien twee keer per dag en brengt de melk naar de fabriek",
    "in de avond zitten de buren buiten en praten over het weer en de oogst",
    "de winkel op de hoek verkoopt kranten en snoep en kaarten voor verjaardagen",
)
# (set, first sentence, end, renderings per sentence): unlabelled speech, a few labelled minutes and
# held-out sentences, disjoint.
SETS = (("heldout", 0, 6, 3), ("labelled", 6, 14, 4), ("unlabelled", 14, len(SENTENCES), 8))


def synthesize(out: Path, seed: int) -> dict[str, float]:
    """Writes the three sets under `out`; returns each set's minutes of speech."""
    espeak = Espeak()
    rng = np.random.default_rng(seed)
    if out.exists():
        shutil.rmtree(out)
    minutes = {}
    for name, start, end, renderings in SETS:
        paths, lengths, texts = [], [], []
        for number in range(start, end):
            for take, variant in enumerate(rng.choice(VARIANTS, renderings, replace=False)):
                rate, pitch = int(rng.integers(140, 191)), int(rng.integers(30, 71))
                raw, _ = espeak.synthesize(SENTENCES[number], f"{VOICE}+{variant}", rate, pitch)
                samples = soxr.resample(raw.astype(np.float32) / 32768.0, espeak.sample_rate, SAMPLE_RATE, quality="HQ")
                path = f"audio/{name}/{number:02d}_{take}.flac"
                (out / path).parent.mkdir(parents=True, exist_ok=True)
                soundfile.write(out / path, np.clip(samples, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16")
                paths.append(path)
                lengths.append(len(samples))
                texts.append(SENTENCES[number])
        write_manifest(out / f"{name}.tsv", ".", paths, lengths)
        if name != "unlabelled":
            (out / f"{name}.wrd").write_text("\n".join(texts) + "\n", encoding="utf-8")
        minutes[name] = sum(lengths) / SAMPLE_RATE / 60
    return minutes


def define_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> SimpleNamespace:
    """The tool's flags on `flag_values` (`argv` is unused: no config flag)."""
    del argv
    fv = flag_values
    return SimpleNamespace(
        out=flags.DEFINE_string("out", "/tmp/dutch", "The folder to (re)write.", flag_values=fv),
        seed=flags.DEFINE_integer("seed", 0, "Voices, rates and pitches.", flag_values=fv),
    )


def main(argv: list[str], args: SimpleNamespace) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    minutes = synthesize(Path(args.out.value), args.seed.value)
    print(", ".join(f"{name}: {value:.1f} min" for name, value in minutes.items()))


def run() -> None:
    """`python -m tools.make_new_language_corpus`."""
    launch(main, define_flags)


if __name__ == "__main__":
    run()
