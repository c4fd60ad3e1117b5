"""``multiedit eval``: the Emu Edit and MagicBrush instruction-editing metrics.

* :mod:`.metrics` — pure metric functions on tensors (CLIPdir, cosines, L1/L2, pixel conversion).
* :mod:`.backbones` — CLIP and DINO through transformers ``from_pretrained`` (identities recorded).
* :mod:`.datasets` — readers for the ``facebook/emu_edit_test_set``, ``osunlp/MagicBrush`` and our layouts.
* :mod:`.scoring` — per-sample scores with per-metric exclusion reasons, cached for resume.
* :mod:`.runner` — ``evaluate`` (the library function behind the CLI) and ``run_editor``.
* :mod:`.checks` — argument checks and one-line error reasons; :mod:`.provenance` — the settings behind predictions.
* :mod:`.report` — per-task tables (JSON + Markdown) and the example grid.

Import from the submodules (``from multiedit.evaluation.runner import evaluate``); this package
imports nothing heavy, so the CLI starts fast.
"""
