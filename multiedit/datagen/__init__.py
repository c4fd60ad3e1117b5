"""Datagen: Emu Edit's data engine (instructions → masks → pairs → filters → dataset).

Stage 1 (:mod:`.instructions`) writes task-tagged instructions with an LLM served by vLLM (or the
offline template writer). Imports stay lazy: ``import multiedit.datagen`` loads nothing heavy.
"""

_LAZY = {
    "InstructionConfig": ("multiedit.datagen.instructions", "InstructionConfig"),
    "InstructionSummary": ("multiedit.datagen.instructions", "InstructionSummary"),
    "generate_instructions": ("multiedit.datagen.instructions", "generate_instructions"),
    "load_instruction_records": ("multiedit.datagen.instructions", "load_instruction_records"),
    "load_failures": ("multiedit.datagen.instructions", "load_failures"),
    "read_captions": ("multiedit.datagen.captions", "read_captions"),
    "Caption": ("multiedit.datagen.captions", "Caption"),
    "ChatClient": ("multiedit.datagen.llm_client", "ChatClient"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'multiedit.datagen' has no attribute {name!r}")


__all__ = list(_LAZY)
