"""``multiedit edit``: edit an image with one or more instructions."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("edit", help="Edit an image with an instruction.", description="Edit an image with an instruction.")
    p.add_argument("--model", help="MultiEditPipeline folder (default: the embedded default model).")
    p.add_argument("--image", required=True, help="Input image (any mode or size; EXIF rotation is applied).")
    p.add_argument("--instruction", action="append", required=True,
                   help="Edit instruction; repeat for multi-turn editing, applied in turn.")
    p.add_argument("--task", action="append",
                   help="Task name (default: predicted by the model's task classifier); with several --instruction, "
                        "give it once for every turn or once per turn, in order.")
    p.add_argument("--task-embedding", action="append", default=[], metavar="DIR",
                   help="A learned task folder (from invert-task) to load; repeatable.")
    p.add_argument("--out", required=True, help="Output image path (.png, .jpg, .webp).")
    p.add_argument("--steps", type=int, default=20, help="Denoising steps (default 20).")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="Text guidance scale (default 7.5 as in IP2P; 1.5 with the embedded ShapesWorld model).")
    p.add_argument("--image-guidance-scale", type=float, default=None,
                   help="Image guidance scale (default 1.5 as in IP2P; 1.0 with the embedded ShapesWorld model).")
    p.add_argument("--seed", type=int, default=0, help="Random seed (default 0).")
    p.add_argument("--resolution", type=int, help="Resize so the shorter side is this many pixels before editing.")
    p.add_argument("--min-confidence", type=float,
                   help="With no --task: refuse to guess when the classifier's probability is below this.")
    p.add_argument("--alpha", type=float, default=0.03, help="Sequential-edit threshold for multi-turn edits.")
    p.add_argument("--side-by-side", action="store_true", help="Write input and output side by side.")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..editing import edit_image

    result = edit_image(
        image=args.image, instructions=args.instruction, out=args.out, model=args.model, task=args.task,
        task_embeddings=args.task_embedding, steps=args.steps, guidance_scale=args.guidance_scale,
        image_guidance_scale=args.image_guidance_scale, seed=args.seed, resolution=args.resolution,
        min_task_confidence=args.min_confidence, alpha=args.alpha, side_by_side=args.side_by_side,
    )
    for note in result.notes:
        print(f"note: {note}")
    print(f"wrote {result.output} (task: {', '.join(result.tasks)})")
    return 0
