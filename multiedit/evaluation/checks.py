"""Input checks of ``multiedit eval``: each bad value fails at once with one sentence naming it and the fix."""

from __future__ import annotations

from ..errors import MultiEditError


def check_eval_args(batch_size: int, examples: int, limit: int | None) -> None:
    """The scoring options; the generation options are checked by ``editing.check_edit_settings``."""
    if batch_size < 1:
        raise MultiEditError(f"--batch-size must be at least 1 (images per CLIP/DINO batch), got {batch_size}.")
    if examples < 0:
        raise MultiEditError(f"--examples must be 0 (no grid) or more rows, got {examples}.")
    if limit is not None and limit < 1:
        raise MultiEditError(f"--limit must be at least 1, got {limit}.")


def _missing(samples: list, outputs) -> list:
    return [s for s in samples if outputs.path(s, "single_turn") is None]


def check_predictions_present(samples: list, outputs) -> None:
    """Before any model loads: a --predictions folder holding none of the samples' ``<id>.png`` is the wrong folder."""
    missing = _missing(samples, outputs)
    if samples and len(missing) == len(samples):
        raise MultiEditError(
            f"--predictions {outputs.root} holds none of the {len(samples)} predictions to score (the first missing "
            f"is {missing[0].id}.png); pass the folder with one <id>.png per sample (the ids of a --model run's "
            "predictions)."
        )


def require_scored(records: list[dict], samples: list, outputs) -> None:
    """Refuse a report in which no sample was scored at all: it would be all exclusions and a blank summary."""
    if not records or any(r["scores"] for r in records):
        return
    if outputs.kind == "predictions":  # files missing for another reason than a failed --model edit
        missing = [s for s in _missing(samples, outputs) if (s.id, "single_turn") not in outputs.failures]
        if missing:
            raise MultiEditError(
                f"No sample could be scored: {len(missing)} of {len(samples)} predictions are missing from "
                f"{outputs.root} (the first is {missing[0].id}.png) and no other sample could be scored either; pass "
                "the folder with one readable <id>.png per sample."
            )
    first = records[0]
    reason = next(iter(first["excluded"].values()), "no metric applies")
    reason = reason.removeprefix("output: ")
    raise MultiEditError(f"No sample could be scored (all {len(records)} excluded); sample {first['id']}: "
                         f"{reason[:1].lower()}{reason[1:]}")
