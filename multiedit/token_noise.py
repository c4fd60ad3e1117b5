"""Random token replacement in instructions: a training-time augmentation for wording robustness.

Each word token is replaced, with probability ``rate``, by a token drawn uniformly from the vocabulary
(BERT's random-replacement corruption, here without masking). A model trained on a handful of
phrasings may key on whole templates; the noise pushes it to read the informative words (the object,
the colour, "night"). Whether that helps depends on the data: on ShapesWorld, whose instructions are 3–6
words, it did not (the noise often hides the one word that matters; see the README). Special tokens
(start, end, padding, sentinels) are never replaced nor drawn.
"""

from __future__ import annotations

import torch


class TokenNoise:
    """``noise(ids, generator)`` → ``ids`` with each non-special token replaced with probability ``rate``."""

    def __init__(self, tokenizer, rate: float):
        if not 0 <= rate < 1:
            raise ValueError(f"token noise rate {rate} must be in [0, 1)")
        self.rate = rate
        special = set(tokenizer.all_special_ids)
        self.special_ids = torch.tensor(sorted(special))
        self.replacement_ids = torch.tensor([i for i in range(len(tokenizer)) if i not in special])

    def __bool__(self) -> bool:
        return self.rate > 0

    def __call__(self, ids: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if self.rate == 0:
            return ids
        hit = (torch.rand(ids.shape, generator=generator) < self.rate) & ~torch.isin(ids, self.special_ids)
        pick = torch.randint(len(self.replacement_ids), ids.shape, generator=generator)
        return torch.where(hit, self.replacement_ids[pick], ids)
