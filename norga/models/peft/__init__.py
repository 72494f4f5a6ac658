"""The one place where parameter-efficient modules attach to timm's ViT blocks.

The backbone is a timm ``VisionTransformer`` built with ``block_fn=PeftBlock`` (:func:`norga.models.vit.
build_frozen_backbone`): timm's block and attention, extended, with timm's parameter names. It stays frozen
and shared; the modules belong to the method, which says per forward pass what each block attaches, as a
*plan* ``{block index: BlockPeft}`` given to :func:`norga.models.vit.vit_features`. Four kinds, composable
in one block (:func:`compose`):

* **prefix** (``BlockPeft.prefix``, a :class:`~norga.models.attention.Prefix`): keys/values the block's queries
  also attend to, optionally with NoRGa's gate. Sources: ``PromptPool``, ``SharedPrefix``
  (:mod:`norga.models.prompts`), ``CodaPrompt`` (:mod:`norga.models.coda`).
* **prompt tokens** (``BlockPeft.tokens``, ``(B, n, dim)``): put in front of the sequence before the block,
  dropped before the head. Source: ``TokenPromptPool``.
* **LoRA** (``BlockPeft.lora``, target -> branches): ``scale * B A x`` added to ``attn.qkv`` (targets ``q``,
  ``k``, ``v``: one slice; ``qkv``), ``attn.proj``, ``mlp.fc1``, ``mlp.fc2``; mergeable into the frozen
  weight. :class:`LoRA`, :class:`LoRALayers`, :func:`merge_lora`; a method's own branch type only needs
  ``forward(x)`` and ``delta_weight()`` (:class:`LowRankBranch`).
* **adapter** (``BlockPeft.adapters``): AdaptFormer bottlenecks on the post-attention residual, added to the
  MLP's output. :class:`Adapter`, :class:`AdapterSet` (one per block), :class:`AdapterBank` (several sets,
  one chosen per pass).

Modules can also be bound to the backbone for every pass (:func:`bind`, :class:`ParallelAdapters`).

Example::

    vit = build_frozen_backbone(cfg.backbone)
    lora = LoRALayers(vit, layers=range(12), targets=("k", "v"), rank=10)
    bank = AdapterBank(vit.embed_dim, len(vit.blocks), bottleneck=16, dropout=0.1, scale=0.1)
    bank.add()
    pool = PromptPool([0, 1], num_tasks=10, length=5, num_heads=12, head_dim=64)
    plan = compose(lora.plan(), bank.plan(0), attachments(prefixes=pool.prefixes_for_ids(ids)))
    feats = vit_features(vit, x, peft=plan)
    lora.merge(vit)        # inference: the branches live in the weights, lora.plan() is empty
"""

from norga.models.peft.adapter import Adapter, AdapterBank, AdapterSet, ParallelAdapters
from norga.models.peft.block import Binding, PeftBlock, bind, peft_blocks
from norga.models.peft.lora import LoRA, LoRALayers, MergedLoRA, merge_lora
from norga.models.peft.plan import LORA_TARGETS, BlockPeft, LowRankBranch, attachments, compose

__all__ = [
    "LORA_TARGETS", "Adapter", "AdapterBank", "AdapterSet", "Binding", "BlockPeft", "LoRA", "LoRALayers",
    "LowRankBranch", "MergedLoRA", "ParallelAdapters", "PeftBlock", "attachments", "bind", "compose",
    "merge_lora", "peft_blocks",
]
