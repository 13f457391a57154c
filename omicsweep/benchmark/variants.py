"""`sweep --vary KEY=V1,V2,...`: every model of the sweep that knows KEY (as --set decides) is swept once per
value, each value its own (dataset, model) pair of the grid: its own searcher history, ASHA comparisons, trial
budget, seed re-runs and MLflow parent run (tagged with the variant); models that do not know KEY run once.

One --vary per sweep. The values parse like --set values (KEY=V is the variant's --set). The ablation
`--vary pretrained=RUN,none` gives the `none` variant of a model with a `backbone_from` setting the first
checkpoint value as its backbone_from (unless --set gives one), so both variants build the same network
(vocabulary and sizes), one from the pretrained weights, one from random ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omicsweep.errors import ConfigError
from omicsweep.schema import BACKBONE_FROM_PARAM, PRETRAINED_PARAM


@dataclass(frozen=True)
class Vary:
    key: str
    texts: tuple[str, ...]  # the values as given, each parsed like a --set value

    def label(self, text: str) -> str:
        return f"{self.key}={text}"


def _is_none(value: Any) -> bool:
    return value is None or str(value).strip().lower() in ("", "none", "null")


def parse_vary(text: str | None, settings: list[str]) -> Vary | None:
    """--vary KEY=V1,V2[,...] checked on its own: a key, at least one value, no value twice, KEY not also in --set."""
    from omicsweep.benchmark.space import parse_value

    if text is None:
        return None
    key, sep, values = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--vary {text!r}: expected KEY=V1,V2, e.g. --vary pretrained=RUN_ID,none")
    if key == "seed":
        raise ConfigError("--vary seed: seeds are --seed and the seed re-runs (--reruns)")
    texts = tuple(part.strip() for part in values.split(","))
    if not any(texts) or not all(texts):
        raise ConfigError(f"--vary {text!r}: an empty value; give the values comma-separated, e.g. {key}=A,B")
    parsed = [repr(parse_value(t)) for t in texts]
    twice = sorted({t for t, p in zip(texts, parsed) if parsed.count(p) > 1})
    if twice:
        raise ConfigError(f"--vary {key}: the value {twice[0]} is given twice; each value is one variant")
    if any(s.partition("=")[0].strip().rpartition(".")[2] == key for s in settings):  # KEY or MODEL.KEY
        raise ConfigError(f"--vary {key} and --set {key}: give the key in one of them (--set fixes it, --vary sweeps "
                          "each value)")
    return Vary(key, texts)


def varied_spaces(entries, spaces: dict, settings: list[str], vary: Vary | None, store) -> tuple[list, list[str]]:
    """(model, variant, prepared space) in the models' order, each model that knows the --vary key once per value;
    and the notes for the user."""
    from omicsweep.benchmark.space import knows, prepared_spaces, set_values

    spaces = set_values(entries, spaces, settings)
    if vary is None:
        prepared, notes = prepared_spaces(entries, spaces, store)
        return [(e.name, "", prepared[e.name]) for e in entries], notes
    knowing = [e for e in entries if knows(e, spaces[e.name], vary.key)]
    if not knowing:
        raise ConfigError(f"--vary {vary.key}: no model of this sweep ({', '.join(e.name for e in entries)}) has that "
                          "key")
    out, notes = [], []
    for entry in entries:
        if entry not in knowing:
            prepared, lines = prepared_spaces([entry], spaces, store)
            out.append((entry.name, "", prepared[entry.name]))
            notes += lines
            continue
        for text in vary.texts:
            space, lines = _variant_space(entry, spaces[entry.name], vary, text, store)
            out.append((entry.name, vary.label(text), space))
            notes += [line for line in lines if line not in notes]
    return out, notes


def _variant_space(entry, space, vary: Vary, text: str, store):
    """The model's space with KEY=text fixed (as --set would), then prepared; the ablation's backbone_from note."""
    from omicsweep.benchmark.space import parse_overrides, prepared_spaces, with_fixed
    from omicsweep.benchmark.training import config_keys

    pairs, notes = [vary.label(text)], []
    backbone = _backbone_for_none(entry, space, vary, text)
    if backbone is not None:
        pairs.append(f"{BACKBONE_FROM_PARAM}={backbone}")
        notes.append(f"--vary {vary.key}: {entry.name}'s {vary.label(text)} variant takes {BACKBONE_FROM_PARAM}="
                     f"{backbone}, the network of the pretrained variant from random weights")
    overrides = parse_overrides(pairs, space, shared_keys=config_keys(entry.family))
    prepared, lines = prepared_spaces([entry], {entry.name: with_fixed(space, overrides)}, store)
    return prepared[entry.name], notes + lines


def _backbone_for_none(entry, space, vary: Vary, text: str) -> str | None:
    """The first checkpoint value of --vary pretrained=..., for its `none` variant of a model that has a
    backbone_from setting left unset (not given by --set, not searched)."""
    from omicsweep.benchmark.space import knows, parse_value

    if vary.key != PRETRAINED_PARAM or not _is_none(parse_value(text)) or not knows(entry, space, BACKBONE_FROM_PARAM):
        return None
    if not _is_none(space.defaults.get(BACKBONE_FROM_PARAM)) or BACKBONE_FROM_PARAM in {d.name for d in space.dimensions}:
        return None
    checkpoints = [t for t in vary.texts if not _is_none(parse_value(t))]
    return checkpoints[0] if checkpoints else None
