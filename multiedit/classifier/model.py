"""The task classifier: a Flan-T5 encoder, masked mean pooling and a linear head.

Emu Edit (Sheynin et al., CVPR 2024) fine-tunes Flan-T5-XL to map an edit
instruction to one of its tasks, so a user need not name the task. We keep the T5 *encoder* only:

* ``T5ForSequenceClassification`` runs the whole encoder-decoder, feeding the instruction to the
  decoder as well and classifying the decoder state at the last ``</s>``. For Flan-T5-XL the
  decoder (with its cross-attention) is ~1.6 B of the 2.85 B parameters and more than half of the
  compute, and it adds nothing a classifier needs: the encoder already reads the whole instruction
  bidirectionally.
* Mean pooling over the encoder's tokens is the sentence representation Sentence-T5 (Ni et al.,
  2021) found best for T5 encoders; T5 has no ``[CLS]`` token to pool instead.
* Saving only the encoder more than halves the folder on disk (~2.5 GB instead of ~5.7 GB in fp16 for XL).

The parameter names (``shared``, ``encoder.*``) are those of ``T5ForConditionalGeneration``, so
:meth:`TaskClassifierModel.from_pretrained` on a base checkpoint (``google/flan-t5-xl``) loads the
encoder and drops the decoder and LM head; only the head (``classifier.*``) starts from random.
The label set lives in the config (``id2label`` / ``label2id``) and travels with the weights.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel, T5Config
from transformers import initialization as init
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.t5.modeling_t5 import T5PreTrainedModel, T5Stack

from ..errors import MultiEditError, brief

# diffusers records a pipeline component defined outside its known libraries under its module path
# (``["multiedit.classifier.model", "TaskClassifierModel"]`` in model_index.json) and, to find how to
# save and load it, looks up its base classes *by name in this module*; so ``PreTrainedModel`` must
# be a name here, or ``MultiEditPipeline.from_pretrained`` cannot load the ``task_classifier``.
__all__ = ["PreTrainedModel", "TaskClassifierModel", "load_base", "load_classifier", "resolve_classifier_folders"]

#: The checkpoint Emu Edit fine-tunes (Sheynin et al., CVPR 2024).
DEFAULT_BASE = "google/flan-t5-xl"
#: Subfolders of a MultiEditPipeline folder that hold the classifier and its tokenizer.
PIPELINE_MODEL_SUBFOLDER = "task_classifier"
PIPELINE_TOKENIZER_SUBFOLDER = "classifier_tokenizer"


class TaskClassifierModel(T5PreTrainedModel):
    """T5 encoder + masked mean pooling + dropout + linear head over the task labels.

    Config (a ``T5Config``) keys used beyond T5's own:
        id2label / label2id: task names, fixed when the classifier is trained.
        classifier_dropout (float, default 0.0): dropout before the head.
        classifier_temperature (float, default 1.0): softmax temperature fitted on the validation
            split after training (Guo et al., 2017, "On Calibration of Modern Neural Networks", §4.2);
            :func:`multiedit.classifier.predict_tasks` divides the logits by it.
        classifier_max_length (int, default 128): tokens kept per instruction.
    """

    _tied_weights_keys = {"encoder.embed_tokens.weight": "shared.weight"}
    # A base T5ForConditionalGeneration checkpoint also holds the decoder and the LM head.
    _keys_to_ignore_on_load_unexpected = [r"^decoder\.", r"^lm_head\."]

    def __init__(self, config: T5Config):
        super().__init__(config)
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        encoder_config = copy.deepcopy(config)
        encoder_config.is_decoder = False
        encoder_config.use_cache = False
        encoder_config.is_encoder_decoder = False
        self.encoder = T5Stack(encoder_config)
        self.encoder.set_input_embeddings(self.shared)
        self.dropout = nn.Dropout(getattr(config, "classifier_dropout", 0.0) or 0.0)
        self.classifier = nn.Linear(config.d_model, config.num_labels)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        factor = self.config.initializer_factor
        if isinstance(module, TaskClassifierModel):
            init.normal_(module.shared.weight, mean=0.0, std=factor * 1.0)
        elif module is getattr(self, "classifier", None):
            # As T5's own heads: std d_model^-0.5 keeps the initial logits O(1).
            init.normal_(module.weight, mean=0.0, std=factor * self.config.d_model**-0.5)
            init.zeros_(module.bias)

    def get_input_embeddings(self):
        return self.shared

    def set_input_embeddings(self, new_embeddings):
        self.shared = new_embeddings
        self.encoder.set_input_embeddings(new_embeddings)

    @property
    def labels(self) -> list[str]:
        """Task names in label-id order."""
        return [self.config.id2label[i] for i in range(self.config.num_labels)]

    @property
    def temperature(self) -> float:
        return float(getattr(self.config, "classifier_temperature", 1.0) or 1.0)

    @property
    def max_length(self) -> int:
        return int(getattr(self.config, "classifier_max_length", 128) or 128)

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Mean of ``hidden`` (B, L, D) over the unmasked tokens -> (B, D)."""
        if attention_mask is None:
            return hidden.mean(dim=1)
        mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        """Classify tokenized instructions.

        Args:
            input_ids: (B, L) token ids from the classifier's T5 tokenizer.
            attention_mask: (B, L), 1 for tokens, 0 for padding.
            labels: optional (B,) label ids; if given, ``loss`` is the mean cross-entropy.

        Returns:
            ``SequenceClassifierOutput`` with ``logits`` (B, num_labels): raw, *not* divided by the
            calibration temperature.
        """
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        pooled = self.pool(hidden, attention_mask)
        logits = self.classifier(self.dropout(pooled.to(self.classifier.weight.dtype)))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.float(), labels.to(logits.device))
        return SequenceClassifierOutput(loss=loss, logits=logits)


def is_classifier_folder(path: str | Path) -> bool:
    """True if ``path/config.json`` is a saved :class:`TaskClassifierModel`."""
    import json

    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return "TaskClassifierModel" in (data.get("architectures") or [])


def resolve_classifier_folders(path: str | Path) -> tuple[Path, Path]:
    """Return ``(model_dir, tokenizer_dir)`` for a classifier folder or a MultiEditPipeline folder.

    A classifier folder holds the model and its tokenizer side by side (``save_pretrained`` of
    both); a pipeline folder holds them in ``task_classifier/`` and ``classifier_tokenizer/``.
    """
    path = Path(path)
    if not path.is_dir():
        raise MultiEditError(
            f"Classifier folder {path} does not exist; pass the --out folder of `multiedit classifier train` "
            "or a pipeline folder."
        )
    if is_classifier_folder(path):
        return path, path
    sub = path / PIPELINE_MODEL_SUBFOLDER
    if is_classifier_folder(sub):
        tok = path / PIPELINE_TOKENIZER_SUBFOLDER
        if not tok.is_dir():
            raise MultiEditError(
                f"Pipeline folder {path} has {PIPELINE_MODEL_SUBFOLDER}/ but no {PIPELINE_TOKENIZER_SUBFOLDER}/; "
                "save the pipeline with both components."
            )
        return sub, tok
    raise MultiEditError(
        f"{path} holds no task classifier (no TaskClassifierModel config.json there or in "
        f"{PIPELINE_MODEL_SUBFOLDER}/); train one with `multiedit classifier train`."
    )


def load_classifier(path: str | Path, device: str | torch.device | None = None):
    """Load ``(model, tokenizer)`` from a classifier folder or a MultiEditPipeline folder.

    The model is put in eval mode (and on ``device`` if given); the tokenizer is whatever
    ``AutoTokenizer`` finds (a ``T5Tokenizer`` for Flan-T5).
    """
    from transformers import AutoTokenizer

    model_dir, tok_dir = resolve_classifier_folders(path)
    try:
        model = TaskClassifierModel.from_pretrained(model_dir)
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    except (OSError, ValueError) as exc:
        raise MultiEditError(
            f"Could not load the task classifier from {model_dir} ({brief(exc)}); re-save or retrain it."
        ) from None
    if device is not None:
        model.to(device)
    return model.eval(), tokenizer


def load_base(base: str | Path, labels: list[str], max_length: int = 128, dropout: float = 0.0):
    """Build an untrained classifier from a base T5 checkpoint (folder or hub name) with ``labels``.

    The encoder and the shared embedding come from the checkpoint; the head is new. Returns
    ``(model, tokenizer)``. If ``base`` is already a trained classifier, use :func:`load_classifier`.
    """
    from transformers import AutoTokenizer

    _check_t5_config(base)
    id2label = dict(enumerate(labels))
    label2id = {name: i for i, name in id2label.items()}
    try:
        config = T5Config.from_pretrained(str(base))
        config.num_labels = len(labels)
        config.id2label, config.label2id = id2label, label2id
        # Our own keys are set on the config, not passed to from_pretrained (which would hand
        # unknown keyword arguments to __init__).
        config.classifier_dropout = dropout
        config.classifier_temperature = 1.0
        config.classifier_max_length = max_length
        model = TaskClassifierModel.from_pretrained(str(base), config=config)
        tokenizer = AutoTokenizer.from_pretrained(str(base))
    except (OSError, ValueError) as exc:
        raise MultiEditError(
            f"Could not load the base T5 checkpoint {str(base)!r} ({brief(exc)}); pass a local folder "
            "with config.json, weights and tokenizer, or a hub name reachable from this machine."
        ) from None
    return model, tokenizer


def _check_t5_config(base: str | Path) -> None:
    """A local base folder must hold a T5 config (a hub name is checked by ``from_pretrained``)."""
    import json

    from ..io_utils import looks_local

    cfg = Path(base) / "config.json"
    if not cfg.is_file():
        if Path(base).exists():
            raise MultiEditError(
                f"Base folder {base} has no config.json; pass a T5 checkpoint folder "
                f"(e.g. a download of {DEFAULT_BASE})."
            )
        if looks_local(base):
            raise MultiEditError(f"Base folder {base} does not exist; pass a T5 checkpoint folder or a hub name "
                                 f"such as {DEFAULT_BASE}.")
        return
    model_type = json.loads(cfg.read_text(encoding="utf-8")).get("model_type")
    if model_type != "t5":
        raise MultiEditError(
            f"Base checkpoint {base} is a {model_type!r} model; the task classifier needs a T5 checkpoint "
            f"(e.g. {DEFAULT_BASE})."
        )
