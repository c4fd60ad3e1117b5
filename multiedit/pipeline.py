"""``MultiEditPipeline``: InstructPix2Pix with a task embedding (Emu Edit, Sheynin et al. 2024).

Argument names follow diffusers' ``StableDiffusionInstructPix2PixPipeline`` (``prompt``, ``image``,
``guidance_scale``, ``image_guidance_scale``, ``generator``, ``output_type``) plus ``task``. With every
task vector at zero it computes exactly what the diffusers pipeline computes.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.image_processor import PipelineImageInput, VaeImageProcessor
from diffusers.pipelines.pipeline_utils import StableDiffusionMixin
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, CLIPTokenizer

from . import classifier as _classifier  # noqa: F401  (diffusers finds TaskClassifierModel's module in sys.modules)
from .errors import MultiEditError
from .position_code import append_position_code, check_position_channels
from .position_queries import PositionQueryUNet as _PositionQueryUNet  # also found in sys.modules by diffusers
from .task_unet import TaskTokenEmbedding, add_task_table, task_table, widen_conv_in

TaskSpec = str | int | None


@dataclass
class MultiEditPipelineOutput(BaseOutput):
    """``images``: PIL images or an array (B, H, W, 3) in [0, 1]; ``tasks``: the task used per image;
    ``task_predictions``: the classifier's predictions where it chose the task, else ``None``."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    tasks: list[str]
    task_predictions: list | None = None


class MultiEditPipeline(DiffusionPipeline, StableDiffusionMixin):
    r"""Task-conditioned instruction editing.

    Components:
        vae ([`AutoencoderKL`]): encodes the source image and decodes the edit.
        text_encoder ([`CLIPTextModel`]) and tokenizer ([`CLIPTokenizer`]): encode the instruction.
        unet ([`UNet2DConditionModel`]): 8 input channels (noisy latent ‖ source latent) and a task table
            in its class-embedding slot (``num_class_embeds`` = number of tasks).
        scheduler: any diffusers scheduler.
        task_tokens ([`TaskTokenEmbedding`], optional): the cross-attention task token.
        task_classifier / classifier_tokenizer (optional): predict the task when ``task=None``.

    Config:
        task_names (list[str]): the name of each row of the task table, in order.
        residual (bool): residual diffusion — the model denoises the latent *change*
            ``z_edit − z_src`` (both scaled by the VAE factor) and the edit is ``z_src + sample``. Off by
            default (IP2P diffuses ``z_edit``); small models trained from scratch gain most from it.
        position_channels (int): coordinate channels appended to the UNet input after the noisy and source
            latents (:mod:`multiedit.position_code`; 0, the default, appends none). The UNet then takes
            ``2 · latent_channels + position_channels`` input channels.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["task_tokens", "task_classifier", "classifier_tokenizer"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "image_latents"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        task_tokens: TaskTokenEmbedding | None = None,
        task_classifier: Any = None,
        classifier_tokenizer: Any = None,
        task_names: list[str] | None = None,
        residual: bool = False,
        position_channels: int = 0,
    ):
        super().__init__()
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            task_tokens=task_tokens,
            task_classifier=task_classifier,
            classifier_tokenizer=classifier_tokenizer,
        )
        rows = task_table(unet).num_embeddings
        task_names = list(task_names) if task_names is not None else [f"task_{i}" for i in range(rows)]
        if len(task_names) != rows:
            raise MultiEditError(
                f"The pipeline config names {len(task_names)} tasks but the UNet's task table has {rows} rows; "
                "the model folder is inconsistent."
            )
        if len(set(task_names)) != len(task_names):
            raise MultiEditError(f"Duplicate task names in the pipeline config: {task_names}.")
        position_channels = check_position_channels(position_channels)
        self.register_to_config(task_names=task_names, residual=bool(residual), position_channels=position_channels)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_base(cls, path: str | Path, tasks: list[str] | None = None, task_token: bool = False,
                  residual: bool = False, prediction_type: str | None = None, position_channels: int = 0,
                  position_queries: int = 0, **kwargs):
        """Turn a Stable Diffusion or InstructPix2Pix pipeline folder into a task-conditioned pipeline.

        A 4-channel SD UNet is widened to 8 input channels with the new weights at zero (Brooks §3.2);
        an 8-channel IP2P UNet is used as it is. The task table gets one zero row per task in
        ``tasks`` (default: every registered task). ``residual`` and ``prediction_type`` (``epsilon``,
        ``v_prediction`` or ``sample``, set on the scheduler) choose the parameterisation for training from here.
        ``position_channels`` appends that many coordinate channels (see :meth:`add_position_code`), also to a
        folder that already holds a MultiEditPipeline, which is otherwise loaded as it is; ``position_queries``
        likewise gives the cross-attention queries that many coordinate features (see :meth:`add_position_queries`).
        """
        from .model_folder import check_pipeline_folder, load_components

        path = Path(path) if Path(str(path)).exists() else path
        index = check_pipeline_folder(path)
        if index.get("_class_name") == cls.__name__:
            pipe = cls.from_pretrained(path, **kwargs)
            ignored = []
            if tasks and list(tasks) != pipe.task_names:
                ignored.append(f"tasks {list(tasks)} (it has {pipe.task_names})")
            if task_token and pipe.task_tokens is None:
                ignored.append("a task token (it has none)")
            if prediction_type is not None and prediction_type != pipe.scheduler.config.prediction_type:
                ignored.append(f"prediction_type {prediction_type!r} (it has {pipe.scheduler.config.prediction_type!r})")
            if ignored:
                raise MultiEditError(f"{path} is already a {cls.__name__}, so {'; '.join(ignored)} cannot be applied: "
                                     "those settings convert an SD/IP2P base. Drop them, or start from a base "
                                     "(a new task is taught with invert-task).")
            if position_channels:
                pipe.add_position_code(position_channels)
            if position_queries:
                pipe.add_position_queries(position_queries)
            return pipe
        from .tasks import get_task, list_tasks

        names = list(tasks) if tasks else list_tasks()
        for n in names:
            get_task(n)  # unknown names fail here, listing the valid ones
        parts = load_components(path, **kwargs)
        unet = parts["unet"]
        widen_conv_in(unet, in_channels=unet.config.out_channels * 2)
        add_task_table(unet, len(names))
        tokens = TaskTokenEmbedding(len(names), unet.config.cross_attention_dim) if task_token else None
        if prediction_type is not None:
            from .training.objective import PREDICTION_TYPES

            if prediction_type not in PREDICTION_TYPES:
                raise MultiEditError(f"prediction_type={prediction_type!r}; use one of {', '.join(PREDICTION_TYPES)}.")
            sched = parts["scheduler"]
            parts["scheduler"] = sched.__class__.from_config(sched.config, prediction_type=prediction_type)
        pipe = cls(**parts, task_tokens=tokens, task_names=names, residual=residual)
        if position_channels:
            pipe.add_position_code(position_channels)
        if position_queries:
            pipe.add_position_queries(position_queries)
        return pipe

    def add_position_code(self, channels: int) -> None:
        """Append ``channels`` coordinate channels (:mod:`multiedit.position_code`) to the UNet input.

        ``conv_in`` is widened with the new weights at zero, so the pipeline computes exactly what it did until
        training moves them; fine-tuning a trained model from here keeps everything it learned. Task vectors
        inverted before (``invert-task``) no longer load strictly: the backbone's fingerprint changed.
        """
        channels = check_position_channels(channels)
        if self.config.get("position_channels", 0):
            raise MultiEditError(f"This model already has {self.config.position_channels} position channels; keep "
                                 "them (drop --position-channels) or start from a model without them.")
        widen_conv_in(self.unet, in_channels=self.unet.config.in_channels + channels)
        self.register_to_config(position_channels=channels)

    def add_position_queries(self, channels: int) -> None:
        """Make the UNet a :class:`~multiedit.position_queries.PositionQueryUNet`: every cross-attention query also
        gets a learned map of ``channels`` coordinate features of its position, the maps at zero, so the pipeline
        computes exactly what it did until training moves them; once trained, task vectors inverted before no
        longer load strictly (the maps are part of the backbone's fingerprint)."""
        channels = check_position_channels(channels, "position_query_channels")
        if not channels:
            return
        if self.unet.config.get("position_query_channels", 0):
            raise MultiEditError(f"This model's UNet already has {self.unet.config.position_query_channels} position "
                                 "query channels; keep them (drop --position-queries) or start from a model without.")
        self.register_modules(unet=_PositionQueryUNet.from_unet(self.unet, channels))

    # ------------------------------------------------------------------ tasks
    @property
    def task_names(self) -> list[str]:
        return list(self.config.task_names)

    def task_id(self, task: str | int) -> int:
        """Row of ``task`` (a name or an id) in the task table."""
        names = self.task_names
        if isinstance(task, (int, np.integer)) and not isinstance(task, bool):
            if not 0 <= int(task) < len(names):
                raise MultiEditError(f"Task id {task} is out of range; this model has ids 0..{len(names) - 1}.")
            return int(task)
        if task not in names:
            raise MultiEditError(f"Unknown task {task!r}. This model knows: {names}.")
        return names.index(task)

    def _resolve_tasks(self, task, prompts: list[str], min_task_confidence: float | None):
        """Task id per prompt, and the classifier's predictions where it chose."""
        if task is None:
            if self.task_classifier is None or self.classifier_tokenizer is None:
                raise MultiEditError(
                    "No task given and this pipeline has no task classifier; pass `task=` "
                    f"(CLI: --task), one of {self.task_names}."
                )
            from .classifier import choose_task, predict_tasks

            preds = predict_tasks(self.task_classifier, self.classifier_tokenizer, prompts)
            names = [choose_task(p, min_task_confidence, self.task_names) for p in preds]
            return [self.task_id(n) for n in names], preds
        tasks = list(task) if isinstance(task, (list, tuple)) else [task] * len(prompts)
        if len(tasks) != len(prompts):
            raise MultiEditError(f"Got {len(tasks)} tasks for {len(prompts)} prompts; pass one task or one per prompt.")
        return [self.task_id(t) for t in tasks], None

    # ------------------------------------------------------------------ encoding
    def encode_prompt(self, prompts: list[str], device, num_images_per_prompt: int, do_cfg: bool, negative_prompt=None):
        """CLIP text embeddings, ordered [text, uncond, uncond] under guidance (IP2P's three branches)."""

        def embed(texts):
            ids = self.tokenizer(
                texts, padding="max_length", max_length=self.tokenizer.model_max_length,
                truncation=True, return_tensors="pt",
            ).input_ids
            return self.text_encoder(ids.to(device))[0]

        cond = embed(prompts).repeat_interleave(num_images_per_prompt, dim=0)
        if not do_cfg:
            return cond
        if negative_prompt is None:
            negative_prompt = [""] * len(prompts)
        elif isinstance(negative_prompt, str):
            negative_prompt = [negative_prompt] * len(prompts)
        uncond = embed(list(negative_prompt)).repeat_interleave(num_images_per_prompt, dim=0)
        return torch.cat([cond, uncond, uncond])

    def encode_image(self, image: torch.Tensor, num_images_per_prompt: int, do_cfg: bool) -> torch.Tensor:
        """Source latents (the VAE mode, unscaled, as IP2P trains), ordered [image, image, zeros] under guidance."""
        if image.shape[1] == self.vae.config.latent_channels:
            latents = image
        else:
            latents = self.vae.encode(image).latent_dist.mode()
        latents = latents.repeat_interleave(num_images_per_prompt, dim=0)
        if do_cfg:
            latents = torch.cat([latents, latents, torch.zeros_like(latents)])
        return latents

    def _step_kwargs(self, generator, eta):
        params = set(inspect.signature(self.scheduler.step).parameters)
        kw = {}
        if "eta" in params:
            kw["eta"] = eta
        if "generator" in params:
            kw["generator"] = generator
        return kw

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        image: PipelineImageInput,
        task: TaskSpec | list[TaskSpec] = None,
        num_inference_steps: int = 100,
        guidance_scale: float = 7.5,
        image_guidance_scale: float = 1.5,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        min_task_confidence: float | None = None,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        cross_attention_kwargs: dict[str, Any] | None = None,
    ):
        r"""Edit ``image`` following ``prompt`` as task ``task``.

        Args:
            prompt: the instruction(s).
            image: PIL image(s), an array in [0, 1] or a tensor in [-1, 1] of shape (B, 3, H, W); H and W are
                rounded down to multiples of the VAE factor (8).
            task: a task name or id, a list of them (one per prompt), or ``None`` to let the task classifier
                choose (requires the ``task_classifier`` component).
            guidance_scale / image_guidance_scale: text and image scales of two-scale classifier-free guidance
                (Brooks §3.2.1). Guidance is on when ``guidance_scale > 1`` and ``image_guidance_scale >= 1``.
            min_task_confidence: with ``task=None``, refuse to guess below this classifier probability.

        Returns:
            [`MultiEditPipelineOutput`] (or a tuple ``(images, tasks)`` when ``return_dict=False``).
        """
        # 0. Check inputs
        prompts = [prompt] if isinstance(prompt, str) else list(prompt or [])
        if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
            raise MultiEditError("The instruction (`prompt`) is empty; pass the edit to make, e.g. 'make it snow'.")
        if image is None:
            raise MultiEditError("No `image` given; pass the image to edit.")
        device = self._execution_device
        do_cfg = guidance_scale > 1.0 and image_guidance_scale >= 1.0
        branches = 3 if do_cfg else 1

        # 1. Tasks: names/ids → rows of the task table (or the classifier's choice)
        task_ids, predictions = self._resolve_tasks(task, prompts, min_task_confidence)
        ids = torch.tensor(task_ids, device=device).repeat_interleave(num_images_per_prompt).repeat(branches)

        # 2. Encode the instruction (+ the optional cross-attention task token)
        prompt_embeds = self.encode_prompt(prompts, device, num_images_per_prompt, do_cfg, negative_prompt)
        if self.task_tokens is not None:
            prompt_embeds = self.task_tokens.append_to(prompt_embeds, ids)

        # 3. Preprocess the source image
        image = self.image_processor.preprocess(image)
        if image.shape[0] != len(prompts):
            raise MultiEditError(f"Got {image.shape[0]} images for {len(prompts)} prompts; pass one image per prompt.")

        # 4. Timesteps
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps

        # 5. Source latents
        image_latents = self.encode_image(image.to(device=device, dtype=prompt_embeds.dtype), num_images_per_prompt, do_cfg)

        # 6. Initial noise
        h, w = image_latents.shape[-2:]
        shape = (len(prompts) * num_images_per_prompt, self.vae.config.latent_channels, h, w)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=prompt_embeds.dtype)
        latents = latents.to(device) * self.scheduler.init_noise_sigma
        position_channels = self.config.get("position_channels", 0)
        if self.unet.config.in_channels != shape[1] + image_latents.shape[1] + position_channels:
            fix = ("convert the model with `multiedit init`" if self.unet.config.in_channels < 2 * shape[1] else
                   "set `position_channels` in model_index.json to the UNet's extra input channels")
            raise MultiEditError(
                f"The UNet takes {self.unet.config.in_channels} input channels, but the latent, source latent and "
                f"position code have {shape[1]} + {image_latents.shape[1]} + {position_channels}; {fix}."
            )
        condition = append_position_code(image_latents, position_channels)  # the same every step
        step_kwargs = self._step_kwargs(generator, eta)

        # 7. Denoising loop: three branches [text+image, image only, neither] in one UNet call
        with self.progress_bar(total=len(timesteps)) as progress:
            for i, t in enumerate(timesteps):
                model_in = torch.cat([latents] * branches) if do_cfg else latents
                model_in = torch.cat([self.scheduler.scale_model_input(model_in, t), condition], dim=1)
                pred = self.unet(
                    model_in, t, encoder_hidden_states=prompt_embeds, class_labels=ids,
                    cross_attention_kwargs=cross_attention_kwargs, return_dict=False,
                )[0]
                if do_cfg:  # Brooks et al. eq. 3
                    pred_text, pred_image, pred_uncond = pred.chunk(3)
                    pred = (
                        pred_uncond
                        + guidance_scale * (pred_text - pred_image)
                        + image_guidance_scale * (pred_image - pred_uncond)
                    )
                latents = self.scheduler.step(pred, t, latents, **step_kwargs, return_dict=False)[0]
                if callback_on_step_end is not None:
                    local = {"latents": latents, "prompt_embeds": prompt_embeds, "image_latents": image_latents}
                    out = callback_on_step_end(self, i, t, {k: local[k] for k in callback_on_step_end_tensor_inputs})
                    latents = out.pop("latents", latents)
                progress.update()

        # 8. Residual diffusion: the sample is the change, added to the source latent
        if self.config.get("residual", False):
            latents = latents + image_latents[: latents.shape[0]] * self.vae.config.scaling_factor

        # 9. Decode
        if output_type == "latent":
            images = latents
        else:
            decoded = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]
            images = self.image_processor.postprocess(decoded, output_type=output_type)
        self.maybe_free_model_hooks()
        names = [self.task_names[i] for i in task_ids for _ in range(num_images_per_prompt)]
        if not return_dict:
            return images, names
        return MultiEditPipelineOutput(images=images, tasks=names, task_predictions=predictions)

    # ------------------------------------------------------------------ sequential editing
    def edit_sequence(self, prompts: list[str], image: PIL.Image.Image, task=None, alpha: float = 0.03, **kwargs):
        """Apply ``prompts`` in turn (multi-turn editing), each to the previous result.

        Emu Edit's sequential edit thresholding: after each turn, pixels whose low-pass-filtered L1
        change is below ``alpha`` keep their previous value, so errors do not accumulate. Returns the
        list of images after each turn. ``task`` is one task for all turns, a list (one per turn), or
        ``None`` (classifier).
        """
        from .sequential import sequential_threshold

        tasks = list(task) if isinstance(task, (list, tuple)) else [task] * len(prompts)
        if len(tasks) != len(prompts):
            raise MultiEditError(f"Got {len(tasks)} tasks for {len(prompts)} instructions; pass one or one per turn.")
        kwargs["output_type"] = "pil"
        current, results = image, []
        for p, t in zip(prompts, tasks):
            edited = self(prompt=p, image=current, task=t, **kwargs).images[0]
            prev = current.resize(edited.size, PIL.Image.BICUBIC) if current.size != edited.size else current
            current = sequential_threshold(prev, edited, alpha=alpha)
            results.append(current)
        return results

    def attach_classifier(self, classifier, tokenizer=None) -> None:
        """Hold a task classifier (a folder, or a model + tokenizer) as components, saved with the pipeline.

        Its labels must be tasks of this pipeline: a task learned by inversion is never predicted unless
        the classifier was retrained with it.
        """
        if tokenizer is None:
            classifier, tokenizer = _classifier.load_classifier(classifier)
        labels = [classifier.config.id2label[i] for i in range(len(classifier.config.id2label))]
        unknown = [t for t in labels if t not in self.task_names]
        if unknown:
            raise MultiEditError(
                f"The classifier predicts task(s) {unknown} that this pipeline does not have ({self.task_names}); "
                "retrain the classifier on this pipeline's tasks."
            )
        self.register_modules(task_classifier=classifier, classifier_tokenizer=tokenizer)

    # ------------------------------------------------------------------ learned tasks
    def load_task_embedding(self, path: str | Path) -> str:
        """Load a task learned by ``multiedit invert-task`` (a folder with ``task_embedding.safetensors``)."""
        from .inversion.task_file import load_task_embedding

        return load_task_embedding(self, path)

    def save_task_embedding(self, task: str, path: str | Path, **metadata) -> Path:
        """Save one task's vector(s) as a small standalone task file."""
        from .inversion.task_file import save_task_embedding

        return save_task_embedding(self, task, path, **metadata)

    def add_task(self, name: str, init: torch.Tensor | None = None, token_init: torch.Tensor | None = None) -> int:
        """Append a task row (zero or ``init``) to the task table (and the token table) and return its id."""
        from .task_unet import resize_task_table

        if name in self.task_names:
            raise MultiEditError(f"Task {name!r} already exists in this model; choose another --name.")
        n = len(self.task_names)
        resize_task_table(self.unet, n + 1, None if init is None else init.reshape(1, -1))
        if self.task_tokens is not None:
            self.task_tokens.resize(n + 1, None if token_init is None else token_init.reshape(1, -1))
        self.register_to_config(task_names=[*self.task_names, name])
        return n

