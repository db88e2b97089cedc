"""PandaGPT training (LoRA + projection on cached ImageBind features); see ``python -m training``.

Run from a checkout: ``python -m training {validate,precompute,train,export}``, or on several
processes with ``accelerate launch -m training ...``. The model code is ``langchain_pandagpt``'s.
"""
