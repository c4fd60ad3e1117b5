"""Default model ids of datagen stages 2-4 (light: the CLI reads them to build ``--help``).

Each maps a config field to ``(real checkpoint, zoo part)``: the real checkpoint is what a user
with a GPU gets; ``--zoo DIR`` swaps in the tiny random part written by ``multiedit zoo``.
"""

MODELS = {
    "sd_model": ("stable-diffusion-v1-5/stable-diffusion-v1-5", "sd"),
    "grounding_model": ("IDEA-Research/grounding-dino-tiny", "grounding-dino"),
    "sam_model": ("facebook/sam-vit-base", "sam"),
    "clip_model": ("openai/clip-vit-large-patch14", "clip"),
    "depth_model": ("depth-anything/Depth-Anything-V2-Small-hf", "depth"),
}
