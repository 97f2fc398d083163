"""`ponderscope results`: the results table, generated from the checkpoints' cards (never typed)."""
from __future__ import annotations

import json
from pathlib import Path

from ponderscope.paths import CHECKOUT, bundled_checkpoints
from ponderscope.readme import replace_section

from ponderscope.models.checkpoint import CARD_FILE, read_card


def _fmt(value, spec: str = ".4f") -> str:
    return "–" if value is None else format(value, spec)


CHAR_CLASS_LABELS = {"space": "space", "punctuation": "punct.", "word_start": "word start", "letter_after_space": "word start", "letter": "letter",
                     "digit": "digit", "newline": "line break", "other": "other"}
# The settings that the experiments vary, shown beside their results.
VARIED = (("adaptive", "tau"), ("adaptive", "prior"), ("model_kwargs", "readout"), ("model_kwargs", "max_steps"), ("model_kwargs", "halting_bias"), ("steps",), ("schedule",), ("tau_warmup_steps",), ("seed",))


def _no_remainder(classes: dict) -> bool:
    """N + R = N in every class: N counts the layers a byte went through (a router's), not ACT steps."""
    return all(c["ponder"] == c["steps"] for c in classes.values())


def _row(name: str, card: dict) -> str:
    test = card.get("metrics", {}).get("test", {})
    if "accuracy" in test:
        score = f"{100 * test['accuracy']:.2f}% acc"
    elif "bits_per_byte" in test:
        score = f"{test['bits_per_byte']:.3f} bits/byte"
    else:
        score = "not evaluated"
    extra = []
    if "ponder_box_ratio" in test:
        extra.append(f"ponder in/out of digit box {test['ponder_box_ratio']:.2f}")
    if "max_class_rate_span" in test:
        extra.append(f"max per-class rate span {test['max_class_rate_span']:.2f} (layer {test['max_class_rate_span_layer']})")
    if "per_block_units" in test:
        extra.append("units/block " + " / ".join(f"{u:.2f}" for u in test["per_block_units"]))
    if test.get("exit_rates"):
        extra.append("left at each exit " + " / ".join(f"{100 * r:.1f}%" for r in test["exit_rates"])
                     + " (right there " + " / ".join("–" if a is None else f"{100 * a:.1f}%" for a in test.get("exit_accuracy", [])) + ")")
    if card.get("calibration", {}).get("threshold") is not None:
        c = card["calibration"]
        extra.append(f"threshold {c['threshold']:.3f} chosen on {c['examples']} held-out training images for <= {c['flops_budget']} of the FLOPs")
    varies = test.get("mean_steps") != 1.0 and test.get("steps_off_mode_fraction") != 0  # a dense twin's N is its depth everywhere
    if "mean_steps" in test and varies:
        extra.append(f"mean steps N {test['mean_steps']:.3f}")
    if "ponder_by_nonzero" in test and test.get("mean_steps") != 1.0:
        curve = test["ponder_by_nonzero"]
        low, high = min(curve, key=int), max(curve, key=int)
        extra.append(f"ponder {curve[low]:.2f} with {low} non-zero {'entry' if low == '1' else 'entries'}, {curve[high]:.2f} with {high}")
    if "per_char_class" in test and varies:
        classes = {name: c for name, c in test["per_char_class"].items() if name in CHAR_CLASS_LABELS}
        if _no_remainder(classes):
            extra.append("layers per byte by input byte: " + ", ".join(f"{CHAR_CLASS_LABELS[name]} {c['steps']:.2f}" for name, c in classes.items()))
        else:
            extra.append("N / N+R by input byte: " + ", ".join(
                f"{CHAR_CLASS_LABELS[name]} {c['steps']:.2f} / {c['ponder']:.2f}" for name, c in classes.items()))
    ponder = test.get("mean_ponder")
    flops = test.get("flops_ratio")
    return (
        f"| `{name}` | `{card['model']}` | {card.get('dataset')} | {score} | {_fmt(ponder, '.3f')} | "
        f"{'–' if flops is None else f'{100 * flops:.1f}%'} | {card.get('training_time_s', 0) / 60:.1f} min on {card.get('trained_on', '?')} | "
        f"{'; '.join(extra) or '–'} | `{card.get('train_command', '')}` |"
    )


def _settings(card: dict) -> str:
    values = []
    for path in VARIED:
        value = card.get("config", {})
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None and not (path == ("tau_warmup_steps",) and value == 0):
            values.append(f"{path[-1]}={value}")
    return " ".join(values)


def _experiment_rows(folder: Path) -> list[str]:
    """Runs that were tried and not bundled: docs/experiments/NAME.card.json (and NAME.train.log)."""
    rows = []
    for path in sorted(folder.glob("*.card.json")):
        card = json.loads(path.read_text(encoding="utf-8"))
        row, command = _row(path.name.removesuffix(".card.json"), card).rsplit(" | `", 1)
        rows.append(f"{row} | {_settings(card)} | `{command}")
    return rows


# docs/ is a checkout's: an installed ponderscope has none (its `ponderscope results` needs --out).
BUNDLED = bundled_checkpoints()
RESULTS, EXPERIMENTS = (CHECKOUT / "docs" / "results.md", CHECKOUT / "docs" / "experiments") if CHECKOUT is not None else (None, None)


def _char_class_tables(named_cards: list[tuple[str, dict]]) -> list[str]:
    """Per byte LM with ACT: the held-out per-class table (mean +- std of N and N + R, bits) and
    the shares and correlations the issue of the Text view asks for."""
    from ponderscope.core.workloads import CHAR_CLASS_LABELS as LABELS, CHAR_CLASSES

    lines = []
    for name, card in named_cards:
        test = card.get("metrics", {}).get("test", {})
        classes = test.get("per_char_class")
        if not classes or test.get("mean_steps") == 1.0 or "steps_std" not in next(iter(classes.values())):
            continue
        if test.get("layer_rates") and _no_remainder(classes):
            continue  # the layer table shows those layers one by one
        lines += [f"### `{name}` on {test.get('bytes')} held-out bytes of {card.get('dataset')}", ""]
        facts = [f"bits per byte {test['bits_per_byte']:.3f}", f"mean N {test['mean_steps']:.3f}"]
        if test.get("steps_off_mode_fraction") is not None:
            facts.append(f"N differs from its most common value ({test['steps_mode']}) on {100 * test['steps_off_mode_fraction']:.1f}% of bytes")
        if test.get("steps_at_cap_fraction") is not None:
            facts.append(f"N at the cap M = {test['max_steps']} on {100 * test['steps_at_cap_fraction']:.1f}%")
        if test.get("corr_ponder_surprisal") is not None or test.get("corr_steps_surprisal") is not None:
            facts.append(f"correlation with the next byte's loss: of N+R {_fmt(test.get('corr_ponder_surprisal'), '.3f')}, "
                         f"of N {_fmt(test.get('corr_steps_surprisal'), '.3f')}")
        lines += ["; ".join(facts) + ".", "",
                  "| class of the byte read | bytes | N mean ± std | N+R mean ± std | bits of the next byte |", "|---|---|---|---|---|"]
        for key in [k for k in CHAR_CLASSES if k in classes]:
            c = classes[key]
            lines.append(f"| {LABELS[key]} | {c['count']} | {c['steps']:.3f} ± {c['steps_std']:.3f} | {c['ponder']:.3f} ± {c['ponder_std']:.3f} | {c['bits']:.3f} |")
        lines.append("")
    return (["## Byte language models: where they ponder", "",
             "Per class of the byte being read (Graves 2016's Wikipedia analysis): space, punctuation, the",
             "first letter of a word, other letters, digits, markup / other. ± is the standard deviation over",
             "the held-out bytes of the class.", "", *lines] if lines else [])


def _layer_rate_tables(named_cards: list[tuple[str, dict]]) -> list[str]:
    """Per byte LM whose trace says which layers computed each byte (Trace.token_layers): the
    share of each class's held-out bytes that each layer computed, for the layers that do not
    compute every byte (a Mixture-of-Depths model's routed layers, a Universal Transformer's
    steps after the first)."""
    from ponderscope.core.workloads import CHAR_CLASS_LABELS as LABELS, CHAR_CLASSES

    lines = []
    for name, card in named_cards:
        test = card.get("metrics", {}).get("test", {})
        classes, names, rates = test.get("per_char_class") or {}, test.get("layer_names"), test.get("layer_rates")
        if not names or not rates or not all("layers" in c for c in classes.values()):
            continue
        shown = [i for i, rate in enumerate(rates) if rate < 1.0]
        if not shown:
            continue
        flops = f" FLOPs {100 * test['flops_ratio']:.1f}% of its dense twin's." if test.get("flops_ratio") is not None else ""
        lines += [f"### `{name}`: the share of each class's bytes that each layer computed", "",
                  f"On {test.get('bytes')} held-out bytes of {card.get('dataset')}; the layers not listed computed every byte.{flops}", "",
                  "| class of the byte read | bytes | " + " | ".join(names[i] for i in shown) + " |",
                  "|---|---|" + "---|" * len(shown),
                  "| all | " + str(test.get("bytes")) + " | " + " | ".join(f"{100 * rates[i]:.1f}%" for i in shown) + " |"]
        for key in [k for k in CHAR_CLASSES if k in classes]:
            c = classes[key]
            lines.append(f"| {LABELS[key]} | {c['count']} | " + " | ".join(f"{100 * c['layers'][i]:.1f}%" for i in shown) + " |")
        lines.append("")
    return (["## Byte language models: which layers computed which bytes", "", *lines] if lines else [])


def write_results(checkpoint_dirs: list[str] | None = None, out: str | None = None, experiments: Path | None = EXPERIMENTS) -> str:
    """Write the table of `checkpoint_dirs` (default: the bundled ones) and of the experiment cards
    to `out` (default: docs/results.md); README's copy is updated only when it is the bundled
    checkpoints' table written to docs/results.md."""
    checkpoint_dirs = checkpoint_dirs or [BUNDLED]
    out = out or RESULTS
    if out is None:
        raise ValueError("no docs/results.md to write outside a checkout: give --out FILE")
    rows, lm_tables = [], []
    for root in checkpoint_dirs:
        root = Path(root)
        paths = [root] if (root / CARD_FILE).is_file() else sorted(p for p in root.iterdir() if (p / CARD_FILE).is_file())
        named = [(p.name, read_card(p)) for p in paths]
        rows += [_row(name, card) for name, card in named]
        lm_tables += _char_class_tables(named) + _layer_rate_tables(named)
    tried = _experiment_rows(Path(experiments)) if experiments and Path(experiments).is_dir() else []
    shown = Path(experiments).relative_to(CHECKOUT) if experiments and CHECKOUT and Path(experiments).is_relative_to(CHECKOUT) else experiments
    text = "\n".join([
        "# Results of the bundled checkpoints",
        "",
        "Generated by `ponderscope results` from each checkpoint's `card.json`; the numbers are",
        "those `ponderscope eval CHECKPOINT --device cpu` measured on the full test/held-out set.",
        "Ponder = sum over blocks of the mean ponder cost N+R (ResNets) or mean N+R per input step",
        "(RNNs); FLOPs = executed / dense, counted as in the SACT paper.",
        "",
        "| checkpoint | model | data | result | ponder | FLOPs vs dense | training | notes | command |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        *lm_tables,
        *([
            "## Tried and not bundled",
            "",
            f"Cards of runs kept for the record in `{shown}/` (each beside its training log), with",
            "the settings they vary; same columns, measured the same way. A card records the run's whole",
            "config, so `ponderscope train --config CARD.card.json --out DIR` re-runs it with the same",
            "settings, even where the config file its command names has changed since.",
            "",
            "| run | model | data | result | ponder | FLOPs vs dense | training | notes | settings | command |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *tried,
            "",
        ] if tried else []),
    ])
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text, encoding="utf-8")
    if [Path(d).resolve() for d in checkpoint_dirs] == [BUNDLED] and Path(out).resolve() == RESULTS:
        _update_readme(rows)
    return text


def _update_readme(rows: list[str]) -> None:
    """Copy the table between the README's results markers, so both always agree."""
    table = "\n".join(["| checkpoint | model | data | result | ponder | FLOPs vs dense | training | notes | command |", "|---|---|---|---|---|---|---|---|---|", *rows])
    replace_section("results", table)
